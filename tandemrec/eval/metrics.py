"""Ranking metrics for next-item recommendation (leave-one-out, full ranking); pure numpy.

Tie rule (everywhere in this module): pessimistic. The 0-based rank of the target is the
number of competing items whose score is >= the target's score, so a model that gives many
items the same score cannot look good by accident. NaN scores also count against the target
(a NaN competitor beats it; a NaN target is beaten by every competitor).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

import numpy as np
import numpy.typing as npt

# Rank given to a target that is absent from a candidate list: larger than any cutoff k,
# yet small enough that rank + 2 cannot overflow int64.
MISS_RANK: Final[int] = int(np.iinfo(np.int32).max)

DEFAULT_CHUNK: Final[int] = 1024

ItemLists = Sequence[npt.ArrayLike]


def _check_ids(n_users: int, n_cols: int, targets: np.ndarray, exclude: ItemLists | None) -> None:
    """Validate target shape and range and the number of exclusion lists."""
    if targets.shape != (n_users,):
        raise ValueError(f"targets must have shape ({n_users},), got {targets.shape}")
    if n_users and (targets.min() < 1 or targets.max() >= n_cols):
        raise ValueError(f"target ids must lie in 1..{n_cols - 1} (column 0 is padding)")
    if exclude is not None and len(exclude) != n_users:
        raise ValueError(f"exclude has {len(exclude)} entries for {n_users} users")


def _check_inputs(
    scores: np.ndarray, targets: np.ndarray, exclude: ItemLists | None
) -> tuple[int, int]:
    """Validate shapes and id ranges; return (n_users, n_cols) where n_cols = n_items + 1."""
    if scores.ndim != 2:
        raise ValueError(f"scores must be 2-D (n_users, n_items+1), got shape {scores.shape}")
    n_users, n_cols = scores.shape
    _check_ids(n_users, n_cols, targets, exclude)
    return n_users, n_cols


def _non_competitors(
    exclude: ItemLists | None, start: int, stop: int, n_cols: int
) -> tuple[np.ndarray, np.ndarray]:
    """(row, item) index pairs of excluded items for users start..stop-1 (rows chunk-local)."""
    if exclude is None:
        empty = np.empty(0, dtype=np.int64)
        return empty, empty
    lists = [np.asarray(e).ravel() for e in exclude[start:stop]]
    lens = np.fromiter((a.size for a in lists), dtype=np.int64, count=len(lists))
    if not lens.sum():
        empty = np.empty(0, dtype=np.int64)
        return empty, empty
    items = np.concatenate(lists).astype(np.int64, copy=False)
    if items.min() < 0 or items.max() >= n_cols:
        raise ValueError(f"excluded item ids must lie in 0..{n_cols - 1}")
    rows = np.repeat(np.arange(stop - start), lens)
    return rows, items


def target_ranks(
    scores: npt.ArrayLike,
    targets: npt.ArrayLike,
    exclude: ItemLists | None = None,
    *,
    chunk_size: int = DEFAULT_CHUNK,
) -> np.ndarray:
    """0-based full-ranking rank of each user's target (pessimistic ties), int64 (n_users,).

    Competitors are items 1..n_items minus the padding column, the target itself and the
    user's excluded items (history); listing the target in ``exclude`` has no effect.
    Users are processed ``chunk_size`` rows at a time to bound the boolean temporaries.
    """
    s = np.asarray(scores)
    t = np.asarray(targets, dtype=np.int64)
    n_users, n_cols = _check_inputs(s, t, exclude)
    if chunk_size < 1:
        raise ValueError("chunk_size must be >= 1")
    ranks = np.empty(n_users, dtype=np.int64)
    for start in range(0, n_users, chunk_size):
        stop = min(start + chunk_size, n_users)
        block = s[start:stop]
        local = np.arange(stop - start)
        tgt = t[start:stop]
        # not(score < target) == (score >= target) for numbers, and is True for NaN either side.
        beats = np.less(block, block[local, tgt][:, None])
        np.logical_not(beats, out=beats)
        beats[:, 0] = False
        rows, items = _non_competitors(exclude, start, stop, n_cols)
        beats[rows, items] = False
        beats[local, tgt] = False
        ranks[start:stop] = np.count_nonzero(beats, axis=1)
    return ranks


def metrics_from_ranks(ranks: npt.ArrayLike, ks: Sequence[int] = (5, 10, 20)) -> dict[str, float]:
    """HR@k, NDCG@k (1/log2(rank+2)) and MRR@k (1/(rank+1)) averaged over users, plus n_users."""
    r = np.asarray(ranks)
    if r.ndim != 1 or r.size == 0:
        raise ValueError("ranks must be a non-empty 1-D array")
    if np.any(r < 0):
        raise ValueError("ranks must be >= 0")
    out: dict[str, float] = {}
    for k in ks:
        if k < 1:
            raise ValueError(f"cutoff k must be >= 1, got {k}")
        hit = r < k
        # Clip before the formulas so miss sentinels never reach the arithmetic.
        rr = np.minimum(r, k).astype(np.float64)
        out[f"hr@{k}"] = float(hit.mean())
        out[f"ndcg@{k}"] = float(np.where(hit, 1.0 / np.log2(rr + 2.0), 0.0).mean())
        out[f"mrr@{k}"] = float(np.where(hit, 1.0 / (rr + 1.0), 0.0).mean())
    out["n_users"] = int(r.size)
    return out


def sample_negatives(
    n_items: int,
    targets: npt.ArrayLike,
    exclude: ItemLists | None,
    n_negatives: int = 100,
    seed: int = 0,
    *,
    chunk_size: int = DEFAULT_CHUNK,
) -> np.ndarray:
    """(n_users, n_negatives) item ids drawn uniformly without replacement per user.

    Never the padding id 0, the user's target or anything in the user's ``exclude`` list.
    Each row keeps the n_negatives allowed items with the smallest iid uniform keys, which is
    a uniform draw without replacement; keys come from one generator in user order, so the
    result depends only on ``seed`` (not on ``chunk_size``).
    """
    t = np.asarray(targets, dtype=np.int64)
    n_cols = n_items + 1
    if t.ndim != 1:
        raise ValueError(f"targets must be 1-D, got shape {t.shape}")
    n_users = t.shape[0]
    _check_ids(n_users, n_cols, t, exclude)
    if n_negatives < 1 or chunk_size < 1:
        raise ValueError("n_negatives and chunk_size must be >= 1")
    rng = np.random.default_rng(seed)
    out = np.empty((n_users, n_negatives), dtype=np.int64)
    for start in range(0, n_users, chunk_size):
        stop = min(start + chunk_size, n_users)
        local = np.arange(stop - start)
        keys = rng.random((stop - start, n_cols))
        keys[:, 0] = np.inf
        rows, items = _non_competitors(exclude, start, stop, n_cols)
        keys[rows, items] = np.inf
        keys[local, t[start:stop]] = np.inf
        available = np.count_nonzero(np.isfinite(keys), axis=1)
        short = np.flatnonzero(available < n_negatives)
        if short.size:
            u = start + int(short[0])
            raise ValueError(
                f"user {u} has only {available[short[0]]} allowed negatives, need {n_negatives}"
            )
        picked = np.argpartition(keys, n_negatives - 1, axis=1)[:, :n_negatives]
        out[start:stop] = np.sort(picked, axis=1)
    return out


def sampled_ranks(
    scores: npt.ArrayLike,
    targets: npt.ArrayLike,
    exclude: ItemLists | None,
    n_negatives: int = 100,
    seed: int = 0,
    *,
    chunk_size: int = DEFAULT_CHUNK,
) -> np.ndarray:
    """Rank of the target among n_negatives sampled items (0..n_negatives), pessimistic ties.

    FOR COMPARISON WITH PUBLISHED NUMBERS ONLY: sampled metrics are biased upwards and can
    reorder models (Krichene & Rendle, 2020); report full-ranking ``target_ranks`` as primary.
    """
    s = np.asarray(scores)
    t = np.asarray(targets, dtype=np.int64)
    n_users, n_cols = _check_inputs(s, t, exclude)
    negs = sample_negatives(n_cols - 1, t, exclude, n_negatives, seed, chunk_size=chunk_size)
    tgt = s[np.arange(n_users), t]
    neg_scores = np.take_along_axis(s, negs, axis=1)
    return np.count_nonzero(~(neg_scores < tgt[:, None]), axis=1).astype(np.int64)
