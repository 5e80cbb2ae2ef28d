"""Small table students with trained-looking weights, for the tests of the device graph, and
a small random intent vocabulary for the semantic-id student's tests."""

from __future__ import annotations

import numpy as np
import torch

from tandemrec.models.intent_vocab import IntentVocab
from tandemrec.models.student import Student, StudentConfig

N_ITEMS, MAX_LEN = 300, 20
LOW_RANK = {"emb": 8, "layers": [{"qkv": 8, "proj": None, "gate_up": 8, "down": 8}] * 3}


def student(layers: int, ranks: dict | None) -> Student:
    """A table student of `layers` layers (factorised by `ranks`), its weights spread out."""
    torch.manual_seed(layers)
    s = Student(StudentConfig(n_items=N_ITEMS, n_intents=8, d_model=32, n_heads=2,
                              mlp_hidden=64, n_layers=layers, max_len=MAX_LEN, dropout=0.0,
                              ranks=ranks or {}))
    with torch.no_grad():  # trained-looking weights, not the tiny initial ones
        for p in s.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    return s.eval()


def tiny_vocab(levels: list[int], n_items: int) -> IntentVocab:
    """Random semantic ids of `len(levels)` levels for items 1..n_items (row 0: padding)."""
    rng = np.random.default_rng(0)
    codes = np.stack([rng.integers(1, k + 1, n_items + 1) for k in levels], 1)
    codes[0] = 0
    sizes = np.bincount(codes[1:, 0], minlength=levels[0] + 1)
    return IntentVocab(codes=codes, centroids=[rng.normal(size=(k, 4)) for k in levels],
                       labels=["<pad>", *[f"t{t}" for t in range(1, levels[0] + 1)]],
                       sizes=sizes)
