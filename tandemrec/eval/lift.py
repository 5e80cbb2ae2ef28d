"""The product's measure: collaborative serving beside edge-only and cloud-full, as a lift.

Every collaborative figure is reported with the device alone and the cloud with the whole
history on the same users; this module derives those comparisons from a run's rows and the
new-item protocol's per-user ranks, and renders them as the tables the README and demo show.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from tandemrec.eval.metrics import metrics_from_ranks

TRIO = ("cloud-full", "edge-only", "collaborative")


def trio(student: str = "table") -> tuple[str, str, str]:
    """The modes a student's lift compares: cloud-full, its edge-only, its collaborative."""
    if student not in ("table", "sid"):
        raise ValueError(f"student is table or sid, got {student!r}")
    return TRIO if student == "table" else ("cloud-full", "sid-edge-only", "sid-collaborative")


def lift(collab: float, edge: float) -> float | None:
    """Relative gain of collaborative over edge-only NDCG@10 (None when edge-only is 0)."""
    return collab / edge - 1.0 if edge > 0 else None


def add_lift(rows: list[dict]) -> None:
    """Give the collaborative row its lift over edge-only and its share of cloud-full."""
    by = {r["mode"]: r for r in rows}
    if not all(m in by for m in TRIO):
        return
    c = by["collaborative"]
    c["lift_over_edge_only"] = lift(c["ndcg@10"], by["edge-only"]["ndcg@10"])
    full = by["cloud-full"]["ndcg@10"]
    c["of_cloud_full"] = c["ndcg@10"] / full if full > 0 else None


def new_items_section(ranks: dict[str, np.ndarray], new_target: np.ndarray, share: float,
                      selection: str, n_new_items: int) -> dict[str, Any]:
    """Every mode's NDCG@10 on all test users and on those whose target is a new item."""
    rows = []
    for mode, r in ranks.items():
        sub = r[new_target]
        rows.append({"mode": mode, "ndcg@10_all": metrics_from_ranks(r, (10,))["ndcg@10"],
                     "hr@10_all": metrics_from_ranks(r, (10,))["hr@10"],
                     "ndcg@10_new_targets": (metrics_from_ranks(sub, (10,))["ndcg@10"]
                                             if len(sub) else None),
                     "hr@10_new_targets": (metrics_from_ranks(sub, (10,))["hr@10"]
                                           if len(sub) else None),
                     "n_new_target_users": int(new_target.sum())})
    return {"share": share, "selection": selection, "n_new_items": n_new_items, "rows": rows}


def lift_rows(report: dict, student: str = "table") -> list[dict]:
    """(protocol, users, cloud-full, edge-only, collaborative, lift, of cloud-full) rows, for
    the table student's modes or (`student="sid"`) the semantic-id student's."""
    modes = trio(student)
    out = []
    by = {r["mode"]: r["ndcg@10"] for r in report.get("rows", [])}
    # A new-item run's own rows are its "all users" row below, not the standard protocol's.
    if all(m in by for m in modes) and report.get("protocol_name") != "new-items":
        out.append(_trio_row("standard", f"all {report.get('n_test_users', '')}".strip(),
                             [by[m] for m in modes]))
    new = report.get("new_items")
    if new:
        nb = {r["mode"]: r for r in new["rows"]}
        if all(m in nb for m in modes):
            n_users = nb[modes[2]]["n_new_target_users"]
            out.append(_trio_row("new items", "all", [nb[m]["ndcg@10_all"] for m in modes]))
            if n_users:
                out.append(_trio_row("new items", f"new-item targets ({n_users})",
                                     [nb[m]["ndcg@10_new_targets"] for m in modes]))
    return out


def _trio_row(protocol: str, users: str, ndcg: list[float]) -> dict:
    full, edge, collab = ndcg
    return {"protocol": protocol, "users": users, "cloud-full": full, "edge-only": edge,
            "collaborative": collab, "lift": lift(collab, edge),
            "of_cloud_full": collab / full if full else None}


def lift_markdown(report: dict) -> list[str]:
    """The lift table as markdown lines (empty when the report lacks the three modes)."""
    rows = lift_rows(report)
    if not rows:
        return []
    lines = ["| protocol | users | cloud-full | edge-only | collaborative | lift over edge-only "
             "| of cloud-full |", "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        lines.append(f"| {r['protocol']} | {r['users']} | {r['cloud-full']:.4f} | "
                     f"{r['edge-only']:.4f} | {r['collaborative']:.4f} | {_pct(r['lift'])} | "
                     f"{_pct(r['of_cloud_full'], signed=False)} |")
    return lines


def _pct(x: float | None, signed: bool = True) -> str:
    if x is None:
        return "n/a"
    return f"{x:+.1%}" if signed else f"{x:.1%}"


def merge_new_items(standard_json: Path, section: dict) -> bool:
    """Write the new-item protocol's section into the standard run's results file, if any."""
    if not standard_json.exists():
        return False
    report = json.loads(standard_json.read_text())
    report["new_items"] = section
    standard_json.write_text(json.dumps(report, indent=2, default=str))
    return True
