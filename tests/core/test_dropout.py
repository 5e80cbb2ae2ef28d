"""The CPU dropout: the drop rate it promises, inverted scaling, identity in eval mode."""

import pytest
import torch

from tandemrec.models.dropout import Dropout, fast_dropout, keep_mask

pytestmark = pytest.mark.core


@pytest.mark.parametrize("p", [0.1, 0.2, 0.5])
def test_keep_mask_drops_the_requested_share(p):
    torch.manual_seed(0)
    mask = keep_mask(torch.Size([400, 1001]), p)  # an odd count: the last 64-bit word is cut
    # 400k Bernoulli draws: the standard error of the share is under 0.001.
    assert abs((~mask).float().mean().item() - p) < 0.005
    # Each of the four 16-bit lanes of a random word is uniform (all 64 bits are drawn).
    lanes = (~mask).flatten()[:400_000].view(-1, 4).float().mean(0)
    assert torch.allclose(lanes, torch.full((4,), p), atol=0.01)


def test_kept_values_are_scaled_and_the_gradient_follows_the_mask():
    torch.manual_seed(1)
    x = torch.randn(64, 50, requires_grad=True)
    y = fast_dropout(x, 0.25, training=True)
    kept = y != 0
    assert torch.allclose(y[kept], x[kept] / 0.75)
    y.sum().backward()
    assert torch.allclose(x.grad, kept.float() / 0.75)


def test_eval_mode_and_zero_rate_are_the_identity():
    x = torch.randn(8, 5)
    layer = Dropout(0.3).eval()
    assert layer(x) is x
    assert fast_dropout(x, 0.0, training=True) is x


def test_the_mask_is_reproducible_under_a_seed():
    torch.manual_seed(7)
    a = keep_mask(torch.Size([1000]), 0.2)
    torch.manual_seed(7)
    assert torch.equal(a, keep_mask(torch.Size([1000]), 0.2))
