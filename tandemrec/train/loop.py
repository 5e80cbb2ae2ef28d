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
from tandemrec.train.ddp import Step, from_main, gather_rows, sum_over
from tandemrec.train.device import Runtime

# A step's loss, or (its mean over the scored positions, their count): DDP needs the count.
LossOut = torch.Tensor | tuple[torch.Tensor, torch.Tensor]


@dataclass
class FitResult:
    best_epoch: int
    best_score: float
    history: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    stopped: str = "max_epochs"
    planned_epochs: int = 0  # max_epochs, or fewer when the time budget shrank the schedule
    kept_epoch: int = -1  # the epoch whose weights the model ends with (best, or last)
    step_losses: list[float] = field(default_factory=list)  # every step's, all epochs


def rank_users(score_fn: Callable[[torch.Tensor], torch.Tensor], inputs: list[np.ndarray],
               targets: np.ndarray, max_len: int, exclude: list[np.ndarray] | None = None,
               batch_size: int = 256, device: torch.device | None = None) -> np.ndarray:
    """0-based full-catalog rank of each user's target, excluding the user's history items.

    `exclude` defaults to `inputs`; modes whose inputs are not items (intent tokens) pass the
    real item history, so every mode is ranked under the same exclusion rule. `device`: where
    `score_fn`'s model is (the ranking itself is on the CPU).
    """
    exclude = inputs if exclude is None else exclude
    ranks = []
    with torch.inference_mode():
        for sl, x in eval_batches(inputs, max_len, batch_size):
            scores = score_fn(x if device is None else x.to(device)).float().cpu().numpy()
            ranks.append(target_ranks(scores, targets[sl], exclude[sl]))
    return np.concatenate(ranks) if ranks else np.zeros(0, dtype=np.int64)


def validation_ndcg(score_fn: Callable[[torch.Tensor], torch.Tensor], inputs: list[np.ndarray],
                    targets: np.ndarray, max_len: int,
                    exclude: list[np.ndarray] | None = None,
                    rt: Runtime | None = None) -> dict[str, float]:
    """Full-ranking metrics on held-out users (the early-stopping signal).

    With `rt`, the model is on `rt.device`; under DDP each process ranks its share of the users
    and every process gets the metrics of all of them.
    """
    if rt is None:
        return metrics_from_ranks(rank_users(score_fn, inputs, targets, max_len, exclude))
    mine = rt.rows(len(inputs))
    sl = slice(mine.start, mine.stop)
    ranks = rank_users(score_fn, inputs[sl], targets[sl], max_len,
                       None if exclude is None else exclude[sl], device=rt.device)
    return metrics_from_ranks(gather_rows(ranks, rt))


class CosineSchedule:
    """Linear warmup then cosine decay to `floor` of the peak rate at step `total`.

    `total` may shrink mid-run: a stage that will not finish its epochs inside its time budget
    then still ends its decay (a schedule cut off at a high rate leaves the weights noisy).
    """

    def __init__(self, warmup: int, total: int, floor: float = 0.05) -> None:
        self.warmup, self.total, self.floor = warmup, total, floor

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        t = min(1.0, (step - self.warmup) / max(1, self.total - self.warmup))
        return self.floor + (1 - self.floor) * 0.5 * (1 + math.cos(math.pi * t))


