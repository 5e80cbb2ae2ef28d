"""The model pipeline as stages over one run directory: train, distill, compress, export, evaluate.

Each stage reads what earlier stages wrote under `run_dir` and writes its own outputs there, so
stages can be run one by one from the CLI or all together with `tandem pipeline`.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tandemrec.checkpoints import load_student, load_teacher, save_model
from tandemrec.data import item_popularity, leave_one_out, load_dataset
from tandemrec.data.types import LeaveOneOutSplit, SequenceDataset
from tandemrec.models.intent_vocab import IntentVocab, build_intent_vocab
from tandemrec.models.teacher import Teacher
from tandemrec.models.teacher_ensemble import AnyTeacher, TeacherEnsemble
from tandemrec.progress import log
from tandemrec.train.alloc import reuse_large_allocations
from tandemrec.train.config import IntentConfig, PipelineConfig
from tandemrec.train.loop import FitResult


@dataclass
class RunContext:
    """The dataset, its split and the run directory shared by all stages."""

    cfg: PipelineConfig
    run_dir: Path
    data: SequenceDataset
    split: LeaveOneOutSplit

    @property
    def n_items(self) -> int:
        return self.data.n_items

    def path(self, name: str) -> Path:
        return self.run_dir / name

    def record(self, stage: str, info: dict[str, Any]) -> None:
        """Append a stage's report to run.json (configs, timings, validation curves)."""
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


def open_run(cfg: PipelineConfig, run_dir: Path, data_dir: Path | None = None) -> RunContext:
    """Load the dataset, split it and prepare the run directory."""
    torch.set_num_threads(cfg.threads)
    reuse_large_allocations()
    run_dir.mkdir(parents=True, exist_ok=True)
    data = load_dataset(cfg.dataset, data_dir)
    split = leave_one_out(data, cfg.val_users, cfg.seed)
    (run_dir / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2))
    log(f"{data.name}: {data.n_users} users, {data.n_items} items, "
        f"{data.n_interactions} interactions; {len(split.eval_users)} held-out users, "
        f"{len(split.valid_target)} of them validated")
    return RunContext(cfg, run_dir, data, split)


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
    text = text_vectors(ctx)
    configs = cfg.teacher.member_configs()
    t0 = time.time()
    members, fits = [], []
    for i, mcfg in enumerate(configs):
        if cfg.teacher.max_minutes:
            left = cfg.teacher.max_minutes - (time.time() - t0) / 60
            mcfg = dataclasses.replace(mcfg, max_minutes=max(left / (len(configs) - i), 0.01))
        teacher, fit = train_teacher(ctx.split, ctx.n_items, text, mcfg, cfg.seed + i)
        name = f"teacher {i + 1}/{len(configs)}" if len(configs) > 1 else "teacher"
        log(f"{name}: best val NDCG@10 {fit.best_score:.4f} at epoch {fit.best_epoch} "
            f"({fit.stopped}, {fit.seconds / 60:.1f} min)")
        members.append(teacher)
        fits.append(fit)
    return members, fits


def stage_train(ctx: RunContext) -> None:
    """Teacher(s) in full mode, then the intent vocabulary, then the coarse mode of each."""
    from tandemrec.train.loop import validation_ndcg
    from tandemrec.train.teacher import coarse_inputs, coarse_validation, train_coarse

    cfg = ctx.cfg
    t0 = time.time()
    members, fits = train_members(ctx)
    model: AnyTeacher = members[0] if len(members) == 1 else TeacherEnsemble(members)
    with torch.no_grad():
        vecs = model.eval().item_vectors().numpy()  # an ensemble's members side by side
    pop = item_popularity(ctx.split.train, ctx.n_items)
    vocab = intent_vocab(vecs, ctx.data.item_texts, pop, cfg.intents, cfg.seed)
    ctx.path("codebook.json").write_text(json.dumps(vocab.to_json()))
    log(f"intent vocabulary: {vocab.n_intents} tokens, e.g. " +
        "; ".join(vocab.labels[1:6]))
    coarse = [train_coarse(m, ctx.split, vocab, mcfg, cfg.eval.coarse_history, cfg.seed)
              for m, mcfg in zip(members, cfg.teacher.member_configs(), strict=True)]
    model.eval()
    reports = [_fit_report(f, c) for f, c in zip(fits, coarse, strict=True)]
    if len(members) == 1:
        save_model(model, ctx.path("teacher.pt"), {"fit": fits[0].history,
                                                   "coarse": coarse[0].history})
        info: dict[str, Any] = reports[0]
    else:
        save_model(model, ctx.path("teacher.pt"), {"members": reports})
        with torch.no_grad():
            val = validation_ndcg(model, ctx.split.valid_input, ctx.split.valid_target,
                                  model.cfg.max_len)["ndcg@10"]
            tokens = coarse_inputs(ctx.split.valid_input, vocab, cfg.eval.coarse_history)
            coarse_val = coarse_validation(model, ctx.split, tokens)["ndcg@10"]
        log(f"teacher ensemble of {len(members)}: val NDCG@10 {val:.4f} "
            f"(members {', '.join(f'{f.best_score:.4f}' for f in fits)}), coarse {coarse_val:.4f}")
        info = {"val_ndcg@10": val, "coarse_val_ndcg@10": coarse_val, "members": reports}
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
    from tandemrec.train.distill import distill_student

    t0 = time.time()
    teacher, _ = load_teacher(ctx.path("teacher.pt"))
    student, fit = distill_student(teacher, ctx.split, ctx.n_items, load_vocab(ctx),
                                   ctx.cfg.student, ctx.cfg.seed)
    save_model(student, ctx.path("student.pt"), {"fit": fit.history})
    kept = fit.history[fit.kept_epoch - 1]["val_ndcg@10"] if fit.history else fit.best_score
    log(f"student: best val NDCG@10 {fit.best_score:.4f} at epoch {fit.best_epoch}; kept epoch "
        f"{fit.kept_epoch} ({kept:.4f})")
    ctx.record("distill", {"seconds": time.time() - t0, "best_epoch": fit.best_epoch,
                           "kept_epoch": fit.kept_epoch, "kept_val_ndcg@10": kept,
                           "val_ndcg@10": fit.best_score, "stopped": fit.stopped,
                           "planned_epochs": fit.planned_epochs, "history": fit.history})


