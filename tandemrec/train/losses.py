"""Catalog-wide softmax losses with a hand-written gradient, in as few passes as possible.

Every training stage ends in an (M, N+1) score matrix: M kept positions by the whole catalog.
On a 2-core CPU the elementwise passes over that matrix (log-softmax, its backward, the sum of
two losses' gradients), not the matmuls, are most of a step. The gradient of softmax
cross-entropy is known in closed form (softmax minus target), so it is computed in the forward
pass from one exp of the scores and kept for backward, with the same values and gradients as
autograd over `cross_entropy` + `logsumexp` (bench/loss_speed.py: 1.3x to 1.8x faster here).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class SoftTargets:
    """A teacher distribution per row at `temperature`: top-K (idx, p) or dense (M, N+1) p."""

    p: torch.Tensor  # (M, K) probabilities over idx, or (M, N+1) over the whole catalog
    idx: torch.Tensor | None = None  # (M, K) item ids; None when p is dense
    temperature: float = 1.0
    weight: float = 1.0


def _loss_and_grad(scores: torch.Tensor, y: torch.Tensor, w_item: float,
                   soft: SoftTargets | None, m_rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of the rows' losses, d(mean loss over m_rows)/d scores) for a block of rows."""
    n = scores.shape[0]
    peak = scores.max(-1, keepdim=True).values  # (M, 1)
    q1 = scores - peak
    q1.exp_()
    z1 = q1.sum(-1, keepdim=True)
    lse1 = (peak + z1.log()).squeeze(1)  # (M,)
    q1.div_(z1)  # softmax(s), in place: (M, N+1)
    per_row = w_item * (lse1 - scores.gather(1, y[:, None])[:, 0])
    if soft is None or not soft.weight:
        grad = q1.mul_(w_item / m_rows)
    else:
        t, w = soft.temperature, soft.weight
        if t == 1.0:
            lse_t = lse1
            grad = q1.mul_((w_item + w) / m_rows)
        else:
            q_t = (scores - peak).div_(t).exp_()
            z_t = q_t.sum(-1, keepdim=True)
            lse_t = (peak / t + z_t.log()).squeeze(1)
            grad = q1.mul_(w_item / m_rows).add_(q_t.div_(z_t), alpha=w * t / m_rows)
        picked = scores if soft.idx is None else scores.gather(1, soft.idx)
        per_row = per_row + w * t * t * (lse_t - (soft.p * picked).sum(-1) / t)
        if soft.idx is None:
            grad.sub_(soft.p, alpha=w * t / m_rows)
        else:
            grad.scatter_add_(1, soft.idx, soft.p * (-w * t / m_rows))
    grad.scatter_add_(1, y[:, None], scores.new_full((n, 1), -w_item / m_rows))
    return per_row.sum(), grad


class _CatalogLoss(torch.autograd.Function):
    """w_item * CE(scores, y) + w_kd * T^2 * CE(teacher_T, softmax(scores / T)), row mean."""

    @staticmethod
    def forward(ctx, scores: torch.Tensor, y: torch.Tensor,
                w_item: float, soft: SoftTargets | None) -> torch.Tensor:
        total, grad = _loss_and_grad(scores, y, w_item, soft, scores.shape[0])
        ctx.save_for_backward(grad)
        return total / scores.shape[0]

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        (grad,) = ctx.saved_tensors
        return grad * g, None, None, None


def catalog_loss(scores: torch.Tensor, y: torch.Tensor, w_item: float = 1.0,
                 soft: SoftTargets | None = None) -> torch.Tensor:
    """Next-item cross-entropy over the catalog plus an optional distillation term.

    scores (M, N+1) logits, y (M,) true next items. With `soft`, adds
    weight * T^2 * KL(teacher || softmax(scores / T)) up to the teacher's entropy (Hinton et
    al., 2015), where the teacher is top-K (renormalised) or a full distribution.
    """
    if scores.dim() != 2 or y.shape != scores.shape[:1]:
        raise ValueError(f"scores must be (M, N+1) and y (M,), got {tuple(scores.shape)} "
                         f"and {tuple(y.shape)}")
    return _CatalogLoss.apply(scores, y, w_item, soft)


