"""What the models read: item-id histories, left-padded to one length (training and serving)."""

from __future__ import annotations

import numpy as np
import torch


def left_pad(seqs: list[np.ndarray], max_len: int) -> torch.Tensor:
    """Keep the last `max_len` items of each sequence and left-pad with 0 to a common length."""
    t = max(1, min(max_len, max(len(s) for s in seqs)))
    out = np.zeros((len(seqs), t), dtype=np.int64)
    for r, s in enumerate(seqs):
        s = s[-t:]
        if len(s):
            out[r, t - len(s):] = s
    return torch.from_numpy(out)
