"""bench/teacher_runtime.py: its worker times every batch size, its parity and table are right."""

from __future__ import annotations

import importlib

import pytest
import torch

from tandemrec.models.teacher import Teacher, TeacherConfig
from tandemrec.models.teacher_ensemble import TeacherEnsemble
from tandemrec.paths import REPO_ROOT

pytestmark = pytest.mark.core


@pytest.fixture
def bench(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO_ROOT / "bench"))
    return importlib.import_module("teacher_runtime")


def tiny() -> TeacherEnsemble:
    torch.manual_seed(0)
    return TeacherEnsemble([Teacher(TeacherConfig(n_items=30, text_dim=8, d_model=16,
                                                  mlp_hidden=32, max_len=12, n_intents=5))]).eval()


def test_worker_and_parity_cover_every_batch_size(bench):
    teacher = tiny()
    for runtime in bench.RUNTIMES:
        got = bench.worker(teacher, runtime, threads=1, history=6, calls=2)
        assert set(got) == {str(b) for b in bench.BATCHES} and min(got.values()) > 0
    par = bench.parity(teacher, history=6)
    assert all(p["max_abs_diff"] < 1e-4 and p["same_top10_share"] == 1.0 for p in par.values())


def test_table_gives_torch_over_onnx_per_cell(bench):
    rows = [{"runtime": rt, "threads": th, "batch": b, "ms": ms}
            for th in (1, 2) for b in bench.BATCHES
            for rt, ms in (("torch", 4.0), ("onnx", 2.0), ("onnx-spinning", 1.5))]
    report = {"teacher": "t", "history": 6, "calls": 2, "rounds": 1, "rows": rows,
              "machine": {"cpu": "cpu", "cores": 2},
              "parity": {str(b): {"max_abs_diff": 1e-6, "same_top10_share": 1.0}
                         for b in bench.BATCHES}}
    table = bench.markdown(report)
    assert table.count("| 4.00 | 2.00 | 2.00x | 1.50 | 1.0e-06 | 100% |") == 2 * len(bench.BATCHES)
