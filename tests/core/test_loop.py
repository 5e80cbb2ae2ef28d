"""The shared training loop: its schedule, time budget and what it keeps as the best weights."""

import numpy as np
import pytest
import torch
from torch import nn

from tandemrec.train.loop import CosineSchedule, epochs_within, fit

pytestmark = pytest.mark.core


def test_cosine_schedule_by_hand_and_after_shrinking():
    s = CosineSchedule(warmup=2, total=12, floor=0.0)
    assert [s(0), s(1)] == [0.5, 1.0]  # linear warmup
    assert s(7) == pytest.approx(0.5)  # half-way through the decay: cos(pi / 2)
    assert s(12) == pytest.approx(0.0) and s(50) == pytest.approx(0.0)
    s.total = 7  # a budget cut: the decay now ends at step 7
    assert s(7) == pytest.approx(0.0)
    assert CosineSchedule(0, 10, floor=0.05)(10) == pytest.approx(0.05)


def test_epochs_within_a_budget():
    # 60 s per epoch, 150 s left of 300: two more fit.
    assert epochs_within(300, 150, done=2, planned=10, per_epoch_s=60) == 4
    assert epochs_within(3000, 150, done=2, planned=10, per_epoch_s=60) == 10  # at most planned
    assert epochs_within(100, 150, done=2, planned=10, per_epoch_s=60) == 2  # over: stop now


def _fit_timed(epoch_seconds: list[float], max_epochs: int, max_minutes: float):
    """fit() on a toy model under a fake clock whose epochs take the given seconds."""
    model = nn.Linear(1, 1, bias=False)
    readings = iter([0.0, *np.cumsum(epoch_seconds).tolist()])

    def batches(_):
        yield (torch.ones(2, 1),)

    return fit(model, model.parameters(), name="t", batches=batches, n_batches=1,
               loss_fn=lambda x: model(x).pow(2).mean(), validate=lambda: {"ndcg@10": 0.0},
               lr=0.01, max_epochs=max_epochs, patience=max_epochs, warmup_steps=1,
               max_minutes=max_minutes, clock=lambda: next(readings))


def test_fit_shrinks_its_epochs_to_the_time_budget():
    res = _fit_timed([60.0] * 20, max_epochs=10, max_minutes=6.5)  # 390 s: 6 epochs of 60
    assert len(res.history) == res.planned_epochs == 6
    assert res.stopped == "time_budget"
    assert [h["seconds"] for h in res.history] == [60.0 * e for e in range(1, 7)]
    # An over-long first epoch stops the stage at once: the budget is spent.
    res = _fit_timed([500.0] * 3, max_epochs=10, max_minutes=6.5)
    assert len(res.history) == res.planned_epochs == 1


def test_one_slow_epoch_does_not_cut_the_plan():
    # A slow first epoch (a busy machine) alone would allow 4 epochs; the median allows all 6.
    res = _fit_timed([150.0] + [40.0] * 20, max_epochs=6, max_minutes=6)
    assert len(res.history) == res.planned_epochs == 6
    assert res.stopped == "max_epochs"


def _fit_spiky(keep: str):
    """fit() whose validation peaks at epoch 2 of 4; returns (result, the kept weight, weights
    seen at each validation)."""
    model = nn.Linear(1, 1, bias=False)
    scores = iter([0.1, 0.5, 0.2, 0.3])
    seen: list[float] = []

    def validate() -> dict[str, float]:
        seen.append(model.weight.item())
        return {"ndcg@10": next(scores)}

    def batches(_):
        yield (torch.ones(2, 1),)

    res = fit(model, model.parameters(), name="t", batches=batches, n_batches=1,
              loss_fn=lambda x: model(x).pow(2).mean(), validate=validate, lr=0.1,
              max_epochs=4, patience=4, warmup_steps=1, keep=keep)
    return res, model.weight.item(), seen


def test_fit_keeps_the_best_or_the_last_epoch():
    best, w_best, seen = _fit_spiky("best")
    assert (best.best_epoch, best.kept_epoch) == (2, 2) and w_best == pytest.approx(seen[1])
    last, w_last, seen = _fit_spiky("last")
    assert (last.best_epoch, last.kept_epoch) == (2, 4) and w_last == pytest.approx(seen[3])
    assert seen[1] != pytest.approx(seen[3])  # the weights moved after the best epoch
    with pytest.raises(ValueError, match="keep"):
        _fit_spiky("median")
