"""Benchmark: teacher training samples per second on ML-1M, on the CPU and on GPUs (issue 23).

Runs the teacher stage's own loop (`tandemrec.train.loop.fit` over `teacher_objective`: the
length-bucketed batches, the fused catalog loss, AdamW, warmup and clipping; validation left
out) for `--warmup` + `--steps` steps of the config's teacher and reports sequences per second
and the epoch time they imply: on the CPU in one process; where torch sees a GPU, on one GPU
(bf16 autocast, batches built ahead in pinned memory) and, with more than one, under DDP with
one process per GPU (`torchrun`, NCCL). A row whose hardware is missing says so. With
`--epochs N` each device also trains N whole epochs with validation, for the time and the
validation NDCG@10 curve side by side. Writes train-throughput.{json,md} into `--out`.

    python bench/train_throughput.py [--config ml-1m] [--steps 12] [--warmup 2]
        [--threads 2] [--epochs 0] [--out artifacts/train-throughput]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from tandemrec.data import leave_one_out, load_dataset
from tandemrec.eval.report import machine
from tandemrec.paths import artifacts_dir
from tandemrec.train import ddp
from tandemrec.train.alloc import reuse_large_allocations
from tandemrec.train.batches import Rows
from tandemrec.train.config import PipelineConfig, TeacherTrainConfig, load_config
from tandemrec.train.device import Runtime
from tandemrec.train.loop import fit
from tandemrec.train.teacher import build_teacher, teacher_objective, train_teacher

HERE = Path(__file__).resolve()
NO_GPU = "no GPU available"
BUSY = (": other work shared the CPU, so its rows are slower than on a quiet machine, one "
        "process's threads most (they wait on each other); they do not compare processes.")


def _data(cfg: PipelineConfig) -> tuple[Any, Any, Any]:
    """The dataset, its split and the item text vectors, as the pipeline's train stage has them."""
    ds = load_dataset(cfg.dataset)
    split = leave_one_out(ds, cfg.val_users, cfg.seed, cfg.tune_share)
    text = None
    if cfg.teacher.use_text and ds.item_texts is not None:
        from tandemrec.text.encoder import item_text_vectors

        text = item_text_vectors(list(ds.item_texts))
    return ds, split, text


def measure(cfg: PipelineConfig, rt: Runtime, steps: int, warmup: int) -> dict[str, Any]:
    """Samples per second of `steps` teacher steps after `warmup`, on `rt` (one member)."""
    ds, split, text = _data(cfg)
    tcfg: TeacherTrainConfig = cfg.teacher.member_configs()[0]
    torch.manual_seed(cfg.seed)
    model = rt.place(build_teacher(ds.n_items, text, tcfg, split.train))
    task = teacher_objective(model, split, tcfg, cfg.seed, rt)
    rows: list[int] = []
    stamps: list[float] = []

    def counted(epoch: int) -> Iterator[tuple]:
        for batch in itertools.islice(task.batches(epoch), warmup + steps):
            rows.append(batch[-1].total if isinstance(batch[-1], Rows) else len(batch[0]))
            yield batch

    def on_step() -> None:
        if rt.device.type == "cuda":
            torch.cuda.synchronize(rt.device)
        stamps.append(time.perf_counter())

    fit(model, model.parameters(), name="throughput", batches=counted,
        n_batches=task.n_batches, loss_fn=task.loss_fn, validate=lambda: {"ndcg@10": 0.0},
        lr=tcfg.lr, max_epochs=1, patience=1, warmup_steps=tcfg.warmup_steps,
        weight_decay=tcfg.weight_decay, rt=rt, on_step=on_step)
    seconds = stamps[-1] - stamps[warmup - 1]
    timed = len(stamps) - warmup
    return {"samples_per_s": sum(rows[warmup:len(stamps)]) / seconds,
            "step_ms": seconds / timed * 1e3, "steps_timed": timed,
            "epoch_s_estimated": task.n_batches * seconds / timed,
            "batches_per_epoch": task.n_batches}


def curve(cfg: PipelineConfig, rt: Runtime, epochs: int) -> dict[str, Any]:
    """`epochs` whole teacher epochs with validation: seconds and NDCG@10 per epoch."""
    ds, split, text = _data(cfg)
    tcfg = cfg.teacher.member_configs()[0].model_copy(
        update={"max_epochs": epochs, "patience": epochs, "max_minutes": 0.0})
    _, result = train_teacher(split, ds.n_items, text, tcfg, cfg.seed, rt)
    seconds = [h["seconds"] for h in result.history]
    return {"epoch_s": [b - a for a, b in zip([0.0, *seconds], seconds, strict=False)],
            "val_ndcg@10": [h["val_ndcg@10"] for h in result.history]}


def run_row(cfg: PipelineConfig, rt: Runtime, args: argparse.Namespace) -> dict[str, Any]:
    row = {"device": rt.device.type, "processes": rt.world,
           **measure(cfg, rt, args.steps, args.warmup)}
    if args.epochs:
        row["epochs"] = curve(cfg, rt, args.epochs)
    return row


def ddp_row(args: argparse.Namespace, n: int, device: str = "cuda") -> dict[str, Any]:
    """The DDP measurement: this script under torchrun, `n` processes (one per GPU)."""
    with tempfile.TemporaryDirectory(prefix="train-throughput-") as tmp:
        out = Path(tmp) / "row.json"
        job = {**vars(args), "worker_out": str(out), "device": device,
               "threads": max(1, args.threads // n)}
        subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                        "--nproc_per_node", str(n), str(HERE), "--worker",
                        json.dumps(job, default=str)], check=True)
        return json.loads(out.read_text())


