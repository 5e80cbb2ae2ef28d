"""Start the semantic-id student from the compressed table student (`student.sid_init: table`).

The two students share their decoder, normalisation and intent head (models/sid_student.py);
only the item table differs. So the table student's decoder, position embeddings and intent
head are copied as they are, low-rank layers included, and its item table E (N+1, D) and item
bias b (N+1,) are projected onto the code table: the code rows X (V, D) and row biases c (V,)
whose sums over each item's rows best reproduce them,

    min_X  sum over known items i of w_i || sum_r in rows(i) X[r] - E[i] ||^2 + ridge ||X||^2,

a sparse least-squares problem (A (N, V) has one 1 per level of each item's semantic id),
solved by conjugate gradient on its normal equations without building A. The shared part of
the items' vectors lands on the codes (many items per row) and what is left on the hash rows;
the weights w_i (student.sid_weighting) keep the frequent targets best. `compress.sid_finetune`
may then align the projected student to the table one (train/distill_sid.finetune_sid_student),
as the SVD student is aligned after its factorisation (OD-LLM, Yin et al., 2026). It pays off
while the rows are about as many as the items (docs/semantic-ids.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from tandemrec.models.intent_vocab import IntentVocab
from tandemrec.models.sid_student import SidStudent, SidStudentConfig
from tandemrec.models.student import Student
from tandemrec.train.distill import known_items
from tandemrec.train.distill_sid import level_sizes, sid_catalog


@dataclass(frozen=True)
class Projection:
    """How well the code table reproduces the table student's item vectors and biases."""

    vector_r2: float  # explained share of the known items' vectors' energy around their mean
    bias_r2: float
    iterations: int


def row_sums(x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """A x: (V, C) row values, (M, L') rows of M items -> (M, C) each item's sum over its rows,
    padding (row 0) left out."""
    return (x[rows] * (rows != 0)[..., None]).sum(1)


def fit_code_rows(rows: torch.Tensor, targets: torch.Tensor, n_rows: int, ridge: float = 1e-3,
                  weights: torch.Tensor | None = None, tol: float = 1e-14,
                  max_iter: int = 1000) -> tuple[torch.Tensor, int]:
    """(M, L') rows of M items, (M, C) targets -> (X (n_rows, C), iterations): the ridge
    least-squares rows whose sums per item reproduce the targets, each item's error weighted
    by `weights` (M,) when given; row 0 (padding) stays 0."""
    mask = (rows != 0).reshape(-1)
    w = (torch.ones(rows.shape[0], dtype=torch.float64) if weights is None
         else weights.to(torch.float64))[:, None]
    flat, width = rows.reshape(-1), rows.shape[1]

    def scatter(y: torch.Tensor) -> torch.Tensor:  # A^T y: (M, C) -> (V, C)
        spread = y[:, None, :].expand(-1, width, -1).reshape(-1, y.shape[1])
        return torch.zeros(n_rows, y.shape[1], dtype=y.dtype).index_add_(0, flat[mask],
                                                                          spread[mask])

    def normal(x: torch.Tensor) -> torch.Tensor:  # (A^T W A + ridge I) x, row 0 held at 0
        out = scatter(w * row_sums(x, rows)) + ridge * x
        out[0] = 0.0
        return out

    # Conjugate gradient, every target column at once with its own step sizes.
    t = targets.to(torch.float64)
    x = torch.zeros(n_rows, t.shape[1], dtype=torch.float64)
    r = scatter(w * t)
    r[0] = 0.0
    p, rs = r.clone(), (r * r).sum(0)
    stop = tol * rs.clamp(min=1e-30)
    for it in range(1, max_iter + 1):
        q = normal(p)
        alpha = rs / (p * q).sum(0).clamp(min=1e-30)
        x += alpha * p
        r -= alpha * q
        rs_new = (r * r).sum(0)
        if bool((rs_new <= stop).all()):
            return x.to(targets.dtype), it
        p = r + (rs_new / rs.clamp(min=1e-30)) * p
        rs = rs_new
    return x.to(targets.dtype), max_iter


def _r2(fit: torch.Tensor, target: torch.Tensor) -> float:
    """Explained share of the target's energy around its mean."""
    centred = target - target.mean(0, keepdim=True)
    return float(1.0 - (fit - target).pow(2).sum() / centred.pow(2).sum().clamp(min=1e-12))


def sid_from_table(table: Student, vocab: IntentVocab, hash_buckets: int,
                   exclude: np.ndarray | None = None, weights: np.ndarray | None = None,
                   hash_count: int = 1) -> tuple[SidStudent, Projection]:
    """A semantic-id student with the table student's decoder and intent head, and the code
    table projected from its item table over the items it knows (all but `exclude`, bool
    (N+1,)), each item's error weighted by `weights` (N+1,) when given."""
    tc = table.cfg
    layers = (tc.ranks or {}).get("layers")
    cfg = SidStudentConfig(level_sizes=level_sizes(vocab), hash_buckets=hash_buckets,
                           hash_count=hash_count, ranks={"layers": layers} if layers else {},
                           **tc.shape())
    student = SidStudent(cfg)
    for part in ("in_norm", "decoder", "intent_head"):
        getattr(student, part).load_state_dict(getattr(table, part).state_dict())
    known = known_items(vocab.n_items, exclude)
    rows = torch.from_numpy(sid_catalog(vocab, hash_buckets, hash_count)[known])  # (M, L')
    ids = torch.from_numpy(np.flatnonzero(known))
    with torch.no_grad():
        # The vectors and the bias in one solve: each column takes its own CG steps.
        target = torch.cat([table.items.dense()[ids], table.out_bias[ids][:, None]], 1)
        w = None if weights is None else torch.from_numpy(np.asarray(weights)[known])
        x, iterations = fit_code_rows(rows, target, cfg.n_rows, weights=w)  # (V, D+1)
        student.items.weight_t.copy_(x[:, :-1].T)
        student.out_bias.copy_(x[:, -1])
        fit = row_sums(x, rows)
        report = Projection(_r2(fit[:, :-1], target[:, :-1]), _r2(fit[:, -1:], target[:, -1:]),
                            iterations)
    return student, report
