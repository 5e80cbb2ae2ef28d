"""The shared training loop: weight averaging and what it keeps as the best weights."""

import pytest
import torch
from torch import nn

from tandemrec.train.loop import WeightAverage, fit

pytestmark = pytest.mark.core


def test_weight_average_by_hand_and_swap_round_trip():
    p = nn.Parameter(torch.tensor([0.0, 10.0]))
    avg = WeightAverage([p], 0.9)
    with torch.no_grad():
        p.copy_(torch.tensor([1.0, 0.0]))
    avg.update()  # 0.9 * old + 0.1 * new
    assert torch.allclose(avg.shadow[0], torch.tensor([0.1, 9.0]))
    avg.swap()
    assert torch.allclose(p, torch.tensor([0.1, 9.0]))
    avg.swap()
    assert torch.allclose(p, torch.tensor([1.0, 0.0]))
    with pytest.raises(ValueError, match="decay"):
        WeightAverage([p], 1.0)


def _fit_line(ema: float) -> tuple[list[float], float, int]:
    """Fit w in y = w * x towards 1 from 0; return the weights validation saw, the kept weight
    and the best epoch."""
    model = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(0.0)
    seen: list[float] = []

    def validate() -> dict[str, float]:
        seen.append(model.weight.item())
        return {"ndcg@10": -abs(seen[-1] - 1.0)}  # best when the weight reaches 1

    def batches(_):
        for _ in range(20):
            yield (torch.ones(4, 1),)

    def loss_fn(x):
        return ((model(x) - 1.0) ** 2).mean()

    res = fit(model, model.parameters(), name="t", batches=batches, n_batches=20,
              loss_fn=loss_fn, validate=validate, lr=0.02, max_epochs=3, patience=3,
              warmup_steps=1, grad_clip=0.0, ema=ema)
    return seen, model.weight.item(), res.best_epoch


def test_fit_with_ema_validates_and_keeps_the_averaged_weights():
    raw, _, _ = _fit_line(0.0)
    averaged, kept, best = _fit_line(0.9)
    # The weight climbs from 0 towards 1, so its average trails it at every validation.
    assert all(a < r for a, r in zip(averaged, raw, strict=True))
    assert kept == pytest.approx(averaged[best - 1])  # what was validated is what is kept
