"""The student's intent head read as the request needs it: the top intents and their weights."""

from __future__ import annotations

import numpy as np


def top_intents(intent_logits: np.ndarray, m: int) -> tuple[np.ndarray, np.ndarray]:
    """The m most likely intent tokens (ids >= 1) with softmax weights that sum to 1."""
    logits = intent_logits[1:]  # token 0 is padding
    idx = (-logits).argsort()[:m]
    top = logits[idx]
    w = np.exp(top - top.max())
    w /= w.sum()
    return idx + 1, w.astype(np.float32, copy=False)
