"""One training loop for every stage: AdamW, warmup + cosine, early stopping, a time budget."""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from tandemrec.eval.metrics import metrics_from_ranks, target_ranks
from tandemrec.progress import log, stage_progress
from tandemrec.train.batches import eval_batches


@dataclass
class FitResult:
    best_epoch: int
    best_score: float
    history: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    stopped: str = "max_epochs"


def rank_users(score_fn: Callable[[torch.Tensor], torch.Tensor], inputs: list[np.ndarray],
               targets: np.ndarray, max_len: int, exclude: list[np.ndarray] | None = None,
               batch_size: int = 256) -> np.ndarray:
    """0-based full-catalog rank of each user's target, excluding the user's history items.

    `exclude` defaults to `inputs`; modes whose inputs are not items (intent tokens) pass the
    real item history, so every mode is ranked under the same exclusion rule.
    """
    exclude = inputs if exclude is None else exclude
    ranks = []
    with torch.inference_mode():
        for sl, x in eval_batches(inputs, max_len, batch_size):
            scores = score_fn(x).float().numpy()
            ranks.append(target_ranks(scores, targets[sl], exclude[sl]))
    return np.concatenate(ranks) if ranks else np.zeros(0, dtype=np.int64)


def validation_ndcg(score_fn: Callable[[torch.Tensor], torch.Tensor], inputs: list[np.ndarray],
                    targets: np.ndarray, max_len: int,
                    exclude: list[np.ndarray] | None = None) -> dict[str, float]:
    """Full-ranking metrics on held-out users (the early-stopping signal)."""
    return metrics_from_ranks(rank_users(score_fn, inputs, targets, max_len, exclude))


def lr_lambda(warmup: int, total: int, floor: float = 0.05) -> Callable[[int], float]:
    """Linear warmup then cosine decay to `floor` of the peak rate."""
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        t = min(1.0, (step - warmup) / max(1, total - warmup))
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * t))
    return f


class WeightAverage:
    """An exponential moving average of parameters, swapped in for validation.

    Late in training the validation score swings by a few per cent from epoch to epoch as the
    weights wander around a plateau; their average sits nearer its centre (Polyak averaging).
    """

    def __init__(self, params: list[nn.Parameter], decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"ema decay must be in (0, 1), got {decay}")
        self.params, self.decay = params, decay
        self.shadow = [p.detach().clone() for p in params]

    @torch.no_grad()
    def update(self) -> None:
        for s, p in zip(self.shadow, self.params, strict=True):
            s.lerp_(p, 1.0 - self.decay)

    @torch.no_grad()
    def swap(self) -> None:
        for s, p in zip(self.shadow, self.params, strict=True):
            tmp = p.detach().clone()
            p.copy_(s)
            s.copy_(tmp)


def fit(model: nn.Module, params: Iterable[nn.Parameter], *, name: str,
        batches: Callable[[int], Iterator], n_batches: int,
        loss_fn: Callable[..., torch.Tensor], validate: Callable[[], dict[str, float]],
        lr: float, max_epochs: int, patience: int, warmup_steps: int = 100,
        weight_decay: float = 0.0, max_minutes: float = 0.0, grad_clip: float = 1.0,
        ema: float = 0.0) -> FitResult:
    """Train until validation NDCG@10 stops improving, then restore the best weights.

    `batches(epoch)` yields the arguments of `loss_fn`; `validate()` returns metrics with
    "ndcg@10". Stops early on patience or when `max_minutes` of wall clock are spent.
    `ema` > 0 validates (and keeps) an exponential moving average of the weights instead.
    """
    params = [p for p in params if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    average = WeightAverage(params, ema) if ema else None
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(warmup_steps, max_epochs * n_batches))
    result = FitResult(best_epoch=-1, best_score=-1.0)
    best_state = copy.deepcopy(model.state_dict())
    start, bad = time.time(), 0
    with stage_progress() as progress:
        task = progress.add_task(name, total=max_epochs * n_batches, status="")
        for epoch in range(max_epochs):
            model.train()
            losses = []
            for batch in batches(epoch):
                loss = loss_fn(*batch)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if grad_clip:
                    nn.utils.clip_grad_norm_(params, grad_clip)
                opt.step()
                sched.step()
                if average is not None:
                    average.update()
                losses.append(loss.item())
                progress.update(task, advance=1,
                                status=f"ep {epoch + 1} loss {np.mean(losses[-50:]):.3f}")
            model.eval()
            if average is not None:
                average.swap()  # validate (and keep as best) the averaged weights
            metrics = validate()
            score = metrics["ndcg@10"]
            entry = {"epoch": epoch + 1, "loss": float(np.mean(losses)), "val_ndcg@10": score,
                     "val_hr@10": metrics.get("hr@10"), "seconds": time.time() - start}
            result.history.append(entry)
            log(f"{name} epoch {epoch + 1}: loss {entry['loss']:.4f} "
                f"val NDCG@10 {score:.4f} HR@10 {metrics.get('hr@10', 0):.4f} "
                f"({entry['seconds']:.0f}s)")
            if score > result.best_score:
                result.best_score, result.best_epoch, bad = score, epoch + 1, 0
                best_state = copy.deepcopy(model.state_dict())
            else:
                bad += 1
            if average is not None:
                average.swap()  # back to the raw weights for the next epoch
            if bad >= patience:
                result.stopped = "early_stopping"
                break
            if max_minutes and (time.time() - start) / 60 >= max_minutes:
                result.stopped = "time_budget"
                break
    model.load_state_dict(best_state)
    model.eval()
    result.seconds = time.time() - start
    return result
