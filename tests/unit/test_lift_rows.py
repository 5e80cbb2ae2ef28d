"""The lift table's rows: which protocol each row belongs to, and the ratios in them."""

from __future__ import annotations

import pytest

from tandemrec.eval.lift import lift_rows

pytestmark = pytest.mark.unit
TRIO = {"cloud-full": 0.2, "edge-only": 0.1, "collaborative": 0.15}


def _report(protocol: str, new_items: bool) -> dict:
    report: dict = {"protocol_name": protocol, "n_test_users": 7,
                    "rows": [{"mode": m, "ndcg@10": v} for m, v in TRIO.items()]}
    if new_items:
        report["new_items"] = {"rows": [
            {"mode": m, "ndcg@10_all": v, "ndcg@10_new_targets": v / 2, "n_new_target_users": 3}
            for m, v in TRIO.items()]}
    return report


def test_a_standard_run_with_merged_new_items_gives_both_protocols():
    rows = lift_rows(_report("standard", new_items=True))
    assert [(r["protocol"], r["users"]) for r in rows] == [
        ("standard", "all 7"), ("new items", "all"), ("new items", "new-item targets (3)")]
    assert rows[0]["lift"] == pytest.approx(0.5)  # 0.15 over 0.10
    assert rows[2]["of_cloud_full"] == pytest.approx(0.75)  # 0.075 of 0.1


def test_a_new_item_run_has_no_standard_row():
    rows = lift_rows(_report("new-items", new_items=True))
    assert [r["protocol"] for r in rows] == ["new items", "new items"]


def test_the_semantic_id_student_has_its_own_rows_beside_the_same_cloud_full():
    report = _report("standard", new_items=True)
    sid = {"sid-edge-only": 0.08, "sid-collaborative": 0.16}
    report["rows"] += [{"mode": m, "ndcg@10": v} for m, v in sid.items()]
    report["new_items"]["rows"] += [
        {"mode": m, "ndcg@10_all": v, "ndcg@10_new_targets": v, "n_new_target_users": 3}
        for m, v in sid.items()]
    rows = lift_rows(report, "sid")
    assert [r["protocol"] for r in rows] == ["standard", "new items", "new items"]
    assert (rows[0]["cloud-full"], rows[0]["edge-only"], rows[0]["collaborative"]) == (
        0.2, 0.08, 0.16)
    assert rows[0]["lift"] == pytest.approx(1.0)
    assert rows[0]["of_cloud_full"] == pytest.approx(0.8)
    assert rows[2]["cloud-full"] == 0.1 and rows[2]["collaborative"] == 0.16
    assert lift_rows(_report("standard", new_items=False), "sid") == []  # a table-only run
    with pytest.raises(ValueError, match="table or sid"):
        lift_rows(report, "big")
