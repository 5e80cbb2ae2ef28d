"""The README's result tables, generated from bench/results/quality-<dataset>.json files.

Usage: python scripts/lift_table.py [ml-100k ml-1m beauty] [--results DIR] [--readme | --check]

Without a flag it prints the lift table (one row per dataset, protocol and user group:
cloud-full, edge-only and collaborative NDCG@10, the lift of collaborative over edge-only and
its share of cloud-full, plus the bytes a device downloads against the cloud bundle's).

--readme rewrites the headline tables between README.md's results markers: one table per
dataset (cloud-full, edge-only, collaborative and student-int8 with sizes and latencies, the
lift of collaborative over edge-only), its bundle sizes and its new-item figures, or a plain
statement of what has not been run. --check exits 1 when README.md differs from that.
Datasets without a results file are skipped. Nothing in these tables is typed by hand.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import textwrap
from pathlib import Path
from typing import Any

from tandemrec.eval.lift import lift_rows

REPO = Path(__file__).resolve().parent.parent
START, END = "<!-- results-tables -->", "<!-- /results-tables -->"
DATASETS = ["ml-100k", "ml-1m", "beauty"]
TITLES = {"ml-100k": "MovieLens-100K", "ml-1m": "MovieLens-1M", "beauty": "Amazon Beauty, 5-core"}
HEADLINE = ("cloud-full", "edge-only", "collaborative", "student-int8")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("datasets", nargs="*", default=DATASETS)
    p.add_argument("--results", type=Path, default=REPO / "bench" / "results")
    p.add_argument("--readme", action="store_true", help="rewrite README.md's headline tables")
    p.add_argument("--check", action="store_true", help="exit 1 if README.md's tables are stale")
    a = p.parse_args()
    if not (a.readme or a.check):
        print("\n".join(table(a.datasets, a.results)))
        return
    readme = REPO / "README.md"
    text = readme.read_text()
    new = replace_block(text, headline_tables(a.datasets, a.results))
    if a.check:
        if new != text:
            sys.exit("README.md's result tables differ from bench/results: run "
                     "python scripts/lift_table.py --readme")
        return
    readme.write_text(new)


def replace_block(text: str, lines: list[str]) -> str:
    """`text` with the lines between the results markers replaced by `lines`."""
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    return head + START + "\n" + "\n".join(lines) + "\n" + END + tail


def readme_block(text: str) -> list[str]:
    """The lines now between the results markers of `text`."""
    return text.split(START, 1)[1].split(END, 1)[0].strip("\n").split("\n")


def _users(report: dict[str, Any]) -> int | None:
    if "n_test_users" in report:
        return int(report["n_test_users"])
    m = re.search(r"all (\d+) users", str(report.get("protocol", {}).get("users", "")))
    return int(m.group(1)) if m else None


def headline(name: str, report: dict[str, Any]) -> list[str]:
    """One dataset's headline table and the lines under it."""
    by = {r["mode"]: r for r in report["rows"]}
    users = _users(report)
    title = TITLES.get(name, name) + (f" ({users:,} test users)" if users else "")
    out = [f"### {title}", "",
           "| mode | NDCG@10 | HR@10 | over edge-only | size (bytes) | p50 (ms) |",
           "| --- | ---: | ---: | ---: | ---: | ---: |"]
    edge = by["edge-only"]["ndcg@10"]
    for mode in HEADLINE:
        r = by[mode]
        over = f"{r['ndcg@10'] / edge - 1:+.1%}" if mode == "collaborative" and edge > 0 else ""
        out.append(f"| {mode} | {r['ndcg@10']:.4f} | {r['hr@10']:.4f} | {over} | "
                   f"{r['size_bytes']:,} | {r['p50_ms']:.3f} |")
    out.append("")
    notes = []
    full = by["cloud-full"]["ndcg@10"]
    if full > 0:
        notes.append(f"Collaborative: {by['collaborative']['ndcg@10'] / full:.1%} of cloud-full.")
    if "device_bundle_bytes" in report:
        dev, cloud = report["device_bundle_bytes"], report["cloud_bundle_bytes"]
        notes.append(f"Device download {dev:,} bytes; cloud bundle (never leaves the cloud) "
                     f"{cloud:,}, 1/{cloud / dev:.0f}.")
    if "fusion" not in report:
        notes.append("This run was made before the current fusion (its collaborative row "
                     "ranks the cloud's candidates only) and has not been re-run since.")
    new = report.get("new_items")
    if not new:
        notes.append("The new-item protocol has not been run on this dataset yet.")
    machine = report.get("machine", {})
    if machine:
        notes.append(f"{machine.get('cpu')}, {machine.get('cores')} cores.")
    out += textwrap.wrap(" ".join(notes), 100, break_long_words=False, break_on_hyphens=False)
    if new:
        out += ["", f"New-item protocol ({new['share']:.0%} of the items, {new['n_new_items']:,}, "
                "new to the device, known to the cloud), NDCG@10:", "",
                "| users | cloud-full | edge-only | collaborative | over edge-only |",
                "| --- | ---: | ---: | ---: | ---: |"]
        for r in lift_rows(report):
            if r["protocol"] != "new items":
                continue
            lift = "n/a" if r["lift"] is None else f"{r['lift']:+.1%}"
            out.append(f"| {r['users']} | {r['cloud-full']:.4f} | {r['edge-only']:.4f} | "
                       f"{r['collaborative']:.4f} | {lift} |")
    return out


def headline_tables(datasets: list[str], results: Path) -> list[str]:
    """Every dataset's headline block, in order, separated by blank lines."""
    out: list[str] = []
    for name in datasets:
        path = results / f"quality-{name}.json"
        if not path.exists():
            continue
        if out:
            out.append("")
        out += headline(name, json.loads(path.read_text()))
    return out


def table(datasets: list[str], results: Path) -> list[str]:
    """The lift table's markdown lines, then one line of bundle sizes."""
    out = ["| dataset | protocol | users | cloud-full | edge-only | collaborative | lift over "
           "edge-only | of cloud-full |", "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    sizes = []
    for name in datasets:
        path = results / f"quality-{name}.json"
        if not path.exists():
            continue
        report = json.loads(path.read_text())
        for r in lift_rows(report):
            lift = "n/a" if r["lift"] is None else f"{r['lift']:+.1%}"
            share = "n/a" if r["of_cloud_full"] is None else f"{r['of_cloud_full']:.1%}"
            out.append(f"| {name} | {r['protocol']} | {r['users']} | {r['cloud-full']:.4f} | "
                       f"{r['edge-only']:.4f} | {r['collaborative']:.4f} | {lift} | {share} |")
        if "device_bundle_bytes" in report:
            sizes.append(f"{name}: device bundle {report['device_bundle_bytes']:,} bytes, cloud "
                         f"bundle {report['cloud_bundle_bytes']:,} bytes "
                         f"(1/{report['cloud_bundle_bytes'] / report['device_bundle_bytes']:.0f})")
    if sizes:
        out += ["", "What a device downloads against what stays in the cloud: " +
                "; ".join(sizes) + "."]
    return out


if __name__ == "__main__":
    main()
