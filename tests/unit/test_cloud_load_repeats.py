"""bench/cloud_load.py --repeats: a cell's row is the median of its runs, with their spread."""

from __future__ import annotations

import importlib

import pytest

from tandemrec.paths import REPO_ROOT


@pytest.fixture
def cloud_load(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO_ROOT / "bench"))  # it imports its sibling load_clients
    return importlib.import_module("cloud_load")


def run(rps: float, p99: float, refused: int = 0, cpu: float | None = 1.0) -> dict:
    return {"rps": rps, "p50_ms": 10.0, "p99_ms": p99, "refused": refused, "errors": 0,
            "requests": int(rps * 5), "server_cpu_ms_per_req": cpu, "client_cpu_ms_per_req": 0.2}


def test_one_run_is_its_own_row(cloud_load):
    assert cloud_load.median_cell([run(100, 30)]) == run(100, 30)


def test_three_runs_give_medians_totals_and_the_spread(cloud_load):
    # One run with a stall: its p99 (170 ms) is the spread, not the row.
    row = cloud_load.median_cell([run(100, 30, refused=2), run(90, 170, cpu=None),
                                  run(120, 35, refused=1)])
    assert row["rps"] == 100 and row["p99_ms"] == 35 and row["p50_ms"] == 10
    assert row["refused"] == 3 and row["requests"] == 500 + 450 + 600
    assert row["server_cpu_ms_per_req"] == 1.0  # a run without the figure is left out
    assert row["rps_runs"] == [100, 90, 120] and row["p99_runs"] == [30, 170, 35]


def test_the_table_says_how_many_runs_each_cell_is(cloud_load):
    report = {"bundle_dataset": "ml-1m", "bundle_version": "v", "seconds": 5, "repeats": 3,
              "machine": {"cpu": "x", "cores": 2}, "client_processes": 2, "on_refusal": "p",
              "http_client": "http", "server_torch_threads": 0, "rows": []}
    assert "5 s per cell, the median of 3 runs, clients in 2" in cloud_load.markdown(report)