def worker(job: dict[str, Any]) -> None:
    """One DDP process of `ddp_row`; rank 0 writes the row."""
    torch.set_num_threads(job["threads"])
    cfg = load_config(job["config"], job["set"] or [])
    rt = ddp.from_env(job["device"])
    row = run_row(cfg, rt, argparse.Namespace(**job))
    if rt.is_main:
        Path(job["worker_out"]).write_text(json.dumps(row))


def gpu_rows(cfg: PipelineConfig, args: argparse.Namespace) -> list[dict[str, Any]]:
    if not torch.cuda.is_available():
        return [{"device": "cuda", "processes": 1, "note": NO_GPU},
                {"device": "cuda", "processes": "DDP, one per GPU", "note": NO_GPU}]
    rows = [run_row(cfg, Runtime(torch.device("cuda", 0)), args)]
    n = torch.cuda.device_count()
    rows.append(ddp_row(args, n) if n > 1 else
                {"device": "cuda", "processes": "DDP, one per GPU",
                 "note": "one GPU: DDP needs more than one"})
    return rows


def markdown(report: dict[str, Any]) -> str:
    cpu = report["rows"][0]["samples_per_s"]
    lines = [f"# Teacher training throughput on {report['dataset']}", "",
             f"The teacher stage's loop ({report['config']}: width {report['d_model']}, "
             f"window {report['max_len']}, batch {report['batch_size']}), "
             f"{report['steps']} steps timed after {report['warmup']}.", "",
             "| device | processes | samples/s | step (ms) | epoch (s, estimated) | vs CPU |",
             "| --- | --- | ---: | ---: | ---: | ---: |"]
    for r in report["rows"]:
        if "note" in r:
            lines.append(f"| {r['device']} | {r['processes']} | {r['note']} | | | |")
            continue
        lines.append(f"| {r['device']} | {r['processes']} | {r['samples_per_s']:.1f} | "
                     f"{r['step_ms']:.0f} | {r['epoch_s_estimated']:.1f} | "
                     f"{r['samples_per_s'] / cpu:.1f}x |")
    curves = [r for r in report["rows"] if "epochs" in r]
    if curves:
        lines += ["", "Whole epochs with validation (seconds; validation NDCG@10):", ""]
        for r in curves:
            ep = r["epochs"]
            lines.append(f"- {r['device']}, {r['processes']} process(es): " + "; ".join(
                f"{s:.1f} s, {v:.4f}" for s, v in zip(ep["epoch_s"], ep["val_ndcg@10"],
                                                     strict=True)))
    m = report["machine"]
    lines += ["", f"Machine: {m['cpu']}, {m['cores']} cores, {report['threads']} threads "
              "(shared by the processes of a CPU DDP row); "
              f"torch {m['torch']}; GPUs: {', '.join(m['gpus']) or 'none'}. Load average "
              f"{m['load_average_1min'][0]:.1f} at the start, {m['load_average_1min'][1]:.1f} at "
              "the end" + (BUSY if max(m["load_average_1min"]) > m["cores"] else "."), ""]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--worker", help=argparse.SUPPRESS)  # a process of ddp_row: its job (JSON)
    p.add_argument("--config", default="ml-1m", help="a shipped config or a YAML file")
    p.add_argument("--set", action="append", help="config override, e.g. teacher.max_len=100")
    p.add_argument("--steps", type=int, default=12, help="training steps timed per row")
    p.add_argument("--warmup", type=int, default=2, help="steps run before the timing (>= 1)")
    p.add_argument("--threads", type=int, default=2, help="CPU threads")
    p.add_argument("--cpu-processes", type=int, default=0,
                   help="also time DDP on the CPU (gloo) with this many processes, sharing "
                        "--threads")
    p.add_argument("--epochs", type=int, default=0,
                   help="also train this many whole epochs per device, with validation")
    p.add_argument("--out", type=Path, default=artifacts_dir() / "train-throughput",
                   help="where train-throughput.{json,md} go (bench/results: the committed)")
    args = p.parse_args()
    if args.worker:
        return worker(json.loads(args.worker))
    if args.warmup < 1:
        p.error("--warmup must be at least 1")
    torch.set_num_threads(args.threads)
    reuse_large_allocations()
    cfg = load_config(args.config, args.set or [])
    load = os.getloadavg()[0]
    rows = [run_row(cfg, Runtime(torch.device("cpu")), args)]
    if args.cpu_processes > 1:
        rows.append(ddp_row(args, args.cpu_processes, "cpu"))
    rows += gpu_rows(cfg, args)
    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] \
        if torch.cuda.is_available() else []
    t = cfg.teacher
    report = {"benchmark": "teacher training samples per second", "dataset": cfg.dataset,
              "config": args.config, "overrides": args.set or [], "d_model": t.d_model,
              "max_len": t.max_len, "batch_size": t.batch_size, "steps": args.steps,
              "warmup": args.warmup, "threads": args.threads, "rows": rows,
              "machine": {**machine(), "gpus": gpus,
                          "load_average_1min": [load, os.getloadavg()[0]]},
              "command": "python bench/train_throughput.py " + " ".join(sys.argv[1:])}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "train-throughput.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / "train-throughput.md").write_text(markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
