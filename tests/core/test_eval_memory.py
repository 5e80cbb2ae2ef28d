"""Evaluation in bounded memory: bench/eval_memory.py's measurement end to end at a tiny size,
and the Evaluator's score matrices bounded by modes.CHUNK rather than users x catalog."""

from __future__ import annotations

import importlib.util
import tracemalloc
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from tandemrec.eval import modes
from tandemrec.eval.report import load_models
from tandemrec.paths import REPO_ROOT
from tandemrec.pipeline import open_run
from tandemrec.train.config import load_config

pytestmark = pytest.mark.core

USERS, ITEMS = 300, 500


def _bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("eval_memory",
                                                  REPO_ROOT / "bench" / "eval_memory.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


bench = _bench()
# The benchmark's tiny config, without the sentence encoder and with fewer validation users.
FAST = [*bench.TINY, "teacher.use_text=false", "val_users=100", "eval.latency_requests=5"]


@pytest.fixture(scope="module")
def measured(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    """One row of the benchmark (generate, train, `tandem evaluate` in a child), run kept."""
    work = tmp_path_factory.mktemp("eval-memory")
    return bench.measure(USERS, ITEMS, work, overrides=FAST, keep=True), work


def test_benchmark_row(measured: tuple[dict, Path]) -> None:
    row, work = measured
    assert {"users", "items", "peak_rss_bytes", "seconds", "interactions", "catalog",
            "chunk"} <= set(row)
    assert (row["users"], row["items"], row["chunk"]) == (USERS, ITEMS, modes.CHUNK)
    assert row["peak_rss_bytes"] > 0 and row["seconds"] > 0
    assert 0 < row["catalog"] <= ITEMS and row["interactions"] >= 5 * USERS
    # The evaluation wrote its results where the benchmark told it to, not into bench/results.
    assert list((work / f"users-{USERS}-items-{ITEMS}" / "results").glob("quality-*.json"))


def test_measure_cleans_its_work_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bench, "train", lambda *a: 0.0)
    monkeypatch.setattr(bench, "measure_evaluation", lambda *a: {"peak_rss_bytes": 1,
                                                                 "seconds": 1.0})
    row = bench.measure(20, 30, tmp_path, overrides=FAST)
    assert row["users"] == 20 and row["peak_rss_bytes"] == 1
    assert not any(tmp_path.iterdir())


def test_evaluator_never_holds_users_x_catalog(measured: tuple[dict, Path],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Every score matrix has at most CHUNK rows, and 16x the users does not add a users x
    catalog matrix to the traced peak (numpy allocations; torch's own are not traced)."""
    _, work = measured
    run = work / f"users-{USERS}-items-{ITEMS}"
    csv = run / f"synthetic-{USERS}.csv"
    ctx = open_run(load_config(bench.SMOKE, [f"dataset={csv}", *FAST]), run / "run")
    models = load_models(ctx)
    chunk = 8
    monkeypatch.setattr(modes, "CHUNK", chunk)
    rows_seen: list[int] = []
    real_ranks, real_device = modes.target_ranks, modes.Evaluator.device_chunk

    def ranks_spy(scores: np.ndarray, *args: object, **kwargs: object) -> np.ndarray:
        rows_seen.append(scores.shape[0])
        return real_ranks(scores, *args, **kwargs)

    def device_spy(self: modes.Evaluator, key: str, sl: slice) -> tuple[np.ndarray, np.ndarray]:
        logits, scores = real_device(self, key, sl)
        rows_seen.append(scores.shape[0])
        return logits, scores

    monkeypatch.setattr(modes, "target_ranks", ranks_spy)
    monkeypatch.setattr(modes.Evaluator, "device_chunk", device_spy)
    inputs, targets = ctx.split.test_input, ctx.split.test_target

    def evaluator(n: int) -> modes.Evaluator:
        reps = -(-n // len(inputs))
        return modes.Evaluator(models, (inputs * reps)[:n], np.resize(targets, n),
                               ctx.cfg.eval, ctx.cfg.seed)

    ev = evaluator(3 * chunk + 5)  # every mode, the collaborative one included
    ev.popularity()
    ev.teacher(coarse=False)
    ev.student_onnx("student-int8", "student_int8", 0)
    ev.collaborative(modes.fusion_grid(ctx.cfg.eval, False)[0])
    assert rows_seen and max(rows_seen) == chunk

    def traced_peak(n: int) -> int:
        ev = evaluator(n)
        tracemalloc.start()
        try:
            ev.popularity()
            ev.teacher(coarse=False)
            ev.student_onnx("student-int8", "student_int8", 0)
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    small, large = 4 * chunk, 64 * chunk
    traced_peak(small)  # warm-up: first-call allocations are not the users'
    grew = traced_peak(large) - traced_peak(small)
    full_matrix_growth = (large - small) * (models.n_items + 1) * 4  # float32 users x catalog
    assert grew < full_matrix_growth / 4, (grew, full_matrix_growth)
