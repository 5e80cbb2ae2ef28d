"""The train stage from another run: `--teacher-from` copies a teacher this run could have trained.

A teacher is reusable when it was trained from the same config sections and the same training
split; anything else is refused with a message that names the difference.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tandemrec.data import item_popularity
from tandemrec.progress import log

if TYPE_CHECKING:
    from tandemrec.pipeline import RunContext


# What a reused teacher must share with this run: everything its training read.
TEACHER_SECTIONS = ("dataset", "seed", "val_users", "tune_share", "teacher", "intents")
TEACHER_FILES = ("teacher.pt", "codebook.json", "popularity.npy")


class TeacherReuseError(ValueError):
    """--teacher-from names a run whose teacher this run cannot use."""


def _teacher_inputs(cfg: dict[str, Any]) -> dict[str, Any]:
    """The config values a trained teacher depends on (coarse training reads the history L)."""
    return {**{k: cfg.get(k) for k in TEACHER_SECTIONS},
            "eval.coarse_history": (cfg.get("eval") or {}).get("coarse_history")}


def reuse_teacher(ctx: RunContext, source: Path) -> None:
    """The train stage from another run: copy its teacher, intent codebook and popularity.

    Refuses unless `source`/config.json agrees with this run on what the teacher was trained
    from (TEACHER_SECTIONS and eval.coarse_history) and its popularity.npy matches this run's
    training split (same data, same split). The teacher always trains on the cloud's view, so
    a standard run's teacher serves a new-items run unchanged.
    """
    t0 = time.time()
    source = Path(source)
    if source.resolve() == ctx.run_dir.resolve():
        raise TeacherReuseError(f"--teacher-from {source} is this run's own directory")
    missing = [n for n in ("config.json", *TEACHER_FILES) if not (source / n).exists()]
    if missing:
        raise FileNotFoundError(f"--teacher-from {source}: no {', '.join(missing)} there "
                                f"(run `tandem train` into it first)")
    theirs = _teacher_inputs(json.loads((source / "config.json").read_text()))
    ours = _teacher_inputs(json.loads(json.dumps(ctx.cfg.to_dict())))  # tuples as lists
    differ = [k for k in ours if ours[k] != theirs[k]]
    if differ:
        details = "; ".join(f"{k}: {theirs[k]!r} there, {ours[k]!r} here" for k in differ)
        raise TeacherReuseError(f"--teacher-from {source}: its teacher was trained under a "
                                f"different config ({details})")
    pop = item_popularity(ctx.split.train, ctx.n_items)
    theirs_pop = np.load(source / "popularity.npy")
    if theirs_pop.shape != pop.shape or not np.array_equal(theirs_pop, pop):
        raise TeacherReuseError(f"--teacher-from {source}: its training split differs from "
                                f"this run's (popularity.npy does not match); same dataset "
                                f"file?")
    for name in TEACHER_FILES:
        shutil.copy2(source / name, ctx.path(name))
    report = source / "run.json"
    trained = json.loads(report.read_text()).get("train") if report.exists() else None
    log(f"teacher, codebook and popularity copied from {source}")
    ctx.record("train", {"reused_from": str(source), "seconds": time.time() - t0,
                         "source": trained})
