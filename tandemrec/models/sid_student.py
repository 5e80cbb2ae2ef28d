"""The semantic-id student: an edge decoder that sees items only through their semantic ids.

TIGER (Rajput et al., 2023) and LC-Rec (Zheng et al., 2024) name items by semantic ids, the
residual codes (c1, c2, c3) of their vectors; compositional embeddings built from a few
codebooks shrink on-device recommenders (Xia et al., 2022). Here an item's input vector is the
sum of one embedding per level of its semantic id (plus, optionally, a hashed residual of its
id: one or a few rows, by as many hashes, of a fixed number of buckets), and the item head is
tied to the same code table, so an item's score factorises over its levels:

    score(i) = sum_l <h, E[row_l(i)]> / sqrt(D) + b[row_l(i)]

The model outputs one score per row of the code table (V = 1 + K1 + K2 + K3 [+ H] rows), and
an item's score is the sum over its rows (`tandem_contract.semantic_ids.score_items`). Its size
does not depend on the catalog, and it scores any item whose semantic id it is given, including
items it never saw in training. The decoder and intent head are the full-table student's
(models/student.py): only the item table differs.
"""

from __future__ import annotations

from typing import Any

import torch
from pydantic import Field, model_validator
from torch import nn

from tandem_contract.semantic_ids import table_rows
from tandemrec.models.blocks import Decoder, RMSNorm
from tandemrec.models.shape import DecoderShape
from tandemrec.models.student import ItemTable


class SidStudentConfig(DecoderShape):
    level_sizes: list[int]  # codes per level of the semantic id; level 1 = intent tokens
    hash_buckets: int = Field(0, ge=0)  # rows of the hashed item-id residual; 0 = none
    hash_count: int = Field(1, ge=1)  # of those rows, how many each item sums (k hashes)
    ranks: dict[str, Any] = Field(default_factory=dict)  # as StudentConfig; {} = dense

    @model_validator(mode="after")
    def _levels(self) -> SidStudentConfig:
        if not self.level_sizes or min(self.level_sizes) < 1:
            raise ValueError(f"level_sizes must list positive sizes, got {self.level_sizes}")
        return self

    @property
    def n_intents(self) -> int:
        return self.level_sizes[0]

    @property
    def n_rows(self) -> int:
        """V: rows of the code table (padding, codes of every level, hash buckets)."""
        return table_rows(self.level_sizes, self.hash_buckets)

    @property
    def row_width(self) -> int:
        """Table rows per item: one per level, plus its hash buckets'."""
        return len(self.level_sizes) + (self.hash_count if self.hash_buckets else 0)


class SidStudent(nn.Module):
    """rows (B, T, L') -> (intent logits (B, K1+1), row scores (B, V)) at the last position."""

    def __init__(self, cfg: SidStudentConfig) -> None:
        super().__init__()
        self.cfg = cfg
        ranks = cfg.ranks or {}
        self.items = ItemTable(cfg.n_rows, cfg.d_model, ranks.get("emb"))  # the code table
        self.in_norm = RMSNorm(cfg.d_model)
        self.decoder = Decoder(cfg.d_model, cfg.n_layers, cfg.n_heads, cfg.max_len, cfg.dropout,
                               cfg.mlp_hidden, ranks.get("layers"), pos_std=cfg.pos_std)
        self.intent_head = nn.Linear(cfg.d_model, cfg.n_intents + 1)
        self.out_bias = nn.Parameter(torch.zeros(cfg.n_rows))

    def embed(self, rows: torch.Tensor) -> torch.Tensor:
        """(B, T, L') table rows -> (B, T, D): the sum of the item's code embeddings."""
        return self.items.lookup(rows).sum(-2)

    def hidden(self, rows: torch.Tensor, last_only: bool = False,
               return_hidden: bool = False):
        """(B, T, L') rows -> (B, T or 1, D) final states (and per-layer states if asked)."""
        x = self.in_norm(self.embed(rows))
        return self.decoder(x, rows[..., 0] != 0, last_only=last_only,
                            return_hidden=return_hidden)

    def heads(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(..., D) -> intent logits (..., K1+1), per-row scores (..., V)."""
        return self.intent_head(h), self.items.score(h * self.cfg.d_model**-0.5) + self.out_bias

    def forward(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.hidden(rows, last_only=True)[:, -1]  # (B, D)
        return self.heads(h)

    def catalog_head(self, catalog: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, float]:
        """The item head over a catalog given as rows (N+1, L'): (item vectors (N+1, D), bias
        (N+1,), scale on h), so that training can score the whole catalog at once; row 0
        (padding) contributes nothing, as in `score_items`."""
        used = (catalog != 0).to(self.out_bias.dtype)  # (N+1, L')
        vecs = (self.items.dense()[catalog] * used[..., None]).sum(1)  # (N+1, D)
        bias = (self.out_bias[catalog] * used).sum(1)  # (N+1,)
        return vecs, bias, self.cfg.d_model**-0.5

    def catalog_scores(self, rows: torch.Tensor, catalog: torch.Tensor) -> torch.Tensor:
        """(B, T, L') histories -> (B, N+1) scores of every catalog item (for evaluation)."""
        _, row_scores = self(rows)  # (B, V)
        row_scores = row_scores.clone()
        row_scores[:, 0] = 0.0
        return row_scores[:, catalog].sum(-1)  # (B, N+1)
