"""The model pipeline as stages over one run directory: train, distill, compress, export, evaluate.

Each stage reads what earlier stages wrote under `run_dir` and writes its own outputs there, so
stages can be run one by one from the CLI or all together with `tandem pipeline`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tandemrec import pipeline_sid
from tandemrec.checkpoints import load_student, load_teacher, save_model
from tandemrec.data import item_popularity, leave_one_out, load_dataset
from tandemrec.data.new_items import device_view, drop_new_targets, select_new_items
from tandemrec.data.types import LeaveOneOutSplit, SequenceDataset
from tandemrec.models.intent_vocab import IntentVocab, build_intent_vocab
from tandemrec.models.teacher import Teacher
from tandemrec.models.teacher_ensemble import AnyTeacher, TeacherEnsemble
from tandemrec.progress import log, quiet
from tandemrec.teacher_reuse import reuse_teacher
from tandemrec.train import ddp
from tandemrec.train.alloc import reuse_large_allocations
from tandemrec.train.config import IntentConfig, PipelineConfig
from tandemrec.train.device import current, use
from tandemrec.train.loop import FitResult


@dataclass
class RunContext:
    """The dataset, its split and the run directory shared by all stages.

    `split` is the cloud's view (every item known); `device_split` is the device's: under the
    fresh-catalog protocol (cfg.protocol "new-items") the items in `new_items` are new to the
    device and removed from its inputs (data/new_items.device_view), under "standard" it is
    `split` itself and `new_items` is all False. `teacher_from`: a run directory whose teacher
    the train stage copies instead of training one (reuse_teacher).
    """

    cfg: PipelineConfig
    run_dir: Path
    data: SequenceDataset
    split: LeaveOneOutSplit
    new_items: np.ndarray  # bool (N+1,): items new to the device; index 0 never
    device_split: LeaveOneOutSplit
    teacher_from: Path | None = None

    @property
    def n_items(self) -> int:
        return self.data.n_items

    @property
    def results_name(self) -> str:
        """Name of this run's results: quality-<results_name>.json under the results dir."""
        return self.data.name + ("-new-items" if self.cfg.protocol == "new-items" else "")

    @property
    def excluded(self) -> np.ndarray | None:
        """The items a student must leave out of its soft targets (`exclude`), None if none."""
        return self.new_items if self.new_items.any() else None

    def device_training_split(self) -> LeaveOneOutSplit:
        """What the student trains and validates on: the device's view, no new item a target."""
        return drop_new_targets(self.device_split, self.new_items)

    def path(self, name: str) -> Path:
        return self.run_dir / name

    def record(self, stage: str, info: dict[str, Any]) -> None:
        """Append a stage's report to run.json (configs, timings, validation curves)."""
        if not current().is_main:  # under DDP, rank 0 writes the run's files
            return
        report_path = self.path("run.json")
        report = json.loads(report_path.read_text()) if report_path.exists() else {}
        report[stage] = info
        report_path.write_text(json.dumps(report, indent=2, default=_jsonable))


def _jsonable(x: Any) -> Any:
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    return str(x)


NEW_ITEMS_FILE = "new_items.npy"


def open_run(cfg: PipelineConfig, run_dir: Path, data_dir: Path | None = None,
             teacher_from: Path | None = None) -> RunContext:
    """Load the dataset, split it, draw the new items and prepare the run directory.

    Writes config.json and new_items.npy (bool (N+1,), all False under the standard protocol)
    into `run_dir`; the draw depends only on the training split, cfg.new_items_share and
    cfg.seed, so every stage of a run sees the same new items. Sets this process's device
    (cfg.device) and, under torchrun, joins the DDP group (train/ddp.py); then only rank 0
    writes files and logs.
    """
    torch.set_num_threads(cfg.threads)
    reuse_large_allocations()
    rt = use(ddp.from_env(cfg.device))
    quiet(not rt.is_main)
    if rt.distributed or not rt.on_cpu:
        log(f"training on {rt.device}" + (f", {rt.world} DDP processes" if rt.distributed
                                          else ""))
    run_dir.mkdir(parents=True, exist_ok=True)
    data = load_dataset(cfg.dataset, data_dir)
    split = leave_one_out(data, cfg.val_users, cfg.seed, cfg.tune_share)
    if cfg.protocol == "new-items":
        new = select_new_items(split.train, data.n_items, cfg.new_items_share, cfg.seed)
        device_split = device_view(split, new)
    else:
        new, device_split = np.zeros(data.n_items + 1, dtype=bool), split
    if rt.is_main:
        (run_dir / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2))
        np.save(run_dir / NEW_ITEMS_FILE, new)
    log(f"{data.name}: {data.n_users} users, {data.n_items} items, "
        f"{data.n_interactions} interactions; {len(split.eval_users)} held-out users, "
        f"{len(split.valid_target)} of them for early stopping, {len(split.tune_target)} "
        f"for fusion tuning")
    if cfg.protocol == "new-items":
        log(f"new-items protocol: {int(new.sum())} items new to the device "
            f"({cfg.new_items_share:.0%} of the catalog, {_interaction_share(split, new):.1%} "
            f"of training interactions); {int(new[split.test_target].sum())} test users' "
            f"target is new")
    return RunContext(cfg, run_dir, data, split, new, device_split, teacher_from)


