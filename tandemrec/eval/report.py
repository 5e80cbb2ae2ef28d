"""Evaluate a pipeline run, write bench/results/quality-<dataset>.{json,md}, assemble the bundle."""

from __future__ import annotations

import copy
import dataclasses
import json
import platform
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tandemrec.checkpoints import load_student, load_teacher
from tandemrec.eval.bundles import bundle_sizes, make_bundle
from tandemrec.eval.lift import add_lift, lift_markdown, merge_new_items, new_items_section
from tandemrec.eval.modes import (
    Evaluator,
    FusionConfig,
    Models,
    fusion_grid,
    n_params,
    tune_fusion,
)
from tandemrec.models.teacher_ensemble import AnyTeacher
from tandemrec.pipeline_sid import enabled as sid_enabled
from tandemrec.pipeline_sid import sid_bundle
from tandemrec.progress import console, log, metrics_table

if TYPE_CHECKING:
    from tandemrec.pipeline import RunContext

COLUMNS = ["mode", "hr@10", "ndcg@10", "mrr@10", "params", "size_bytes", "p50_ms"]


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
                 + (" for sampled users (the others train on it)" if ctx.cfg.val_users else "")
                 + f"; {len(ctx.split.valid_target)} validation users early-stop the models, "
                 f"{len(ctx.split.tune_target)} others choose the fusion setting",
        "users": f"all {len(ctx.split.eval_users)} users with >= 3 interactions, "
                 "the same users for every mode",
        "ranking": "full ranking over the whole catalog; items in the user's history excluded "
                   "(the target never is); ties count against the target",
        "collaborative": f"device int8 student sends its top {cfg.top_intents} intent tokens and "
                         f"the intent tokens of its last {cfg.coarse_history} items; the cloud "
                         f"retrieves {cfg.n_retrieve} items ({cfg.popular_share:.0%} popular), "
                         f"scores them with the coarse teacher and returns its top "
                         f"{cfg.n_candidates} with their intent tokens and catalog log-"
                         "probabilities; the device ranks the union of those and its own top "
                         "items with tandem_contract.fusion.fuse (weight, device top-N and the "
                         "rules for missing scores chosen on the fusion-tuning users, the device "
                         "alone among the choices); a target outside the union is a miss",
        "edge-only": "int8 student ranking the items its bundle knows, no network",
        "new_items": ("none: the device knows every item" if ctx.cfg.protocol == "standard" else
                      f"{ctx.cfg.new_items_share:.0%} of the items are new to the device: "
                      + NEW_ITEM_SELECTION + "; the device drops them from its own input"),
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
    known = ~ctx.new_items
    known[0] = False
    return Models(teacher, load_vocab(ctx), student, small, np.load(ctx.path("popularity.npy")),
                  files, ctx.n_items, known, scorer=on_training_device(teacher))


def on_training_device(teacher: AnyTeacher) -> AnyTeacher | None:
    """A copy of the teacher on the configured GPU for batched ranking; None on a CPU."""
    from tandemrec.train.device import current

    rt = current()
    return None if rt.on_cpu else rt.place(copy.deepcopy(teacher)).eval()


def choose_fusion(ctx: RunContext, models: Models) -> tuple[FusionConfig, dict]:
    """The fusion setting: the config's where it fixes one, else the best on validation users."""
    cfg = ctx.cfg.eval
    grid = fusion_grid(cfg, bool(ctx.new_items.any()))
    if len(grid) == 1:
        return grid[0], {}
    inputs, targets = ctx.split.fusion_users()
    val = Evaluator(models, inputs, targets, cfg, ctx.cfg.seed,
                    device_inputs=ctx.device_split.fusion_users()[0])
    fusion, tuning = tune_fusion(val, grid, cfg.fusion_confidence, ctx.cfg.seed,
                                 cfg.fusion_tolerance)
    zero = max((v for k, v in tuning.items() if k.startswith("w=0.0 ")), default=0.0)
    log(f"fusion on {len(targets)} held-out validation users: {fusion} (NDCG@10 "
        f"{max(tuning.values()):.4f}; the device alone {zero:.4f}; {len(grid)} settings tried)")
    return fusion, tuning


