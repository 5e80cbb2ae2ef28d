"""Training losses: the top-K distillation loss and the per-step position sampling."""

import math

import torch
import torch.nn.functional as F

from tandemrec.train.batches import loss_positions
from tandemrec.train.distill import topk_kd_loss


def test_topk_kd_loss_equals_cross_entropy_to_the_teacher_distribution():
    torch.manual_seed(0)
    scores = torch.randn(5, 30)
    t_idx = torch.stack([torch.randperm(29)[:4] + 1 for _ in range(5)])  # (5, 4) real items
    t_logp = torch.randn(5, 4).log_softmax(-1)
    temperature = 2.0
    log_q = (scores / temperature).log_softmax(-1).gather(1, t_idx)
    expected = -(t_logp.exp() * log_q).sum(-1).mean() * temperature**2
    got = topk_kd_loss(scores, t_idx, t_logp, temperature)
    assert torch.allclose(got, expected, atol=1e-5)


def test_topk_kd_loss_by_hand():
    # Two items with equal scores: log q = log(1/2) for each; the teacher puts all mass on one.
    scores = torch.zeros(1, 2)
    got = topk_kd_loss(scores, torch.tensor([[1]]), torch.tensor([[0.0]]), 1.0)
    assert math.isclose(got.item(), math.log(2), rel_tol=1e-6)


def test_loss_positions_keeps_last_position_and_never_padding():
    y = torch.tensor([[0, 0, 3, 4, 5, 6, 7, 8], [1, 2, 3, 4, 5, 6, 7, 9]])
    gen = torch.Generator().manual_seed(0)
    keep = loss_positions(y, 0.25, gen)
    assert keep[:, -1].all()
    assert not keep[0, :2].any()
    assert torch.equal(loss_positions(y, 1.0), y != 0)


def test_loss_positions_share_is_about_right():
    y = torch.ones(64, 200, dtype=torch.long)
    keep = loss_positions(y, 0.3, torch.Generator().manual_seed(1))
    share = keep[:, :-1].float().mean().item()
    assert 0.27 < share < 0.33


def test_sampled_teacher_loss_at_share_one_is_the_full_loss():
    from tandemrec.models.teacher import Teacher, TeacherConfig
    from tandemrec.train.teacher import next_item_loss, sampled_position_loss

    torch.manual_seed(0)
    model = Teacher(TeacherConfig(n_items=20, text_dim=0, d_model=16, n_layers=1, n_heads=2,
                                  mlp_hidden=32, max_len=8, dropout=0.0))
    x = torch.tensor([[0, 1, 2, 3], [4, 5, 6, 7]])
    y = torch.tensor([[0, 2, 3, 4], [5, 6, 7, 8]])
    h = model.hidden(x)
    full = next_item_loss(model.scores(h), y)
    sampled = sampled_position_loss(model, h, y, 1.0, torch.Generator())
    assert torch.allclose(full, sampled, atol=1e-6)
    assert torch.allclose(F.cross_entropy(model.scores(h[:, -1]), y[:, -1]),
                          sampled_position_loss(model, h, y, 0.0, torch.Generator()), atol=1e-6)