def _interaction_share(split: LeaveOneOutSplit, new: np.ndarray) -> float:
    pop = item_popularity(split.train, len(new) - 1)
    return float(pop[new].sum() / max(pop.sum(), 1))


def text_vectors(ctx: RunContext) -> np.ndarray | None:
    """Sentence-encoder vectors of the item texts (cached), or None without text."""
    if not ctx.cfg.teacher.use_text or ctx.data.item_texts is None:
        return None
    from tandemrec.text.encoder import item_text_vectors

    t0 = time.time()
    vecs = item_text_vectors(list(ctx.data.item_texts))
    log(f"item text vectors {vecs.shape} in {time.time() - t0:.1f}s (cached after the first run)")
    return vecs


def kmeans_weights(popularity: np.ndarray, weighting: str) -> np.ndarray | None:
    """Sample weights for the intent k-means from training counts (see IntentConfig)."""
    options = {"none": None, "popularity": popularity.astype(np.float64),
               "sqrt": np.sqrt(popularity.astype(np.float64))}
    if weighting not in options:
        raise ValueError(f"intents.weighting must be one of {sorted(options)}, got '{weighting}'")
    return options[weighting]


def intent_vocab(vecs: np.ndarray, texts: Sequence[str] | None, popularity: np.ndarray,
                 cfg: IntentConfig, seed: int) -> IntentVocab:
    """The intent vocabulary a config describes, over the teacher's item vectors."""
    return build_intent_vocab(vecs, texts, n_intents=cfg.n_intents,
                              level_sizes=(cfg.level2, cfg.level3), iters=cfg.kmeans_iters,
                              seed=seed, weights=kmeans_weights(popularity, cfg.weighting),
                              min_items=cfg.min_items)


def train_members(ctx: RunContext) -> tuple[list[Teacher], list[FitResult]]:
    """Each configured teacher in turn (one unless `teacher.members` lists several).

    The members share `teacher.max_minutes`: each gets an equal part of what is left, so time
    that an early-stopping member did not use passes to the next.
    """
    from tandemrec.train.teacher import train_teacher

    cfg = ctx.cfg
    with _main_first():  # rank 0 fills the text-vector cache the others then read
        text = text_vectors(ctx)
    configs = cfg.teacher.member_configs()
    t0 = time.time()
    members, fits = [], []
    for i, mcfg in enumerate(configs):
        if cfg.teacher.max_minutes:
            left = cfg.teacher.max_minutes - (time.time() - t0) / 60
            mcfg = mcfg.model_copy(update={"max_minutes": max(left / (len(configs) - i), 0.01)})
        teacher, fit = train_teacher(ctx.split, ctx.n_items, text, mcfg, cfg.seed + i)
        name = f"teacher {i + 1}/{len(configs)}" if len(configs) > 1 else "teacher"
        log(f"{name}: best val NDCG@10 {fit.best_score:.4f} at epoch {fit.best_epoch} "
            f"({fit.stopped}, {fit.seconds / 60:.1f} min)")
        members.append(teacher)
        fits.append(fit)
    return members, fits


@contextlib.contextmanager
def _main_first() -> Iterator[None]:
    """Under DDP, rank 0 runs the block before the other processes do."""
    rt = current()
    if not rt.is_main:
        ddp.barrier(rt)
    yield
    if rt.is_main:
        ddp.barrier(rt)


