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
from dataclasses import dataclass

import torch
from torch import nn

from tandemrec.models.teacher import Teacher, TeacherConfig


@dataclass
class EnsembleConfig:
    """The members' configs; what serving reads (catalog, intents, window) is derived from them."""

    members: list[TeacherConfig]

    @property
    def n_items(self) -> int:
        return self.members[0].n_items

    @property
    def n_intents(self) -> int:
        # Every member reads the same intent tokens; one without a coarse mode disables it.
        return min(m.n_intents for m in self.members)

    @property
    def max_len(self) -> int:
        # Histories are cut to the shortest window any member reads.
        return min(m.max_len for m in self.members)

    def to_dict(self) -> dict:
        return {"members": [m.to_dict() for m in self.members]}


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
        self._teachers = list(members)  # the same modules, typed for the loops below
        self.cfg = EnsembleConfig([m.cfg for m in members])  # the members' own, kept live

    def item_vectors(self) -> torch.Tensor:
        """(N+1, sum of member widths): every member's item vectors side by side."""
        return torch.cat([m.item_vectors() for m in self._teachers], dim=-1)

    def position_scores(self, seq: torch.Tensor) -> torch.Tensor:
        """Next-item log-probabilities at every position: (B, T) -> (B, T, N+1)."""
        seq = seq[:, -self.cfg.max_len:]
        return _mean_log_probs([m.position_scores(seq) for m in self._teachers])

    def forward(self, seq: torch.Tensor, coarse: bool = False) -> torch.Tensor:
        """(B, T) item ids (or intent tokens if coarse) -> (B, N+1) next-item log-probabilities."""
        seq = seq[:, -self.cfg.max_len:]
        return _mean_log_probs([m(seq, coarse=coarse) for m in self._teachers])


def _mean_log_probs(scores: list[torch.Tensor]) -> torch.Tensor:
    """Renormalised mean over members of log_softmax(scores) along the catalog axis."""
    logp = torch.stack([torch.log_softmax(s, dim=-1) for s in scores])  # (M, ..., N+1)
    return torch.log_softmax(logp.mean(0), dim=-1)


# What the cloud, the evaluator and distillation score with: one teacher or an ensemble.
AnyTeacher = Teacher | TeacherEnsemble
