"""A teacher made of several independently trained teachers, scoring by their mean log-probability.

Hinton, Vinyals and Dean (2015, "Distilling the Knowledge in a Neural Network") distil an
ensemble into one small model: members trained from different starts make different errors, and
their averaged distribution is a better next-item ranking and a better soft target than any one
of them. Each member is a `Teacher` (models/teacher.py) over the same catalog; they may differ in
width, dropout or seed. The combination is the geometric mean of the members' next-item
distributions, renormalised, so the output is again a log-probability over the catalog.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from tandemrec.models.teacher import Teacher


class TeacherEnsemble(nn.Module):
    """Mean of the members' log-softmax scores over the whole catalog."""

    def __init__(self, members: Sequence[Teacher]) -> None:
        super().__init__()
        if not members:
            raise ValueError("a teacher ensemble needs at least one member")
        n_items = {m.cfg.n_items for m in members}
        if len(n_items) != 1:
            raise ValueError(f"ensemble members score different catalogs: n_items {n_items}")
        self.members = nn.ModuleList(members)
        # Histories are cut to the shortest window any member reads.
        self.max_len = min(m.cfg.max_len for m in members)

    def forward(self, seq: torch.Tensor, coarse: bool = False) -> torch.Tensor:
        """(B, T) item ids (or intent tokens if coarse) -> (B, N+1) next-item log-probabilities."""
        seq = seq[:, -self.max_len:]
        logp = torch.stack([torch.log_softmax(m(seq, coarse=coarse), dim=-1)
                            for m in self.members])  # (M, B, N+1)
        return torch.log_softmax(logp.mean(0), dim=-1)
