"""Device placement (issue 23): the config's `device`, and on a CPU the same curves as before it."""

from __future__ import annotations

import platform
from pathlib import Path

import numpy as np
import pytest
import torch

from tandemrec.data import item_popularity, leave_one_out, load_dataset, write_synthetic_csv
from tandemrec.paths import CONFIGS_DIR
from tandemrec.pipeline import intent_vocab
from tandemrec.train.compress import compress_student
from tandemrec.train.config import load_config
from tandemrec.train.device import Runtime, built_ahead, resolve
from tandemrec.train.distill import distill_student
from tandemrec.train.teacher import train_teacher

pytestmark = pytest.mark.core

# Recorded with the code before device placement (adf7df0) on the smoke config below, one thread,
# on an EPYC with AVX-512: one without it (Zen 3) runs other kernels and differs in the last bit.
RECORDED_ON = ("AMD EPYC", True, "2.13.0+cpu", "x86_64")
TEACHER_STEPS = ["0x1.5bd5600000000p+2", "0x1.56fb020000000p+2", "0x1.518fc40000000p+2",
                 "0x1.52c3e00000000p+2", "0x1.49b62e0000000p+2", "0x1.36c3460000000p+2",
                 "0x1.33703c0000000p+2", "0x1.27c6aa0000000p+2", "0x1.2067e60000000p+2",
                 "0x1.1051800000000p+2"]
DISTILL_STEPS = ["0x1.839db80000000p+4", "0x1.832e8a0000000p+4", "0x1.81bfe40000000p+4",
                 "0x1.8293180000000p+4", "0x1.8227d00000000p+4", "0x1.83a2820000000p+4",
                 "0x1.833c400000000p+4", "0x1.81b2380000000p+4", "0x1.7feee40000000p+4",
                 "0x1.81272a0000000p+4"]
COMPRESS_EPOCH_LOSS = "0x1.46206f3333333p+3"
VAL_NDCG = ["0x1.ce895b7a88cbcp-2", "0x1.970c96aee0deap-2", "0x1.209b68c2e9b66p-2"]


def _cpu() -> tuple[str, bool]:
    """The CPU's model name and whether it has AVX-512 (which picks torch's kernels)."""
    info = Path("/proc/cpuinfo")
    lines = info.read_text().splitlines() if info.exists() else []
    model = next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")),
                 platform.processor())
    flags = next((ln.split(":", 1)[1].split() for ln in lines if ln.startswith("flags")), [])
    return model, "avx512f" in flags


def _same(got: list[float], recorded: list[str]) -> None:
    """Bit for bit on the recording machine's CPU and torch; elsewhere other kernels round
    differently (the code before the change would differ the same way)."""
    want = [float.fromhex(v) for v in recorded]
    if (*_cpu(), torch.__version__, platform.machine()) == RECORDED_ON:
        assert got == want
    else:
        np.testing.assert_allclose(got, want, rtol=1e-4)


def test_device_is_a_typed_config_key():
    assert load_config(None, ["device=cpu"]).device == "cpu"
    assert load_config(None).device == "auto"
    with pytest.raises(ValueError, match="device"):
        load_config(None, ["device=gpu"])
    assert resolve("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        assert resolve("auto") == torch.device("cpu")
        with pytest.raises(ValueError, match="no CUDA device"):
            resolve("cuda")


def test_rows_split_a_global_batch_between_processes():
    shares = [Runtime(rank=r, world=3).rows(10) for r in range(3)]
    assert [(s.start, s.stop, s.total) for s in shares] == [(0, 3, 10), (3, 6, 10), (6, 10, 10)]
    assert Runtime().rows(10) == Runtime().rows(10)
    assert (Runtime().rows(10).start, Runtime().rows(10).stop) == (0, 10)


def test_batches_built_ahead_keep_their_order_and_errors():
    def batches(n: int, fail_at: int = -1):
        for i in range(n):
            if i == fail_at:
                raise RuntimeError("bad batch")
            yield torch.full((2,), i), i
    assert [int(b[0][0]) for b in built_ahead(batches(20), 3)] == list(range(20))
    with pytest.raises(RuntimeError, match="bad batch"):
        list(built_ahead(batches(10, fail_at=5), 3))
    ahead = built_ahead(batches(1000), 2)
    assert next(ahead)[1] == 0
    ahead.close()  # a loop left early: the thread stops instead of building the rest


def test_cpu_curves_are_those_before_device_placement(tmp_path):
    write_synthetic_csv(tmp_path / "shop.csv", n_users=300, n_items=120, min_len=8, max_len=30,
                        seed=3)
    cfg = load_config(CONFIGS_DIR / "smoke.yaml", [
        "teacher.max_epochs=1", "student.max_epochs=1", "compress.finetune_epochs=1",
        "compress.align_steps=3", "threads=1", "device=cpu"])
    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        ds = load_dataset(str(tmp_path / "shop.csv"))
        split = leave_one_out(ds, cfg.val_users, cfg.seed, cfg.tune_share)
        teacher, fit = train_teacher(split, ds.n_items, None, cfg.teacher, cfg.seed, Runtime())
        with torch.no_grad():
            vecs = teacher.item_vectors().numpy()
        vocab = intent_vocab(vecs, None, item_popularity(split.train, ds.n_items), cfg.intents,
                             cfg.seed)
        student, dfit = distill_student(teacher, split, ds.n_items, vocab, cfg.student, cfg.seed,
                                        rt=Runtime())
        _, report = compress_student(student, split, vocab, cfg.compress, cfg.seed, Runtime())
    finally:
        torch.set_num_threads(threads)
    _same(fit.step_losses, TEACHER_STEPS)
    _same(dfit.step_losses, DISTILL_STEPS)
    _same([report["finetune"][0]["loss"]], [COMPRESS_EPOCH_LOSS])
    _same([fit.best_score, dfit.best_score, report["val_ndcg@10_final"]], VAL_NDCG)
    assert next(teacher.parameters()).device.type == "cpu"  # models come back on the CPU
