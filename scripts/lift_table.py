"""Print the README's lift table from bench/results/quality-<dataset>.json files.

Usage: python scripts/lift_table.py [ml-100k ml-1m beauty] [--results DIR] [--readme]

--readme rewrites the table between README.md's lift-table markers instead of printing it.

One row per dataset, protocol and user group: cloud-full, edge-only and collaborative NDCG@10,
the lift of collaborative over edge-only and its share of cloud-full, plus the bytes a device
downloads against the cloud bundle's. Datasets without a results file are skipped.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from tandemrec.eval.lift import lift_rows

REPO = Path(__file__).resolve().parent.parent
START, END = "<!-- lift-table -->", "<!-- /lift-table -->"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("datasets", nargs="*", default=["ml-100k", "ml-1m", "beauty"])
    p.add_argument("--results", type=Path, default=REPO / "bench" / "results")
    p.add_argument("--readme", action="store_true", help="rewrite README.md's table")
    a = p.parse_args()
    lines = table(a.datasets, a.results)
    if not a.readme:
        print("\n".join(lines))
        return
    readme = REPO / "README.md"
    text = readme.read_text()
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    readme.write_text(head + START + "\n" + "\n".join(lines) + "\n" + END + tail)


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
