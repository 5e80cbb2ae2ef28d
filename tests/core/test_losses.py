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


def _grads(fn, scores):
    s = scores.clone().requires_grad_()
    loss = fn(s)
    loss.backward()
    return loss.detach(), s.grad


def test_catalog_loss_matches_autograd_for_cross_entropy_and_top_k_distillation():
    from tandemrec.train.losses import SoftTargets, catalog_loss

    torch.manual_seed(0)
    scores, y = torch.randn(6, 40, dtype=torch.float64), torch.randint(1, 40, (6,))
    t_idx = torch.stack([torch.randperm(39)[:5] + 1 for _ in range(6)])
    t_logp = torch.randn(6, 5, dtype=torch.float64).log_softmax(-1)
    for temperature in (1.0, 2.0):
        def reference(s, t=temperature):
            return 0.7 * topk_kd_loss(s, t_idx, t_logp, t) + F.cross_entropy(s, y)

        soft = SoftTargets(p=t_logp.exp(), idx=t_idx, temperature=temperature, weight=0.7)
        want, want_grad = _grads(reference, scores)
        got, got_grad = _grads(lambda s, soft=soft: catalog_loss(s, y, 1.0, soft), scores)
        assert torch.allclose(got, want, atol=1e-10)
        assert torch.allclose(got_grad, want_grad, atol=1e-10)


def test_catalog_loss_with_a_dense_teacher_and_alone():
    from tandemrec.train.losses import SoftTargets, catalog_loss

    torch.manual_seed(1)
    scores, y = torch.randn(4, 12, dtype=torch.float64), torch.randint(1, 12, (4,))
    ref = torch.randn(4, 12, dtype=torch.float64)

    def reference(s):
        kl = F.kl_div(s.log_softmax(-1), ref.log_softmax(-1), log_target=True,
                      reduction="batchmean")
        return kl + 0.5 * F.cross_entropy(s, y)

    soft = SoftTargets(p=ref.softmax(-1))
    want, want_grad = _grads(reference, scores)
    got, got_grad = _grads(lambda s: catalog_loss(s, y, 0.5, soft), scores)
    entropy = -(ref.softmax(-1) * ref.log_softmax(-1)).sum(-1).mean()
    assert torch.allclose(got - entropy, want, atol=1e-10)  # KL = CE - teacher entropy
    assert torch.allclose(got_grad, want_grad, atol=1e-10)
    plain, plain_grad = _grads(lambda s: catalog_loss(s, y), scores)
    want, want_grad = _grads(lambda s: F.cross_entropy(s, y), scores)
    assert torch.allclose(plain, want, atol=1e-10) and torch.allclose(plain_grad, want_grad)


def test_catalog_loss_by_hand():
    from tandemrec.train.losses import catalog_loss

    # Two items with equal scores: CE = log 2; gradient = (softmax - onehot) = (-1/2, 1/2).
    s = torch.zeros(1, 2, requires_grad=True)
    loss = catalog_loss(s, torch.tensor([0]))
    loss.backward()
    assert math.isclose(loss.item(), math.log(2), rel_tol=1e-6)
    assert torch.allclose(s.grad, torch.tensor([[-0.5, 0.5]]))


def test_distillation_scores_only_positions_with_teacher_targets():
    import numpy as np

    from tandemrec.data.types import LeaveOneOutSplit
    from tandemrec.train.distill import TeacherTargets, distill_batches, kd_positions

    train = [np.array([1, 2, 3]), np.array([4, 5, 6, 7, 8, 9]), np.array([2, 7])]
    ones = np.array([1, 1, 1])
    split = LeaveOneOutSplit(train=train, eval_users=np.arange(3), valid_input=train,
                             valid_target=ones, test_input=train, test_target=ones)
    k, max_len = 3, 4
    inputs = [s[-(max_len + 1):-1] for s in train]
    logp = [np.log(np.full((len(s), k), 1 / k, dtype=np.float16)) for s in inputs]
    idx = [np.ones((len(s), k), dtype=np.int32) for s in inputs]
    for x, y, t_idx, t_logp in distill_batches(split, TeacherTargets(idx, logp), max_len, 8,
                                               np.random.default_rng(0)):
        keep = kd_positions(x, y, 1.0)
        assert torch.allclose(t_logp[keep].exp().sum(-1), torch.ones(int(keep.sum())),
                              atol=1e-2)
        assert (t_idx[keep] > 0).all()
        # The only target dropped is the first item of a history shorter than the window.
        assert int(((y != 0) & ~keep).sum()) == sum(len(s) <= max_len for s in train)


