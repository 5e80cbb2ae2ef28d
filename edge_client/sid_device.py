"""The device side with the semantic-id student: its input, its answer checks, its rankings.

The student reads each history event through the event's semantic id, which the device stores
with the event (from the cloud's answer the user picked the item from, or from the app). An
event without one, or with one that does not fit the bundle's levels, is kept in the history
(nothing already seen is shown again) but skipped in the model's input and in the coarse
history sent upstream: the device cannot tell what it was.

With the cloud, the device knows the items it has semantic ids for, the cloud's answer and the
pool of its previous answer, except those the answer flags as newer than its model (unknown to
fusion, as for the table student); `tandem_contract.semantic_ids.sid_device_side` builds that
view as the offline evaluation does. Without the cloud it ranks that pool alone (sid-edge-only).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edge_client.local_store import SidPool
from edge_client.transport import CloudAnswer, CloudError
from tandem_contract.fusion import CloudCandidates, FusionConfig, fuse, intent_log_probs
from tandem_contract.semantic_ids import SidSpec, score_items, sid_device_side


@dataclass(frozen=True)
class SidHistory:
    """The history as the semantic-id student reads it."""

    items: np.ndarray  # (T,) every event's item id: what ranking excludes
    read: np.ndarray  # (T',) the events with a usable semantic id, oldest first
    codes: np.ndarray  # (T', L) their semantic ids


def usable(sid: tuple[int, ...] | None, spec: SidSpec) -> bool:
    """A stored semantic id this bundle can read: its levels, each code within its level."""
    return sid is not None and len(sid) == spec.levels and all(
        1 <= c <= k for c, k in zip(sid, spec.level_sizes, strict=True))


def sid_history(events: tuple[np.ndarray, list[tuple[int, ...] | None]],
                spec: SidSpec) -> SidHistory:
    """The store's events (item ids and semantic ids) as the student's history."""
    items, sids = events
    keep = [j for j, s in enumerate(sids) if usable(s, spec)]
    codes = np.asarray([sids[j] for j in keep], dtype=np.int64).reshape(len(keep), spec.levels)
    return SidHistory(np.asarray(items, dtype=np.int64), items[keep].astype(np.int64), codes)


def answer_codes(answer: CloudAnswer, spec: SidSpec) -> tuple[np.ndarray, np.ndarray]:
    """The answer's semantic ids (C, L) and new-item flags (C,); a retryable CloudError when
    they are missing, of the wrong length or out of this bundle's ranges."""
    n = len(answer.items)
    try:
        if answer.code_levels != spec.levels:
            raise ValueError(f"{answer.code_levels} semantic-id levels for a bundle of "
                             f"{spec.levels}")
        if len(answer.codes) != n * spec.levels:
            raise ValueError(f"{len(answer.codes)} codes for {n} items of {spec.levels} levels")
        codes = spec.check(np.asarray(answer.codes, dtype=np.int64).reshape(n, spec.levels),
                           "item_codes")
        if len(answer.new) not in (0, n):
            raise ValueError(f"{len(answer.new)} new-item flags for {n} items")
    except (TypeError, ValueError, OverflowError) as exc:
        raise CloudError(f"BAD_RESPONSE: {exc}", code="BAD_RESPONSE", retryable=True) from exc
    new = np.asarray(answer.new, dtype=bool) if len(answer.new) else np.zeros(n, dtype=bool)
    return codes, new


def stored_pool(pool: SidPool | None, spec: SidSpec) -> SidPool | None:
    """The stored pool if this bundle can read its semantic ids (a bundle of other levels
    cannot), else None."""
    if pool is None or pool.codes.shape != (len(pool.items), spec.levels):
        return None
    try:
        spec.check(pool.codes, "pool")
    except ValueError:
        return None
    return pool


def fused(row_scores: np.ndarray, intent_logits: np.ndarray, cloud: CloudCandidates,
          codes: np.ndarray, new: np.ndarray, pool: SidPool | None, history: np.ndarray,
          spec: SidSpec, cfg: FusionConfig) -> tuple[np.ndarray, np.ndarray]:
    """The collaborative ranking over the answer and the device's own top items of its pool."""
    items, all_codes, all_new = cloud.items, codes, new
    if pool is not None and len(pool.items):
        items = np.concatenate([items, pool.items])
        all_codes = np.concatenate([codes, pool.codes])
        all_new = np.concatenate([new, pool.new])
    d, view = sid_device_side(row_scores, items, all_codes, all_new, cloud.catalog_size, spec)
    return fuse(d, intent_log_probs(intent_logits), view, cloud, cfg, exclude=history)


def pool_ranking(row_scores: np.ndarray, pool: SidPool | None, history: np.ndarray,
                 k: int, spec: SidSpec) -> tuple[np.ndarray, np.ndarray]:
    """Edge-only: the pool scored by the student from its semantic ids, history excluded."""
    if pool is None or not len(pool.items):
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
    s = score_items(row_scores, spec.rows(pool.codes, pool.items, pool.new))
    s[np.isin(pool.items, history)] = -np.inf
    finite = np.flatnonzero(np.isfinite(s))
    top = finite[np.argsort(-s[finite], kind="stable")[:k]]
    return pool.items[top], s[top]
