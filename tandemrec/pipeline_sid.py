"""The semantic-id student's stages (student.kind: sid), run beside the full-table student's.

distill: `sid_student.pt`, on the device's view as the table student; export:
`sid_student_fp32.onnx` and `sid_student_int8.onnx` with the same parity check (no SVD stage:
the model holds no catalog-sized matrix to factorise); evaluate: the sid-* modes
(eval/sid_modes.py) and `bundle-sid/`, its bundle pair (device/: the model a catalog of any
size ships with; cloud/: the table pair's cloud side).
"""

from __future__ import annotations

import dataclasses
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tandem_contract.bundle import PairDirs, bundle_bytes, write_manifest
from tandem_contract.semantic_ids import SID_MODEL, SidSpec
from tandemrec.checkpoints import load_sid_student, load_teacher, save_model
from tandemrec.progress import log

if TYPE_CHECKING:
    from tandemrec.models.sid_student import SidStudent
    from tandemrec.pipeline import RunContext

SID_CKPT = "sid_student.pt"
SID_FP32, SID_INT8 = "sid_student_fp32.onnx", SID_MODEL
SID_BUNDLE = "bundle-sid"


def enabled(ctx: RunContext) -> bool:
    return ctx.cfg.student.kind == "sid"


def stage_distill_sid(ctx: RunContext) -> None:
    """Distil the semantic-id student on the same device view and teacher as the table one;
    with `student.sid_init: table` it waits for the table student's compression instead."""
    from tandemrec.pipeline import load_vocab
    from tandemrec.train.distill_sid import distill_sid_student

    if ctx.cfg.student.sid_init == "table":
        return
    t0 = time.time()
    teacher, _ = load_teacher(ctx.path("teacher.pt"))
    student, fit = distill_sid_student(teacher, ctx.device_training_split(), load_vocab(ctx),
                                       ctx.cfg.student, ctx.cfg.seed, exclude=ctx.excluded)
    save_model(student, ctx.path(SID_CKPT), {"fit": fit.history})
    log(f"semantic-id student: best val NDCG@10 {fit.best_score:.4f} at epoch "
        f"{fit.best_epoch} ({fit.seconds / 60:.1f} min)")
    ctx.record("distill_sid", {"seconds": time.time() - t0, "best_epoch": fit.best_epoch,
                               "val_ndcg@10": fit.best_score, "stopped": fit.stopped,
                               "history": fit.history})


def stage_project_sid(ctx: RunContext) -> None:
    """`student.sid_init: table`: the semantic-id student as the compressed table student
    projected onto semantic ids (train/sid_project.py), saved for the fine-tuning that follows."""
    from tandemrec.checkpoints import load_student
    from tandemrec.data import item_popularity
    from tandemrec.pipeline import kmeans_weights, load_vocab
    from tandemrec.train.sid_project import sid_from_table

    t0 = time.time()
    table = load_student(ctx.path("student_svd.pt"))[0]
    # Each item's error weighs as its share of the device's training events (plus one, so
    # that no known item drops out) under student.sid_weighting.
    pop = item_popularity(ctx.device_training_split().train, ctx.n_items) + 1
    sc = ctx.cfg.student
    weights = kmeans_weights(pop, sc.sid_weighting)
    student, rep = sid_from_table(table, load_vocab(ctx), sc.hash_buckets, ctx.excluded, weights,
                                  sc.hash_count)
    save_model(student, ctx.path(SID_CKPT), {"projection": dataclasses.asdict(rep)})
    log(f"semantic-id student projected from the table student: item vectors R^2 "
        f"{rep.vector_r2:.3f}, biases R^2 {rep.bias_r2:.3f} ({rep.iterations} CG iterations)")
    ctx.record("project_sid", {"seconds": time.time() - t0, **dataclasses.asdict(rep)})


def stage_finetune_sid(ctx: RunContext) -> None:
    """After the table student's compression: project the semantic-id student from it
    (`student.sid_init: table`), then fine-tune it when `compress.sid_finetune` asks
    (train/distill_sid.finetune_sid_student; the `table` reference reads the table student)."""
    from tandemrec.checkpoints import load_student
    from tandemrec.pipeline import load_vocab
    from tandemrec.train.distill_sid import finetune_sid_student

    c = ctx.cfg.compress
    if ctx.cfg.student.sid_init == "table":
        stage_project_sid(ctx)
    if not (c.sid_finetune and c.finetune_epochs):
        return
    t0 = time.time()
    student, extra = load_sid_student(ctx.path(SID_CKPT))
    table = load_student(ctx.path("student_svd.pt"))[0] if c.sid_finetune_ref == "table" else None
    fit = finetune_sid_student(student, ctx.device_training_split(), load_vocab(ctx), c,
                               ctx.cfg.seed, exclude=ctx.excluded, table=table)
    save_model(student, ctx.path(SID_CKPT), {**extra, "finetune": fit.history})
    log(f"semantic-id student fine-tuned: val NDCG@10 {fit.best_score:.4f} at best "
        f"(epoch {fit.best_epoch}; {fit.seconds / 60:.1f} min)")
    ctx.record("finetune_sid", {"seconds": time.time() - t0, "best_epoch": fit.best_epoch,
                                "val_ndcg@10": fit.best_score, "history": fit.history})