def stage_train(ctx: RunContext) -> None:
    """Teacher(s) in full mode, then the intent vocabulary, then the coarse mode of each.

    The teacher trains on `ctx.split` (the cloud knows every item, new ones included). With
    `ctx.teacher_from` set it copies that run's teacher instead (reuse_teacher).
    """
    from tandemrec.train.loop import validation_ndcg
    from tandemrec.train.teacher import coarse_inputs, coarse_validation, train_coarse

    if ctx.teacher_from is not None:
        with _main_first():
            if current().is_main:
                reuse_teacher(ctx, ctx.teacher_from)
        return
    cfg = ctx.cfg
    t0 = time.time()
    members, fits = train_members(ctx)
    model: AnyTeacher = members[0] if len(members) == 1 else TeacherEnsemble(members)
    with torch.no_grad():
        vecs = model.eval().item_vectors().numpy()  # an ensemble's members side by side
    pop = item_popularity(ctx.split.train, ctx.n_items)
    vocab = intent_vocab(vecs, ctx.data.item_texts, pop, cfg.intents, cfg.seed)
    if current().is_main:
        ctx.path("codebook.json").write_text(json.dumps(vocab.to_json()))
    log(f"intent vocabulary: {vocab.n_intents} tokens, e.g. " +
        "; ".join(vocab.labels[1:6]))
    coarse = [train_coarse(m, ctx.split, vocab, mcfg, cfg.eval.coarse_history, cfg.seed)
              for m, mcfg in zip(members, cfg.teacher.member_configs(), strict=True)]
    model.eval()
    reports = [_fit_report(f, c) for f, c in zip(fits, coarse, strict=True)]
    if len(members) == 1:
        extra: dict[str, Any] = {"fit": fits[0].history, "coarse": coarse[0].history}
        info: dict[str, Any] = reports[0]
    else:
        extra = {"members": reports}
        with torch.no_grad():
            val = validation_ndcg(model, ctx.split.valid_input, ctx.split.valid_target,
                                  model.cfg.max_len)["ndcg@10"]
            tokens = coarse_inputs(ctx.split.valid_input, vocab, cfg.eval.coarse_history)
            coarse_val = coarse_validation(model, ctx.split, tokens)["ndcg@10"]
        log(f"teacher ensemble of {len(members)}: val NDCG@10 {val:.4f} "
            f"(members {', '.join(f'{f.best_score:.4f}' for f in fits)}), coarse {coarse_val:.4f}")
        info = {"val_ndcg@10": val, "coarse_val_ndcg@10": coarse_val, "members": reports}
    with _main_first():  # the other DDP processes wait for the files (a pipeline reads them)
        if current().is_main:
            save_model(model, ctx.path("teacher.pt"), extra)
            np.save(ctx.path("popularity.npy"), pop)
    ctx.record("train", {"seconds": time.time() - t0, **info})


def _fit_report(fit: FitResult, coarse: FitResult) -> dict[str, Any]:
    return {"best_epoch": fit.best_epoch, "val_ndcg@10": fit.best_score, "stopped": fit.stopped,
            "planned_epochs": fit.planned_epochs, "seconds_fit": fit.seconds,
            "history": fit.history, "coarse_val_ndcg@10": coarse.best_score,
            "coarse_history": coarse.history}


def load_vocab(ctx: RunContext) -> IntentVocab:
    return IntentVocab.from_json(json.loads(ctx.path("codebook.json").read_text()))


def stage_distill(ctx: RunContext) -> None:
    """The student, on the device's view: no new item in its inputs, targets or soft targets."""
    from tandemrec.train.distill import distill_student

    t0 = time.time()
    teacher, _ = load_teacher(ctx.path("teacher.pt"))
    student, fit = distill_student(teacher, ctx.device_training_split(), ctx.n_items,
                                   load_vocab(ctx), ctx.cfg.student, ctx.cfg.seed,
                                   exclude=ctx.excluded)
    if not current().is_main:  # under DDP the other processes are done: rank 0 goes on alone
        return
    save_model(student, ctx.path("student.pt"), {"fit": fit.history})
    kept = fit.history[fit.kept_epoch - 1]["val_ndcg@10"] if fit.history else fit.best_score
    log(f"student: best val NDCG@10 {fit.best_score:.4f} at epoch {fit.best_epoch}; kept epoch "
        f"{fit.kept_epoch} ({kept:.4f})")
    ctx.record("distill", {"seconds": time.time() - t0, "best_epoch": fit.best_epoch,
                           "kept_epoch": fit.kept_epoch, "kept_val_ndcg@10": kept,
                           "val_ndcg@10": fit.best_score, "stopped": fit.stopped,
                           "planned_epochs": fit.planned_epochs, "history": fit.history})
    if pipeline_sid.enabled(ctx):
        pipeline_sid.stage_distill_sid(ctx)


