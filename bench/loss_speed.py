"""Benchmark: the catalog softmax loss with autograd against its closed-form gradient.

Every training stage ends in an (M, N+1) score matrix. This times forward and backward of the
item head plus loss on ML-1M shapes (a batch of 128 histories, ~165 scored positions each,
3,417 catalog columns), three ways in one run: autograd over `cross_entropy` (+ `logsumexp`
top-K distillation for the student) against `tandemrec.train.losses.catalog_loss` (closed-form
gradient) and `chunked_head_loss` (head and loss fused, a chunk of rows at a time, which is what
training uses). It checks that all three give the same loss.
Writes bench/results/loss-speed.{json,md}.

    python bench/loss_speed.py [--repeats 5] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from tandemrec.eval.report import machine
from tandemrec.train.distill import topk_kd_loss
from tandemrec.train.losses import SoftTargets, catalog_loss, chunked_head_loss

RESULTS = Path(__file__).resolve().parent / "results"
M, N, K, T = 128 * 165, 3417, 64, 2.0


def case(d: int, distill: bool) -> tuple[dict[str, Callable[[], torch.Tensor]], list[torch.Tensor]]:
    """({variant: loss}, parameters) for a head of width d."""
    g = torch.Generator().manual_seed(0)
    h = torch.randn(M, d, generator=g).requires_grad_()
    w = (torch.randn(N, d, generator=g) * 0.1).requires_grad_()
    b = torch.zeros(N, requires_grad=True)
    y = torch.randint(1, N, (M,), generator=g)
    t_idx = torch.randint(1, N, (M, K), generator=g)
    t_logp = torch.randn(M, K, generator=g).log_softmax(-1)
    soft = SoftTargets(p=t_logp.exp(), idx=t_idx, temperature=T) if distill else None

    def autograd() -> torch.Tensor:
        s = (h @ w.T) * d**-0.5 + b  # the heads as they were written before
        loss = F.cross_entropy(s, y)
        return loss + topk_kd_loss(s, t_idx, t_logp, T) if distill else loss

    def closed_form() -> torch.Tensor:
        return catalog_loss((h * d**-0.5) @ w.T + b, y, 1.0, soft)

    def chunked() -> torch.Tensor:
        return chunked_head_loss(h, w, b, y, d**-0.5, 1.0, soft)

    return {"autograd": autograd, "closed_form": closed_form, "chunked": chunked}, [h, w, b]


def seconds(fn: Callable[[], torch.Tensor], params: list[torch.Tensor], repeats: int) -> float:
    """Best-of-`repeats` time of one forward and backward."""
    best = float("inf")
    for _ in range(repeats + 1):  # the first call warms the allocator
        for p in params:
            p.grad = None
        t = time.perf_counter()
        fn().backward()
        best = min(best, time.perf_counter() - t)
    return best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=RESULTS)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    rows = []
    for name, d, distill in [("teacher: CE, d 128", 128, False),
                             ("student: CE + top-64 KD at T=2, d 64", 64, True)]:
        variants, params = case(d, distill)
        losses = [fn().item() for fn in variants.values()]
        t = {k: seconds(fn, params, a.repeats) for k, fn in variants.items()}
        rows.append({"case": name, **{f"{k}_s": round(v, 4) for k, v in t.items()},
                     "speedup": round(t["autograd"] / t["closed_form"], 2),
                     "chunked_speedup": round(t["autograd"] / t["chunked"], 2),
                     "same_loss": max(losses) - min(losses) < 1e-3})
        print(json.dumps(rows[-1]), flush=True)
    report = {"machine": machine(), "threads": a.threads,
              "shape": {"positions": M, "catalog": N, "top_k": K}, "rows": rows}
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "loss-speed.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = ["# Catalog softmax loss: autograd, closed-form gradient, chunked head + loss", "",
             f"{M:,} positions x {N:,} items, forward + backward of head and loss, best of "
             f"{a.repeats}, {a.threads} threads; machine: {report['machine']['cpu']}.", "",
             "| case | autograd (s) | closed form (s) | speedup | chunked (s) | speedup "
             "| same loss |",
             "| --- | ---: | ---: | ---: | ---: | ---: | --- |"]
    lines += [f"| {r['case']} | {r['autograd_s']:.3f} | {r['closed_form_s']:.3f} | "
              f"{r['speedup']:.2f}x | {r['chunked_s']:.3f} | {r['chunked_speedup']:.2f}x | "
              f"{'yes' if r['same_loss'] else 'NO'} |" for r in rows]
    (a.out / "loss-speed.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
