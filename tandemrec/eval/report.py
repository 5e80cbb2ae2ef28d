"""Evaluate a pipeline run, write bench/results/quality-<dataset>.{json,md}, assemble the bundle."""

from __future__ import annotations

import dataclasses
import json
import platform
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tandemrec.checkpoints import load_student, load_teacher
from tandemrec.eval.bundles import make_bundle
from tandemrec.eval.modes import Evaluator, Models, n_params, tune_fusion_weight
from tandemrec.progress import console, log, metrics_table

if TYPE_CHECKING:
    from tandemrec.pipeline import RunContext

COLUMNS = ["mode", "hr@10", "ndcg@10", "mrr@10", "params", "size_bytes", "p50_ms"]
FUSION_GRID = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0)


def machine() -> dict[str, Any]:
    """A description of the machine the figures were measured on."""
    import os

    import onnxruntime
    import torch

    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "platform": platform.platform(),
            "python": platform.python_version(), "torch": torch.__version__,
            "onnxruntime": onnxruntime.__version__}


def protocol(ctx: RunContext) -> dict[str, Any]:
    cfg = ctx.cfg.eval
    return {
        "split": "leave-one-out by time: last item = test target, second to last = validation"
                 + (f" for {len(ctx.split.valid_target)} sampled users (the others train on it)"
                    if ctx.cfg.val_users else ""),
        "users": f"all {len(ctx.split.eval_users)} users with >= 3 interactions, "
                 "the same users for every mode",
        "ranking": "full ranking over the whole catalog; items in the user's history excluded "
                   "(the target never is); ties count against the target",
        "collaborative": f"device int8 student sends its top {cfg.top_intents} intent tokens and "
                         f"the intent tokens of its last {cfg.coarse_history} items; the cloud "
                         f"retrieves {cfg.n_retrieve} items ({cfg.popular_share:.0%} popular), "
                         f"scores them with the coarse teacher and returns the top "
                         f"{cfg.n_candidates}; the device fuses teacher and own scores (weight "
                         "tuned on validation users) and ranks; a target outside the returned "
                         "list is a miss",
        "edge-only": "int8 student ranking the device's item table (the whole catalog here), "
                     "no network",
        "latency": "p50 of single requests on one thread, compute only (no network); "
                   "collaborative = device student + retrieval + coarse teacher + fusion",
        "size_bytes": "size of the model file the mode runs (device file for device modes)",
        "sampled": "sampled100_* keys rank the target among 100 random non-history items; "
                   "for comparison with papers only",
        "seed": ctx.cfg.seed,
    }


def load_models(ctx: RunContext) -> Models:
    from tandemrec.pipeline import load_vocab

    teacher, _ = load_teacher(ctx.path("teacher.pt"))
    student, _ = load_student(ctx.path("student.pt"))
    small, _ = load_student(ctx.path("student_svd.pt"))
    files = {"teacher": ctx.path("teacher.pt"), "student_fp32": ctx.path("student_fp32.onnx"),
             "student_svd": ctx.path("student_svd.onnx"),
             "student_int8": ctx.path("student_int8.onnx")}
    return Models(teacher, load_vocab(ctx), student, small, np.load(ctx.path("popularity.npy")),
                  files, ctx.n_items)


def evaluate_run(ctx: RunContext, results_dir: Path) -> list[dict]:
    """All modes on the test users; the fusion weight is chosen on the validation users."""
    t0 = time.time()
    models = load_models(ctx)
    cfg = ctx.cfg.eval
    sp = ctx.split
    weight = cfg.fusion_weight
    tuning: dict = {}
    if weight is None:
        val = Evaluator(models, sp.valid_input, sp.valid_target, cfg, ctx.cfg.seed)
        weight, tuning = tune_fusion_weight(val, FUSION_GRID)
        log(f"fusion weight {weight} (validation NDCG@10 by weight: {tuning})")
    ev = Evaluator(models, sp.test_input, sp.test_target, cfg, ctx.cfg.seed)
    int8_params = n_params(models.student_svd)
    results = [ev.popularity(), ev.teacher(coarse=False), ev.teacher(coarse=True),
               ev.student_onnx("student-fp32", "student_fp32", n_params(models.student)),
               ev.student_onnx("student-svd", "student_svd", int8_params),
               ev.student_onnx("student-int8", "student_int8", int8_params)]
    device = ev.device_pass()
    collab = ev.collaborative(device, weight)
    collab.params = int8_params + n_params(models.teacher)
    collab.size_bytes = models.files["student_int8"].stat().st_size
    collab.p50_ms = ev.collaborative_latency(weight)
    collab.extra["bytes_up_note"] = ("intent tokens only; no item id leaves the device. Counted as "
                                     "the JSON body (HTTP); `tandem simulate` counts the smaller "
                                     "protobuf message (gRPC)")
    # Edge-only is the int8 student ranking the device's item table: the same computation.
    results += [collab, dataclasses.replace(results[-1], mode="edge-only")]
    rows = [r.row(cfg.ks) for r in results]
    report = {"dataset": ctx.data.name, "rows": rows, "protocol": protocol(ctx),
              "fusion_tuning": tuning, "machine": machine(), "config": ctx.cfg.to_dict(),
              "run": json.loads(ctx.path("run.json").read_text()) if ctx.path("run.json").exists()
              else {}, "seconds": time.time() - t0}
    write_results(report, results_dir)
    serving = {"fusion_weight": weight, "top_intents": cfg.top_intents,
               "coarse_history": cfg.coarse_history, "n_retrieve": cfg.n_retrieve,
               "n_candidates": cfg.n_candidates, "popular_share": cfg.popular_share}
    make_bundle(ctx, rows, serving)
    console.print(metrics_table(f"{ctx.data.name}: held-out users, full ranking", rows, COLUMNS))
    return rows


def write_results(report: dict, results_dir: Path) -> Path:
    """quality-<dataset>.json and a markdown table beside it."""
    results_dir.mkdir(parents=True, exist_ok=True)
    name = report["dataset"]
    path = results_dir / f"quality-{name}.json"
    path.write_text(json.dumps(report, indent=2, default=str))
    lines = [f"# Quality on {name} (full ranking, held-out users)", "",
             "| mode | HR@10 | NDCG@10 | MRR@10 | params | size (bytes) | p50 (ms) |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in report["rows"]:
        lines.append(f"| {r['mode']} | {r['hr@10']:.4f} | {r['ndcg@10']:.4f} | "
                     f"{r['mrr@10']:.4f} | {r['params']:,} | {r['size_bytes']:,} | "
                     f"{r['p50_ms']:.3f} |")
    m = report["machine"]
    lines += ["", f"Machine: {m['cpu']}, {m['cores']} cores; torch {m['torch']}, "
              f"onnxruntime {m['onnxruntime']}. Protocol: see the JSON beside this file.", ""]
    (results_dir / f"quality-{name}.md").write_text("\n".join(lines))
    from tandemrec.eval.plots import quality_plot

    plot = quality_plot(report, results_dir / f"quality-{name}.png")
    log(f"wrote {path}, its markdown table" + (f" and {plot.name}" if plot else ""))
    return path