def epochs_within(budget_s: float, elapsed_s: float, done: int, planned: int,
                  per_epoch_s: float) -> int:
    """Epochs that fit the budget at `per_epoch_s` each: from `done` up to `planned`."""
    fit_more = int((budget_s - elapsed_s) // per_epoch_s) if per_epoch_s > 0 else planned
    return max(done, min(planned, done + fit_more))


def fit(model: nn.Module, params: Iterable[nn.Parameter], *, name: str,
        batches: Callable[[int], Iterator], n_batches: int,
        loss_fn: Callable[..., LossOut], validate: Callable[[], dict[str, float]],
        lr: float, max_epochs: int, patience: int, warmup_steps: int = 100,
        weight_decay: float = 0.0, max_minutes: float = 0.0, grad_clip: float = 1.0,
        keep: str = "best", clock: Callable[[], float] = time.time,
        rt: Runtime | None = None, on_step: Callable[[], None] | None = None) -> FitResult:
    """Train until validation NDCG@10 stops improving, then restore the best weights.

    `batches(epoch)` yields the arguments of `loss_fn`; `validate()` returns metrics with
    "ndcg@10". Stops early on patience. With `max_minutes`, the epochs (and the cosine decay)
    shrink to what fits the budget at the epoch time measured so far, on a slower machine.
    `keep="last"` ends with the last epoch's weights: on a small validation set the best
    epoch can be a noisy spike in the middle of the schedule, at a high learning rate.
    `rt`: the device the model and batches are on, and the DDP group (train/ddp.Step); the
    batches are moved there (train/device.Runtime.batches). `on_step()` runs after every
    optimizer step (bench/train_throughput.py times them).
    """
    if keep not in ("best", "last"):
        raise ValueError(f"keep must be 'best' or 'last', got '{keep}'")
    rt = rt or Runtime()
    step = Step(model, loss_fn, rt)
    params = [p for p in params if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    schedule = CosineSchedule(warmup_steps, max_epochs * n_batches)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
    result = FitResult(best_epoch=-1, best_score=-1.0, planned_epochs=max_epochs)
    best_state = copy.deepcopy(model.state_dict()) if keep == "best" else None
    start, bad = clock(), 0
    with stage_progress() as progress:
        task = progress.add_task(name, total=max_epochs * n_batches, status="")
        for epoch in range(max_epochs):
            if epoch >= result.planned_epochs:  # the time budget shrank the plan
                break
            model.train()
            losses = _Losses(rt)
            for batch in rt.batches(batches(epoch)):
                loss, value = step(batch)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if grad_clip:
                    nn.utils.clip_grad_norm_(params, grad_clip)
                opt.step()
                sched.step()
                losses.add(value)
                if on_step is not None:
                    on_step()
                progress.update(task, advance=1, status=f"ep {epoch + 1} loss {losses.recent()}")
            losses.close(result.step_losses)
            model.eval()
            metrics = validate()
            score = metrics["ndcg@10"]
            entry = {"epoch": epoch + 1, "loss": float(np.mean(losses.values)),
                     "val_ndcg@10": score,
                     "val_hr@10": metrics.get("hr@10"), "seconds": clock() - start}
            result.history.append(entry)
            log(f"{name} epoch {epoch + 1}: loss {entry['loss']:.4f} "
                f"val NDCG@10 {score:.4f} HR@10 {metrics.get('hr@10', 0):.4f} "
                f"({entry['seconds']:.0f}s)")
            if score > result.best_score:
                result.best_score, result.best_epoch, bad = score, epoch + 1, 0
                if keep == "best":  # "last" never restores, so needs no copy
                    best_state = copy.deepcopy(model.state_dict())
            else:
                bad += 1
            if bad >= patience:
                result.stopped = "early_stopping"
                break
            if max_minutes:
                _fit_budget(result, schedule, max_minutes * 60, max_epochs, n_batches, name)
                # Each process has its own clock: rank 0's plan holds for all.
                result.planned_epochs, result.stopped, schedule.total = from_main(
                    (result.planned_epochs, result.stopped, schedule.total), rt)
                progress.update(task, total=result.planned_epochs * n_batches)
    if best_state is not None:
        model.load_state_dict(best_state)
        result.kept_epoch = result.best_epoch
    else:
        result.kept_epoch = len(result.history)
    model.eval()
    result.seconds = clock() - start
    return result


class _Losses:
    """An epoch's step losses. On a CPU in one process each is read at once, as always; on a
    GPU they stay there (reading one waits for the step) and the progress bar shows them every
    `EVERY` steps; under DDP they are summed over the processes at the epoch's end."""

    EVERY = 25

    def __init__(self, rt: Runtime) -> None:
        self.rt, self.eager = rt, rt.on_cpu and not rt.distributed
        self.values: list[float] = []
        self._pending: list[torch.Tensor] = []
        self._shown = ""

    def add(self, loss: torch.Tensor) -> None:
        if self.eager:
            self.values.append(loss.item())
        else:
            self._pending.append(loss.detach())

    def recent(self) -> str:
        if self.eager:
            return f"{np.mean(self.values[-50:]):.3f}"
        if len(self._pending) % self.EVERY == 1 or not self._shown:
            # Under DDP a value is this process's share of the step's loss: about 1/world of it.
            mean = torch.stack(self._pending[-50:]).mean().item() * self.rt.world
            self._shown = f"{mean:.3f}"
        return self._shown

    def close(self, into: list[float]) -> None:
        """Settle the epoch's values (one transfer) and append them to `into`."""
        if self._pending:
            self.values = sum_over(torch.stack(self._pending), self.rt).tolist()
            self._pending = []
        into.extend(self.values)


def _fit_budget(result: FitResult, schedule: CosineSchedule, budget_s: float, max_epochs: int,
                n_batches: int, name: str) -> None:
    """Set the planned epochs and the decay to what the time budget allows.

    From the third epoch on, the epoch time is the median of the last three, so one slow epoch
    (a busy machine) moves the plan little; it may grow back up to `max_epochs`.
    """
    seconds = [0.0] + [h["seconds"] for h in result.history]
    done = len(result.history)
    if done < 3 and seconds[-1] < budget_s:
        return  # too few epochs timed to plan by
    per_epoch = float(np.median(np.diff(seconds)[-3:]))
    planned = epochs_within(budget_s, seconds[-1], done, max_epochs, per_epoch)
    if planned != result.planned_epochs and planned > done:
        log(f"{name}: {budget_s / 60:.0f}-minute budget at {per_epoch:.0f}s per epoch: "
            f"{planned} epochs of {max_epochs}")
    result.planned_epochs = planned
    result.stopped = "time_budget" if planned < max_epochs else "max_epochs"
    schedule.total = planned * n_batches
