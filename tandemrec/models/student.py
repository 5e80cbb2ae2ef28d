"""The edge student: a small decoder distilled from the teacher, with an intent and an item head.

RecGPT-Mobile (Zhang et al., 2025): a lightweight on-device model reads the user's recent
behaviour and predicts the next intent, so the feed adapts without a cloud call per action.
OD-LLM (Yin et al., 2026): the student is then compressed by SVD low-rank factorisation with
progressive layer-wise alignment; `StudentConfig.ranks` describes the factorised shape, so a
compressed checkpoint rebuilds itself from its config.

The student sees item ids only (no text encoder on the device). Its item head is tied to its
item table, so one table serves as input embedding and output projection.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from tandemrec.models.blocks import Decoder, RMSNorm
from tandemrec.models.shape import DecoderShape


class StudentConfig(DecoderShape):
    n_items: int
    n_intents: int
    # Low-rank shape after compression: {"emb": r, "layers": [{"qkv": r, ...}, ...]}; {} = dense.
    ranks: dict[str, Any] = Field(default_factory=dict)


class ItemTable(nn.Module):
    """Item embeddings E (N+1, D), dense or factorised as U (N+1, r) @ V (r, D).

    Tables are stored column-major (E^T, U^T) because the tied output head multiplies by them in
    that layout: had they been stored row-major, ONNX export would constant-fold a transposed
    copy and write the largest tensor of the model into the file twice.
    """

    def __init__(self, n_rows: int, d_model: int, rank: int | None) -> None:
        super().__init__()
        self.rank = rank
        if rank is None:
            self.weight_t = nn.Parameter(torch.randn(d_model, n_rows) * 0.02)  # E^T: (D, N+1)
        else:
            self.u_t = nn.Parameter(torch.randn(rank, n_rows) * 0.02)  # U^T: (r, N+1)
            self.v = nn.Parameter(torch.randn(rank, d_model) * 0.02)  # V: (r, D)

    def lookup(self, ids: torch.Tensor) -> torch.Tensor:
        """(B, T) ids -> (B, T, D) vectors."""
        table = self.weight_t if self.rank is None else self.u_t
        rows = table.index_select(1, ids.reshape(-1)).T  # (B*T, D or r)
        if self.rank is not None:
            rows = rows @ self.v  # (B*T, D)
        return rows.reshape(*ids.shape, -1)

    def score(self, h: torch.Tensor) -> torch.Tensor:
        """Tied output head: (..., D) -> (..., N+1)."""
        if self.rank is None:
            return h @ self.weight_t
        return F.linear(h, self.v) @ self.u_t  # (..., r) then (..., N+1); V used untransposed

    def dense(self) -> torch.Tensor:
        """E as (N+1, D)."""
        return self.weight_t.T if self.rank is None else self.u_t.T @ self.v


class Student(nn.Module):
    """history (B, T) -> (intent logits (B, K+1), item scores (B, N+1)) at the last position."""

    def __init__(self, cfg: StudentConfig) -> None:
        super().__init__()
        self.cfg = cfg
        ranks = cfg.ranks or {}
        self.items = ItemTable(cfg.n_items + 1, cfg.d_model, ranks.get("emb"))
        # Token normalisation (OD-LLM): unit-RMS item vectors suit the low-rank factorisation.
        self.in_norm = RMSNorm(cfg.d_model)
        self.decoder = Decoder(cfg.d_model, cfg.n_layers, cfg.n_heads, cfg.max_len, cfg.dropout,
                               cfg.mlp_hidden, ranks.get("layers"), pos_std=cfg.pos_std)
        self.intent_head = nn.Linear(cfg.d_model, cfg.n_intents + 1)
        self.out_bias = nn.Parameter(torch.zeros(cfg.n_items + 1))

    def hidden(self, seq: torch.Tensor, last_only: bool = False,
               return_hidden: bool = False):
        """(B, T) item ids -> (B, T or 1, D) final states (and per-layer states if asked)."""
        x = self.in_norm(self.items.lookup(seq))
        return self.decoder(x, seq != 0, last_only=last_only, return_hidden=return_hidden)

    def item_head(self) -> tuple[torch.Tensor, torch.Tensor, float]:
        """The tied item head as (item vectors (N+1, D), bias (N+1,), scale on h)."""
        return self.items.dense(), self.out_bias, self.cfg.d_model**-0.5

    def heads(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(..., D) -> intent logits (..., K+1), item scores (..., N+1)."""
        # Unit-RMS hidden states: scale the dot products back to O(1), as the teacher does.
        return self.intent_head(h), self.items.score(h * self.cfg.d_model**-0.5) + self.out_bias

    def forward(self, seq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.hidden(seq, last_only=True)[:, -1]  # (B, D)
        return self.heads(h)