def test_chunked_head_loss_matches_catalog_loss_in_value_and_gradients():
    from tandemrec.train.losses import SoftTargets, catalog_loss, chunked_head_loss

    torch.manual_seed(2)
    h = torch.randn(37, 8, dtype=torch.float64)
    vecs, bias = torch.randn(20, 8, dtype=torch.float64), torch.randn(20, dtype=torch.float64)
    y = torch.randint(1, 20, (37,))
    t_idx = torch.stack([torch.randperm(19)[:4] + 1 for _ in range(37)])
    t_p = torch.randn(37, 4, dtype=torch.float64).softmax(-1)
    dense = torch.randn(37, 20, dtype=torch.float64).softmax(-1)
    for soft in (None, SoftTargets(p=t_p, idx=t_idx, temperature=2.0, weight=0.7),
                 SoftTargets(p=dense, temperature=1.0, weight=0.5)):
        grads = []
        for fn in (lambda a, v, b, s=soft: catalog_loss((a * 0.3) @ v.T + b, y, 0.6, s),
                   lambda a, v, b, s=soft: chunked_head_loss(a, v, b, y, 0.3, 0.6, s, chunk=5)):
            params = [t.clone().requires_grad_() for t in (h, vecs, bias)]  # 37 = 7 * 5 + 2 rows
            loss = fn(*params)
            (2.0 * loss).backward()  # an upstream factor must reach every gradient
            grads.append([loss.detach()] + [p.grad for p in params])
        for want, got in zip(*grads, strict=True):
            assert torch.allclose(got, want, atol=1e-12)


def test_chunked_head_loss_by_hand_and_rejects_bad_shapes():
    import pytest

    from tandemrec.train.losses import chunked_head_loss

    # Zero vectors and bias: every item scores 0, so CE = log(N+1) whatever the target.
    loss = chunked_head_loss(torch.ones(3, 4), torch.zeros(5, 4), torch.zeros(5),
                           torch.tensor([1, 2, 4]), 1.0, chunk=2)
    assert math.isclose(loss.item(), math.log(5), rel_tol=1e-6)
    with pytest.raises(ValueError, match="vecs"):
        chunked_head_loss(torch.ones(3, 4), torch.zeros(5, 3), torch.zeros(5), torch.ones(3), 1.0)


def test_chunked_head_loss_in_bf16_stays_close_to_float32():
    from tandemrec.train.losses import chunked_head_loss

    torch.manual_seed(3)
    h, vecs, bias = torch.randn(300, 32), torch.randn(500, 32), torch.randn(500)
    y = torch.randint(1, 500, (300,))
    out = []
    for mm_dtype in (None, torch.bfloat16):
        params = [t.clone().requires_grad_() for t in (h, vecs, bias)]
        loss = chunked_head_loss(*params, y, 32**-0.5, chunk=64, mm_dtype=mm_dtype)
        loss.backward()
        assert all(p.grad.dtype == torch.float32 for p in params)
        out.append([loss.detach()] + [p.grad for p in params])
    for want, got in zip(*out, strict=True):
        # bf16 keeps 8 bits of mantissa: products are good to ~1%, not to float32's 1e-7.
        assert (got - want).norm() / want.norm() < 2e-2
    assert not torch.equal(out[0][1], out[1][1])  # the bf16 path was really taken


def test_precision_setting_is_checked_by_name():
    import pytest

    from tandemrec.train.precision import matmul_dtype

    assert matmul_dtype("fp32") is None
    assert matmul_dtype("bf16") in (torch.bfloat16, None)  # None where the CPU lacks bf16
    with pytest.raises(ValueError, match="fp32"):
        matmul_dtype("fp16")