def stage_compress(ctx: RunContext) -> None:
    """SVD of the student, aligned to the dense student on the same device view it trained on."""
    from tandemrec.train.compress import compress_student

    if not current().is_main:  # not data-parallel: rank 0 compresses, on its device
        return
    t0 = time.time()
    student, _ = load_student(ctx.path("student.pt"))
    small, report = compress_student(student, ctx.device_training_split(), load_vocab(ctx),
                                     ctx.cfg.compress, ctx.cfg.seed)
    save_model(small, ctx.path("student_svd.pt"), report)
    ctx.record("compress", {"seconds": time.time() - t0, **report})
    if pipeline_sid.enabled(ctx):
        pipeline_sid.stage_finetune_sid(ctx)


def stage_export(ctx: RunContext) -> None:
    """ONNX for the dense and compressed students, int8 weights, and torch/ONNX parity."""
    from tandemrec.train.export import check_parity, export_onnx, quantize_int8

    if not current().is_main:
        return
    t0 = time.time()
    student, _ = load_student(ctx.path("student.pt"))
    small, _ = load_student(ctx.path("student_svd.pt"))
    export_onnx(student, ctx.path("student_fp32.onnx"))
    export_onnx(small, ctx.path("student_svd.onnx"))
    quantize_int8(ctx.path("student_svd.onnx"), ctx.path("student_int8.onnx"))
    sample = ctx.device_split.test_input[:200]  # what the device feeds its student
    atol = ctx.cfg.compress.atol
    parity = {name: check_parity(model, ctx.path(f"{name}.onnx"), sample, atol)
              for name, model in (("student_fp32", student), ("student_svd", small))}
    for name, rep in parity.items():
        log(f"ONNX parity {name}: max |diff| {rep.max_abs_diff_scores:.2e} "
            f"(tolerance {atol}), top-10 identical for {rep.top10_agreement:.1%} "
            f"{'OK' if rep.ok else 'FAILED'}")
        if not rep.ok:
            raise RuntimeError(f"ONNX export of {name} differs from torch beyond {atol}")
    parities = {n: dataclasses.asdict(r) for n, r in parity.items()}
    if pipeline_sid.enabled(ctx):
        parities.update(pipeline_sid.stage_export_sid(ctx))
    sizes = {p.name: p.stat().st_size for p in ctx.run_dir.glob("*.onnx")}
    ctx.record("export", {"seconds": time.time() - t0, "sizes": sizes, "parity": parities})


def stage_evaluate(ctx: RunContext, results_dir: Path) -> list[dict]:
    from tandemrec.eval.report import evaluate_run

    if not current().is_main:
        return []
    return evaluate_run(ctx, results_dir)


STAGES = ("train", "distill", "compress", "export", "evaluate")


def run_pipeline(ctx: RunContext, results_dir: Path) -> list[dict]:
    """All stages in order, timed; returns the result rows."""
    t0 = time.time()
    ctx.record("pipeline", {"seconds": None})  # not an earlier run's total in this run's report
    stage_train(ctx)
    stage_distill(ctx)
    if not current().is_main:  # DDP: the teacher and distillation stages only
        return []
    stage_compress(ctx)
    stage_export(ctx)
    rows = stage_evaluate(ctx, results_dir)
    seconds = time.time() - t0
    ctx.record("pipeline", {"seconds": seconds})
    results = results_dir / f"quality-{ctx.results_name}.json"
    if results.exists():  # evaluation wrote it before the total was known
        report = json.loads(results.read_text())
        report.setdefault("run", {})["pipeline"] = {"seconds": seconds}
        results.write_text(json.dumps(report, indent=2, default=str))
    log(f"pipeline finished in {seconds / 60:.1f} min")
    return rows
