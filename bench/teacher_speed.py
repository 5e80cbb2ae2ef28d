"""Benchmark: what a teacher training epoch costs on this machine, per design choice.

Times a sample of real ML-1M training steps (length-bucketed batches, the pipeline's fused
catalog loss) for several configurations in one run and reports each as an estimated epoch time and
as a ratio to the configuration the ML-1M pipeline uses. Writes
bench/results/teacher-speed.{json,md}.

    python bench/teacher_speed.py [--every 4] [--threads 2]

Two more rows time the pipeline's configuration as it was before two changes: with
`torch.dropout`'s Bernoulli masks instead of `tandemrec.models.dropout`, and (in a child
process, since allocator settings are process-wide) with glibc's default allocation thresholds
instead of `tandemrec.train.alloc.reuse_large_allocations`.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from tandemrec.data import leave_one_out, load_dataset
from tandemrec.eval.report import machine
from tandemrec.models.dropout import Dropout
from tandemrec.models.teacher import Teacher, TeacherConfig
from tandemrec.train.alloc import reuse_large_allocations
from tandemrec.train.batches import left_pad
from tandemrec.train.precision import autocast, bf16_supported, matmul_dtype
from tandemrec.train.teacher import sampled_position_loss

CONFIGS = [  # (name, max_len, d_model, precision, fused attention, share of positions scored)
    ("pipeline: len 200, d 128, fp32", 200, 128, "fp32", False, 1.0),
    ("len 200, d 128, bf16", 200, 128, "bf16", False, 1.0),
    ("len 200, d 128, fp32, fused attention", 200, 128, "fp32", True, 1.0),
    ("len 200, d 128, bf16, fused attention", 200, 128, "bf16", True, 1.0),
    ("len 200, d 64, fp32", 200, 64, "fp32", False, 1.0),
    ("len 100, d 128, fp32", 100, 128, "fp32", False, 1.0),
    ("len 200, d 128, fp32, loss on 30% of positions", 200, 128, "fp32", False, 0.3),
]


def epoch_seconds(train: list[np.ndarray], n_items: int, max_len: int, d: int, precision: str,
                  fused: bool, share: float, every: int, torch_dropout: bool = False) -> float:
    """Time every `every`-th length-sorted batch of one epoch and scale to the whole epoch.

    Each step is the pipeline's: decoder forward under the precision's autocast, the fused
    item head and catalog loss (`sampled_position_loss`), backward, AdamW.
    """
    torch.manual_seed(0)
    model = Teacher(TeacherConfig(n_items=n_items, text_dim=384, d_model=d, mlp_hidden=2 * d,
                                  max_len=max_len))
    for mod in model.modules():
        if hasattr(mod, "fused"):
            mod.fused = fused
        if torch_dropout and isinstance(getattr(mod, "drop", None), Dropout):
            mod.drop = nn.Dropout(mod.drop.p)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(0)
    dtype = matmul_dtype(precision)  # float32 where the CPU has no native bf16, as in training
    seqs = [s[-(max_len + 1):] for s in train if len(s) >= 2]
    order = np.argsort([len(s) for s in seqs], kind="stable")
    batches = [order[i:i + 128] for i in range(0, len(order), 128)]
    sample = batches[::every]

    def step(b: np.ndarray) -> None:
        full = left_pad([seqs[i] for i in b], max_len + 1)
        x, y = full[:, :-1], full[:, 1:]
        with autocast(dtype):
            h = model.hidden(x)
        loss = sampled_position_loss(model, h, y, share, gen, dtype)
        opt.zero_grad()
        loss.backward()
        opt.step()

    for b in sample[-2:]:  # warm-up on the longest batches: allocator and kernels settle
        step(b)
    start = time.perf_counter()
    for b in sample:
        step(b)
    return (time.perf_counter() - start) * len(batches) / len(sample)


def _default_alloc_seconds(args: argparse.Namespace) -> float:
    """The pipeline's config timed in a fresh process that leaves glibc's thresholds alone."""
    out = subprocess.run([sys.executable, __file__, "--default-alloc", "--every", str(args.every),
                          "--threads", str(args.threads)], check=True, capture_output=True,
                         text=True).stdout
    return float(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--every", type=int, default=4, help="time every n-th batch")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--default-alloc", action="store_true",
                        help="only time the pipeline's config under glibc's default allocation "
                             "thresholds and print the seconds (the parent run calls this)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    ds = load_dataset("ml-1m")
    train = leave_one_out(ds).train
    if args.default_alloc:
        print(epoch_seconds(train, ds.n_items, *CONFIGS[0][1:], args.every))
        return
    reuse_large_allocations()
    timed = [(config, epoch_seconds(train, ds.n_items, *config[1:], args.every))
             for config in CONFIGS]
    base = CONFIGS[0]
    timed += [((f"{base[0]}, torch.dropout (before)", *base[1:]),
               epoch_seconds(train, ds.n_items, *base[1:], args.every, torch_dropout=True)),
              ((f"{base[0]}, glibc default allocation (before)", *base[1:]),
               _default_alloc_seconds(args))]
    rows = []
    for (name, max_len, d, precision, fused, share), secs in timed:
        rows.append({"config": name, "max_len": max_len, "d_model": d, "precision": precision,
                     "fused": fused, "loss_positions": share, "epoch_s": secs})
        print(f"{name}: {secs:.1f} s per epoch (estimated)")
    base = rows[0]["epoch_s"]
    for r in rows:
        r["ratio_to_pipeline"] = r["epoch_s"] / base
    args.out.mkdir(parents=True, exist_ok=True)
    report = {"benchmark": "teacher epoch time on ML-1M", "rows": rows, "machine": machine(),
              "threads": args.threads, "batches_timed": f"every {args.every}th of one epoch",
              "native_bf16": bf16_supported()}
    (args.out / "teacher-speed.json").write_text(json.dumps(report, indent=2))
    m = report["machine"]
    lines = ["# Teacher epoch time on ML-1M (estimated from sampled batches, one run)", "",
             "| configuration | epoch (s) | ratio to the pipeline's |", "| --- | ---: | ---: |"]
    lines += [f"| {r['config']} | {r['epoch_s']:.1f} | {r['ratio_to_pipeline']:.2f} |"
              for r in rows]
    lines += ["", f"Machine: {m['cpu']}, {m['cores']} cores, {args.threads} threads; "
              f"torch {m['torch']}; native bf16 matmuls: {report['native_bf16']}.", ""]
    (args.out / "teacher-speed.md").write_text("\n".join(lines))


if __name__ == "__main__":
    main()