def _rows(soft: SoftTargets | None, sl: slice) -> SoftTargets | None:
    if soft is None:
        return None
    return SoftTargets(p=soft.p[sl], idx=None if soft.idx is None else soft.idx[sl],
                       temperature=soft.temperature, weight=soft.weight)


class _ChunkedHeadLoss(torch.autograd.Function):
    """catalog_loss(scale * h @ vecs.T + bias, y, w_item, soft), `chunk` rows at a time."""

    @staticmethod
    def forward(ctx, h: torch.Tensor, vecs: torch.Tensor, bias: torch.Tensor,
                y: torch.Tensor, scale: float, w_item: float, soft: SoftTargets | None,
                chunk: int, mm_dtype: torch.dtype | None) -> torch.Tensor:
        m_rows = h.shape[0]
        hs = h * scale  # (M, D)
        g_h, g_vecs, g_bias = torch.empty_like(h), torch.zeros_like(vecs), torch.zeros_like(bias)
        total = h.new_zeros(())
        # Low-precision copies for the three products; scores and gradients stay float32.
        hs_mm = hs if mm_dtype is None else hs.to(mm_dtype)
        vecs_mm = vecs if mm_dtype is None else vecs.to(mm_dtype)
        for i in range(0, m_rows, chunk):
            sl = slice(i, i + chunk)
            if mm_dtype is None:
                scores = torch.addmm(bias, hs[sl], vecs.T)  # (c, N+1): stays in cache
            else:
                scores = (hs_mm[sl] @ vecs_mm.T).float().add_(bias)
            part, grad = _loss_and_grad(scores, y[sl], w_item, _rows(soft, sl), m_rows)
            total += part
            if mm_dtype is None:
                torch.mm(grad, vecs, out=g_h[sl])
                g_vecs.addmm_(grad.T, hs[sl])
            else:
                grad_mm = grad.to(mm_dtype)
                g_h[sl] = grad_mm @ vecs_mm
                g_vecs += grad_mm.T @ hs_mm[sl]
            g_bias += grad.sum(0)
        ctx.save_for_backward(g_h.mul_(scale), g_vecs, g_bias)
        return total / m_rows

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        g_h, g_vecs, g_bias = ctx.saved_tensors
        return g_h * g, g_vecs * g, g_bias * g, None, None, None, None, None, None


def chunked_head_loss(h: torch.Tensor, vecs: torch.Tensor, bias: torch.Tensor, y: torch.Tensor,
                      scale: float, w_item: float = 1.0, soft: SoftTargets | None = None,
                      chunk: int = 0, mm_dtype: torch.dtype | None = None) -> torch.Tensor:
    """An item head and `catalog_loss` fused, without the (M, N+1) score matrix.

    h (M, D) hidden states, vecs (N+1, D) item vectors, bias (N+1,), y (M,) true next items;
    `soft` holds one teacher row per row of h. Same value and gradients as
    `catalog_loss(scale * h @ vecs.T + bias, y, w_item, soft)`, but each chunk's scores are
    exponentiated, normalised and turned into gradients while they are still in cache, instead
    of in passes over a matrix of hundreds of megabytes (bench/loss_speed.py). `mm_dtype`
    (e.g. torch.bfloat16) runs the three matrix products in that dtype (train/precision.py).
    `chunk`: rows per block; by default 1024 on a CPU (a block stays in cache) and on a GPU
    enough for about 2^26 scores (fewer, larger kernels).
    """
    if h.dim() != 2 or vecs.shape[1] != h.shape[1] or y.shape != h.shape[:1]:
        raise ValueError(f"h must be (M, D), vecs (N+1, D) and y (M,), got {tuple(h.shape)}, "
                         f"{tuple(vecs.shape)} and {tuple(y.shape)}")
    if not chunk:
        chunk = 1024 if h.device.type == "cpu" else max(1024, 2**26 // vecs.shape[0])
    with torch.autocast(h.device.type, enabled=False):  # the dtypes here are chosen by mm_dtype
        return _ChunkedHeadLoss.apply(h, vecs, bias, y, scale, w_item, soft, chunk, mm_dtype)
