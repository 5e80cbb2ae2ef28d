"""DDP under torchrun (issue 23): 2 CPU processes with gloo train as one process does.

The worker (tests/core/ddp_worker.py) runs the teacher stage (full and coarse mode) and the
distillation stage of the smoke config for one epoch each, once in one process and once in two
under `torch.distributed.run --standalone` (a free port), with the same global batch. Dropout
is off: its masks are random draws no split of a batch reproduces. A random half of the
positions is scored and long histories draw earlier windows, so the shared draws are checked
too; 289 users make the last batch of 32 a single row, so one process's share is empty.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tandemrec.checkpoints import load_student, load_teacher
from tandemrec.data import write_synthetic_csv
from tandemrec.train.ddp import EXIT_BARRIER_S

pytestmark = pytest.mark.core

WORKER = Path(__file__).with_name("ddp_worker.py")
SETS = ["threads=1", "device=cpu", "teacher.max_epochs=1", "teacher.coarse_epochs=1",
        "student.max_epochs=1", "teacher.dropout=0", "student.dropout=0",
        "teacher.loss_positions=0.5", "student.loss_positions=0.5", "teacher.recent_window=0.5",
        "teacher.use_text=false"]


def test_two_gloo_processes_match_one_process_step_by_step(tmp_path):
    data = tmp_path / "shop.csv"
    write_synthetic_csv(data, n_users=289, n_items=120, min_len=8, max_len=30, seed=3)
    env = {**os.environ, "TANDEM_CACHE_DIR": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}

    def worker(name: str) -> list[str]:
        return [str(WORKER), str(data), str(tmp_path / name), str(tmp_path / f"{name}.json"),
                *SETS]

    one = subprocess.Popen([sys.executable, *worker("one")], env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True)
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                          "--nproc_per_node", "2", *worker("two")], env=env, capture_output=True,
                         text=True, timeout=300)
    out, _ = one.communicate(timeout=300)
    assert one.returncode == 0, out[-3000:]
    assert two.returncode == 0, (two.stdout + two.stderr)[-3000:]
    single = json.loads((tmp_path / "one.json").read_text())
    ddp = json.loads((tmp_path / "two.json").read_text())
    assert (single["world"], ddp["world"]) == (1, 2)
    for stage in ("teacher", "teacher-coarse", "distill"):
        steps = single["steps"][stage]
        assert len(steps) == len(ddp["steps"][stage]) == 10
        np.testing.assert_allclose(ddp["steps"][stage], steps, rtol=1e-4, err_msg=stage)
    assert ddp["files"] == single["files"]  # rank 0 wrote the run directory
    assert {"teacher.pt", "student.pt", "run.json", "codebook.json"} <= set(ddp["files"])
    teacher, _ = load_teacher(tmp_path / "two" / "teacher.pt")
    student, _ = load_student(tmp_path / "two" / "student.pt")
    assert teacher.cfg.n_intents == 8 and student.cfg.n_items == teacher.cfg.n_items


FAILING_WORKER = """
import numpy as np
from tandemrec.train.ddp import from_env, gather_rows

rt = from_env("cpu")
gather_rows(np.arange(3), rt)  # a collective, as training runs them
if rt.rank == 1:
    raise RuntimeError("rank 1 broke")
gather_rows(np.arange(3), rt)  # rank 0 waits here for a peer that is gone
"""


def test_a_process_that_fails_does_not_leave_the_other_waiting_at_exit(tmp_path):
    # Rank 1 raises while rank 0 waits in a collective. Rank 1 skips the exit barrier (rank 0
    # would never reach it), so torchrun sees the failure at once and stops rank 0, rather
    # than after the barrier's timeout.
    script = tmp_path / "failing.py"
    script.write_text(FAILING_WORKER)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                          "--nproc_per_node", "2", str(script)], env=env, capture_output=True,
                         text=True, timeout=EXIT_BARRIER_S - 15)
    assert run.returncode != 0
    assert "rank 1 broke" in run.stdout + run.stderr
