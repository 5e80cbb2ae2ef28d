"""Benchmark: what a teacher training epoch costs on this machine, per design choice.

Times a sample of real ML-1M training steps (length-bucketed batches, full softmax over the
catalog) for several configurations in one run and reports each as an estimated epoch time and
as a ratio to the configuration the ML-1M pipeline uses. Writes
bench/results/teacher-speed.{json,md}.

    python bench/teacher_speed.py [--every 4] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from tandemrec.data import leave_one_out, load_dataset
from tandemrec.eval.report import machine
from tandemrec.models.teacher import Teacher, TeacherConfig
from tandemrec.train.batches import left_pad
from tandemrec.train.teacher import next_item_loss

CONFIGS = [  # (name, max_len, d_model, fused attention, loss positions (0 = all))
    ("pipeline: len 200, d 128, fused", 200, 128, True, 0),
    ("len 200, d 64, fused", 200, 64, True, 0),
    ("len 100, d 128, fused", 100, 128, True, 0),
    ("len 200, d 128, plain matmuls", 200, 128, False, 0),
    ("len 200, d 128, fused, loss on last 64", 200, 128, True, 64),
]


def epoch_seconds(train: list[np.ndarray], n_items: int, max_len: int, d: int, fused: bool,
                  loss_positions: int, every: int) -> float:
    """Time every `every`-th length-sorted batch of one epoch and scale to the whole epoch."""
    torch.manual_seed(0)
    model = Teacher(TeacherConfig(n_items=n_items, text_dim=384, d_model=d, mlp_hidden=2 * d,
                                  max_len=max_len))
    for mod in model.modules():
        if hasattr(mod, "fused"):
            mod.fused = fused
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    seqs = [s[-(max_len + 1):] for s in train if len(s) >= 2]
    order = np.argsort([len(s) for s in seqs], kind="stable")
    batches = [order[i:i + 128] for i in range(0, len(order), 128)]
    sample = batches[::every]

    def step(b: np.ndarray) -> None:
        full = left_pad([seqs[i] for i in b], max_len + 1)
        x, y = full[:, :-1], full[:, 1:]
        h = model.hidden(x)
        if loss_positions:
            h, y = h[:, -loss_positions:], y[:, -loss_positions:]
        loss = next_item_loss(model.scores(h), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    for b in sample[-2:]:  # warm-up on the longest batches: allocator and kernels settle
        step(b)
    start = time.perf_counter()
    for b in sample:
        step(b)
    return (time.perf_counter() - start) * len(batches) / len(sample)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--every", type=int, default=4, help="time every n-th batch")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    ds = load_dataset("ml-1m")
    train = leave_one_out(ds).train
    rows = []
    for name, max_len, d, fused, positions in CONFIGS:
        secs = epoch_seconds(train, ds.n_items, max_len, d, fused, positions, args.every)
        rows.append({"config": name, "max_len": max_len, "d_model": d, "fused": fused,
                     "loss_positions": positions, "epoch_s": secs})
        print(f"{name}: {secs:.1f} s per epoch (estimated)")
    base = rows[0]["epoch_s"]
    for r in rows:
        r["ratio_to_pipeline"] = r["epoch_s"] / base
    args.out.mkdir(parents=True, exist_ok=True)
    report = {"benchmark": "teacher epoch time on ML-1M", "rows": rows, "machine": machine(),
              "threads": args.threads, "batches_timed": f"every {args.every}th of one epoch"}
    (args.out / "teacher-speed.json").write_text(json.dumps(report, indent=2))
    m = report["machine"]
    lines = ["# Teacher epoch time on ML-1M (estimated from sampled batches, one run)", "",
             "| configuration | epoch (s) | ratio to the pipeline's |", "| --- | ---: | ---: |"]
    lines += [f"| {r['config']} | {r['epoch_s']:.1f} | {r['ratio_to_pipeline']:.2f} |"
              for r in rows]
    lines += ["", f"Machine: {m['cpu']}, {m['cores']} cores, {args.threads} threads; "
              f"torch {m['torch']}.", ""]
    (args.out / "teacher-speed.md").write_text("\n".join(lines))


if __name__ == "__main__":
    main()