def evaluate_run(ctx: RunContext, results_dir: Path) -> list[dict]:
    """All modes on the test users; the fusion setting is chosen on the validation users."""
    t0 = time.time()
    models = load_models(ctx)
    cfg = ctx.cfg.eval
    fusion, tuning = choose_fusion(ctx, models)
    sp, dsp = ctx.split, ctx.device_split
    ev = Evaluator(models, sp.test_input, sp.test_target, cfg, ctx.cfg.seed,
                   device_inputs=dsp.test_input)
    int8_params = n_params(models.student_svd)
    results = [ev.popularity(), ev.teacher(coarse=False), ev.teacher(coarse=True),
               ev.student_onnx("student-fp32", "student_fp32", n_params(models.student)),
               ev.student_onnx("student-svd", "student_svd", int8_params),
               ev.student_onnx("student-int8", "student_int8", int8_params)]
    collab = ev.collaborative(fusion)
    collab.params = int8_params + n_params(models.teacher)
    collab.size_bytes = models.files["student_int8"].stat().st_size
    collab.p50_ms = ev.collaborative_latency(fusion)
    collab.extra["bytes_up_note"] = ("intent tokens only; no item id leaves the device. Counted as "
                                     "the JSON body (HTTP); `tandem simulate` counts the smaller "
                                     "protobuf message (gRPC)")
    # Edge-only is the int8 student ranking the device's item table: the same computation.
    results += [collab, dataclasses.replace(results[-1], mode="edge-only")]
    sid: dict[str, Any] = {}
    if sid_enabled(ctx):  # the semantic-id student beside the table one (student.kind: sid)
        from tandemrec.eval.sid_modes import evaluate_sid

        sid_results, sid = evaluate_sid(ctx, models)
        results += sid_results
    rows = [r.row(cfg.ks) for r in results]
    add_lift(rows)
    serving = {**fusion.serving(), "top_intents": cfg.top_intents,
               "coarse_history": cfg.coarse_history, "n_retrieve": cfg.n_retrieve,
               "n_candidates": cfg.n_candidates, "popular_share": cfg.popular_share}
    bundle = make_bundle(ctx, rows, serving, known=models.known)
    report = {"dataset": ctx.data.name, "protocol_name": ctx.cfg.protocol, "rows": rows,
              "n_test_users": len(sp.test_target), **bundle_sizes(bundle),
              "protocol": protocol(ctx), "fusion": fusion.serving(), "fusion_tuning": tuning,
              "machine": machine(), "config": ctx.cfg.to_dict(),
              "run": json.loads(ctx.path("run.json").read_text()) if ctx.path("run.json").exists()
              else {}, "seconds": time.time() - t0}
    if sid:  # its own pair, served with the fusion setting chosen for it
        pair = sid_bundle(ctx, rows, {**serving, **sid["fusion"]}, known=models.known)
        report["sid"] = {**sid, "device_bundle_bytes": bundle_sizes(pair)["device_bundle_bytes"]}
    if ctx.new_items.any():
        report["new_items"] = new_items_section(
            {r.mode: r.ranks for r in results}, ctx.new_items[sp.test_target],
            ctx.cfg.new_items_share, NEW_ITEM_SELECTION, int(ctx.new_items.sum()))
    elif fresh := _sibling(ctx, results_dir, f"quality-{ctx.data.name}-new-items.json"):
        # The new-item protocol is its own run; its figures sit beside these (see merge below).
        report["new_items"] = json.loads(fresh.read_text()).get("new_items")
    write_results(report, results_dir, ctx.results_name)
    standard_json = _sibling(ctx, results_dir, f"quality-{ctx.data.name}.json")
    if "new_items" in report and standard_json and merge_new_items(standard_json,
                                                                   report["new_items"]):
        write_markdown(json.loads(standard_json.read_text()), standard_json.parent,
                       ctx.data.name)
        log(f"new-item figures added to {standard_json} beside the standard ones")
    console.print(metrics_table(f"{ctx.results_name}: held-out users, full ranking", rows,
                                COLUMNS))
    return rows


def _sibling(ctx: RunContext, results_dir: Path, name: str) -> Path | None:
    """A results file of the other protocol's run: in `results_dir`, or in that run's own
    default results folder (artifacts/<dataset>[-new-items]/results)."""
    runs = (ctx.run_dir.parent / ctx.data.name, ctx.run_dir.parent / f"{ctx.data.name}-new-items")
    for folder in (results_dir, *(run / "results" for run in runs)):
        if (folder / name).exists():
            return folder / name
    return None


NEW_ITEM_SELECTION = ("a seeded share of the catalog drawn without replacement in proportion to "
                      "training interactions (as popular as real launches); the student never "
                      "trains on them and the device bundle does not know them, the teacher does")


def write_results(report: dict, results_dir: Path, name: str | None = None) -> Path:
    """quality-<name>.json, a markdown table and a plot beside it."""
    results_dir.mkdir(parents=True, exist_ok=True)
    name = name or report["dataset"]
    path = results_dir / f"quality-{name}.json"
    path.write_text(json.dumps(report, indent=2, default=str))
    write_markdown(report, results_dir, name)
    from tandemrec.eval.plots import quality_plot

    plot = quality_plot(report, results_dir / f"quality-{name}.png")
    log(f"wrote {path}, its markdown table" + (f" and {plot.name}" if plot else ""))
    return path


def write_markdown(report: dict, results_dir: Path, name: str) -> Path:
    """quality-<name>.md: the lift table, then every mode."""
    lines = [f"# Quality on {name} (full ranking, held-out users)", "",
             "NDCG@10 of collaborative serving beside the device alone and the cloud with the "
             "whole history, on the same users:", "", *lift_markdown(report), "",
             "| mode | HR@10 | NDCG@10 | MRR@10 | params | size (bytes) | p50 (ms) |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in report["rows"]:
        lines.append(f"| {r['mode']} | {r['hr@10']:.4f} | {r['ndcg@10']:.4f} | "
                     f"{r['mrr@10']:.4f} | {r['params']:,} | {r['size_bytes']:,} | "
                     f"{r['p50_ms']:.3f} |")
    if "device_bundle_bytes" in report:
        lines += ["", f"A device downloads {report['device_bundle_bytes']:,} bytes; the cloud "
                  f"bundle (never sent to devices) is {report['cloud_bundle_bytes']:,} bytes."]
    if "sid" in report:
        lines += ["", f"With the semantic-id student (sid-* modes, docs/semantic-ids.md) a "
                  f"device downloads {report['sid']['device_bundle_bytes']:,} bytes, whatever "
                  f"the catalog's size."]
    m = report["machine"]
    lines += ["", f"Machine: {m['cpu']}, {m['cores']} cores; torch {m['torch']}, "
              f"onnxruntime {m['onnxruntime']}. Protocol: see the JSON beside this file.", ""]
    path = results_dir / f"quality-{name}.md"
    path.write_text("\n".join(lines))
    return path