def stage_compress(ctx: RunContext) -> None:
    from tandemrec.train.compress import compress_student

    t0 = time.time()
    student, _ = load_student(ctx.path("student.pt"))
    small, report = compress_student(student, ctx.split, load_vocab(ctx), ctx.cfg.compress,
                                     ctx.cfg.seed)
    save_model(small, ctx.path("student_svd.pt"), report)
    ctx.record("compress", {"seconds": time.time() - t0, **report})


def stage_export(ctx: RunContext) -> None:
    """ONNX for the dense and compressed students, int8 weights, and torch/ONNX parity."""
    from tandemrec.train.export import check_parity, export_onnx, quantize_int8

    t0 = time.time()
    student, _ = load_student(ctx.path("student.pt"))
    small, _ = load_student(ctx.path("student_svd.pt"))
    export_onnx(student, ctx.path("student_fp32.onnx"))
    export_onnx(small, ctx.path("student_svd.onnx"))
    quantize_int8(ctx.path("student_svd.onnx"), ctx.path("student_int8.onnx"))
    sample = ctx.split.test_input[:200]
    atol = ctx.cfg.compress.atol
    parity = {name: check_parity(model, ctx.path(f"{name}.onnx"), sample, atol)
              for name, model in (("student_fp32", student), ("student_svd", small))}
    for name, rep in parity.items():
        log(f"ONNX parity {name}: max |diff| {rep.max_abs_diff_scores:.2e} "
            f"(tolerance {atol}), top-10 identical for {rep.top10_agreement:.1%} "
            f"{'OK' if rep.ok else 'FAILED'}")
        if not rep.ok:
            raise RuntimeError(f"ONNX export of {name} differs from torch beyond {atol}")
    sizes = {p.name: p.stat().st_size for p in ctx.run_dir.glob("*.onnx")}
    ctx.record("export", {"seconds": time.time() - t0, "sizes": sizes,
                          "parity": {n: dataclasses.asdict(r) for n, r in parity.items()}})


def stage_evaluate(ctx: RunContext, results_dir: Path) -> list[dict]:
    from tandemrec.eval.report import evaluate_run

    return evaluate_run(ctx, results_dir)


STAGES = ("train", "distill", "compress", "export", "evaluate")


def run_pipeline(ctx: RunContext, results_dir: Path) -> list[dict]:
    """All stages in order, timed; returns the result rows."""
    t0 = time.time()
    ctx.record("pipeline", {"seconds": None})  # not an earlier run's total in this run's report
    stage_train(ctx)
    stage_distill(ctx)
    stage_compress(ctx)
    stage_export(ctx)
    rows = stage_evaluate(ctx, results_dir)
    seconds = time.time() - t0
    ctx.record("pipeline", {"seconds": seconds})
    results = results_dir / f"quality-{ctx.data.name}.json"
    if results.exists():  # evaluation wrote it before the total was known
        report = json.loads(results.read_text())
        report.setdefault("run", {})["pipeline"] = {"seconds": seconds}
        results.write_text(json.dumps(report, indent=2, default=str))
    log(f"pipeline finished in {seconds / 60:.1f} min")
    return rows
