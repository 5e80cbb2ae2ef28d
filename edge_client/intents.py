"""Fuse the cloud's teacher scores with the device's own scores over the returned candidates."""

from __future__ import annotations

import numpy as np


def log_softmax(x: np.ndarray) -> np.ndarray:
    z = x - x.max()
    return z - np.log(np.exp(z).sum())


def top_intents(intent_logits: np.ndarray, m: int) -> tuple[np.ndarray, np.ndarray]:
    """The m most likely intent tokens (ids >= 1) with softmax weights that sum to 1."""
    logits = intent_logits[1:]  # token 0 is padding
    idx = np.argsort(-logits)[:m]
    w = np.exp(logits[idx] - logits[idx].max())
    return idx + 1, (w / w.sum()).astype(np.float32)


def fuse(candidates: np.ndarray, teacher_scores: np.ndarray, device_scores: np.ndarray,
         weight: float, exclude: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Rerank candidates by weight * teacher + (1 - weight) * device log-probabilities.

    Both score sets are normalised over the same candidate list, so neither model's scale
    dominates; items in `exclude` (the private history) are dropped. Returns (items, scores)
    best first. `device_scores` is the student's score vector over the whole item table.
    """
    fused = weight * log_softmax(teacher_scores) + (1 - weight) * log_softmax(
        device_scores[candidates])
    keep = np.ones(len(candidates), dtype=bool) if exclude is None else ~np.isin(candidates,
                                                                                  exclude)
    order = np.argsort(-fused[keep], kind="stable")
    return candidates[keep][order], fused[keep][order]