def device_rows(ctx: RunContext, histories: list[np.ndarray],
                spec: SidSpec) -> list[np.ndarray]:
    """Each history as the semantic-id student reads it: (T, L') rows of its code table."""
    from tandemrec.pipeline import load_vocab
    from tandemrec.train.distill_sid import sid_catalog

    catalog = sid_catalog(load_vocab(ctx), spec.hash_buckets, spec.hash_count)
    return [catalog[np.asarray(h, dtype=np.int64)] for h in histories]


def stage_export_sid(ctx: RunContext) -> dict[str, Any]:
    """fp32 and int8 ONNX of the semantic-id student, fp32 checked against torch."""
    from tandemrec.train.export import check_parity, export_onnx, quantize_int8

    student, _ = load_sid_student(ctx.path(SID_CKPT))
    export_onnx(student, ctx.path(SID_FP32))
    quantize_int8(ctx.path(SID_FP32), ctx.path(SID_INT8))
    # Its device keeps every item in its history: the cloud sends new items' semantic ids.
    sample = device_rows(ctx, ctx.split.test_input[:200], spec_of(student))
    atol = ctx.cfg.compress.atol
    rep = check_parity(student, ctx.path(SID_FP32), sample, atol)
    log(f"ONNX parity sid_student_fp32: max |diff| {rep.max_abs_diff_scores:.2e} (tolerance "
        f"{atol}) {'OK' if rep.ok else 'FAILED'}")
    if not rep.ok:
        raise RuntimeError(f"ONNX export of the semantic-id student differs beyond {atol}")
    return {"sid_student_fp32": dataclasses.asdict(rep)}


def stage_sid(ctx: RunContext) -> None:
    """The semantic-id student alone, on a run whose teacher exists: distil it and export it.

    Another row count or width is a new student on the same teacher, so trying one costs the
    student's training, not a whole run; `tandem evaluate` then writes the sid-* rows.
    """
    stage_distill_sid(ctx)  # records its own time
    stage_finetune_sid(ctx)
    t0 = time.time()
    parity = stage_export_sid(ctx)
    ctx.record("export_sid", {"seconds": time.time() - t0, "parity": parity,
                              "sizes": {n: ctx.path(n).stat().st_size
                                        for n in (SID_FP32, SID_INT8)}})


def sid_spec(ctx: RunContext) -> SidSpec:
    """What the semantic-id device bundle's manifest records of its student."""
    return spec_of(load_sid_student(ctx.path(SID_CKPT))[0])


def spec_of(student: SidStudent) -> SidSpec:
    """A semantic-id student's level sizes, hash rows and window, as its device reads them."""
    c = student.cfg
    return SidSpec(tuple(c.level_sizes), c.hash_buckets, c.max_len, c.hash_count)


def sid_bundle(ctx: RunContext, rows: list[dict], serving: dict,
               known: np.ndarray | None = None) -> Path:
    """`bundle-sid/`: the semantic-id student's bundle pair, served as the table one is.

    device/ holds the int8 model and a manifest whose `extra.student` records its semantic ids'
    layout (`SidSpec`) and whose serving keys are the sid-collaborative evaluation's; nothing
    per item: the semantic ids of the items a device meets come with the cloud's answers.
    cloud/ is the table pair's cloud side. Its version is the run's with a `-sid` suffix, so
    both pairs can be published side by side.
    """
    from tandemrec.eval.bundles import write_pair

    spec = sid_spec(ctx)
    mask = np.ones(ctx.n_items + 1, dtype=bool) if known is None else known

    def device(pair: PairDirs, _: dict[str, Any]) -> None:
        shutil.copy2(ctx.path(SID_INT8), pair.device / SID_INT8)

    sid_rows = [r for r in rows if r["mode"].startswith("sid-")]
    return write_pair(ctx, ctx.path(SID_BUNDLE), sid_rows, serving, mask, device,
                      device_extra={"student": spec.record()}, suffix="-sid")


def write_sid_bundle(root: Path, model: Path, dataset: str, config: dict[str, Any],
                     metrics: dict[str, Any], spec: SidSpec) -> int:
    """A semantic-id device side alone at `root` (replaced), as `sid_bundle` writes its
    device/ without serving keys; return its bytes (what bench/catalog_scale.py measures)."""
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    shutil.copy2(model, root / SID_INT8)
    write_manifest(root, version=time.strftime("%Y%m%d-%H%M%S"), dataset=dataset, config=config,
                   metrics=metrics, extra={"student": spec.record()})
    return bundle_bytes(root)
