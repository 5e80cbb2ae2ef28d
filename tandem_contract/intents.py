"""The student's intent head read as the request needs it: the top intents and their weights."""

from __future__ import annotations

import numpy as np


def top_intents(intent_logits: np.ndarray, m: int) -> tuple[np.ndarray, np.ndarray]:
    """The m most likely intent tokens (ids >= 1) with softmax weights that sum to 1."""
    logits = intent_logits[1:]  # token 0 is padding
    idx = (-logits).argsort()[:m]
    top = logits[idx]
    # Best first, so top[0] is the max without a pass over it; argsort puts NaN last, so when
    # one was taken (top[-1] is NaN) the max is taken as before (NaN).
    w = np.exp(top - (top[0] if len(top) and top[-1] == top[-1] else top.max()))
    w /= w.sum()
    return idx + 1, w.astype(np.float32, copy=False)
