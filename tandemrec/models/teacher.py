"""The cloud teacher: an LLM-style decoder over item sequences with a hierarchical item tower.

Lite-LLM4Rec (Wang et al., 2024, "Rethinking Large Language Model Architectures for Sequential
Recommendations"): an item model turns each item's text into one vector and a sequence model
reads those vectors; a straight item projection head scores the whole catalog in one matrix
product, with no generation and no beam search. Here the item model is a frozen pretrained
sentence encoder (all-MiniLM-L6-v2, cached vectors) fused with a learned id embedding. Items
with no training interactions have no id embedding and are scored through their text alone.

The teacher also reads sequences of intent tokens (coarse mode): the cloud sees only the level-1
semantic ids of a user's recent items in collaborative serving, never the items themselves.

The sequence model is the native decoder (models/blocks.py) or, with `backbone: hf`, a Hugging
Face transformers causal LM reading the item vectors as `inputs_embeds` (models/hf_teacher.py);
the item tower, the intent tokens and the head are the same for both.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import model_validator
from torch import nn

from tandemrec.models.blocks import Decoder, RMSNorm
from tandemrec.models.hf_teacher import HFDecoder
from tandemrec.models.shape import DecoderShape


class TeacherConfig(DecoderShape):
    shape_defaults: ClassVar[dict[str, Any]] = {"d_model": 128, "mlp_hidden": 256}

    n_items: int
    text_dim: int = 384  # 0 when the dataset has no item text
    n_intents: int = 0  # set once the intent vocabulary exists
    # "hf": a transformers causal LM whose whole config (models/hf_teacher.items_config) is
    # `hf_config`, so a checkpoint rebuilds it without the directory it was loaded from.
    backbone: Literal["native", "hf"] = "native"
    hf_config: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _backbone_config(self) -> TeacherConfig:
        if (self.backbone == "hf") != (self.hf_config is not None):
            raise ValueError("a teacher has an hf_config exactly when its backbone is hf")
        return self

    def to_dict(self) -> dict[str, Any]:
        """A native teacher's config is what it was before backbones existed (same file)."""
        values = super().to_dict()
        if self.backbone == "native":
            del values["backbone"], values["hf_config"]
        return values


class ItemTower(nn.Module):
    """Item vector = text projection + id embedding (zeroed for items never seen in training)."""

    text: torch.Tensor
    has_id: torch.Tensor

    def __init__(self, cfg: TeacherConfig) -> None:
        super().__init__()
        self.id_emb = nn.Embedding(cfg.n_items + 1, cfg.d_model, padding_idx=0)
        nn.init.normal_(self.id_emb.weight, std=0.02)
        self.text_proj = nn.Linear(cfg.text_dim, cfg.d_model) if cfg.text_dim else None
        # Frozen features, saved with the checkpoint: (N+1, text_dim) and (N+1,) 0/1.
        self.register_buffer("text", torch.zeros(cfg.n_items + 1, max(cfg.text_dim, 1)))
        self.register_buffer("has_id", torch.ones(cfg.n_items + 1))
        self.norm = RMSNorm(cfg.d_model)

    def forward(self) -> torch.Tensor:
        """All item vectors: (N+1, D); row 0 (padding) is zero."""
        vec = self.id_emb.weight * self.has_id[:, None]
        if self.text_proj is not None:
            vec = vec + self.text_proj(self.text)
        vec = self.norm(vec)
        return torch.cat([torch.zeros_like(vec[:1]), vec[1:]], dim=0)


class Teacher(nn.Module):
    """Decoder-only sequential recommender scoring every item with one product."""

    def __init__(self, cfg: TeacherConfig, backbone: nn.Module | None = None) -> None:
        """`backbone`: a loaded transformers model for an hf teacher (train/hf_backbone.py);
        None builds one from cfg.hf_config (random weights, e.g. before a checkpoint's)."""
        super().__init__()
        self.cfg = cfg
        self.items = ItemTower(cfg)
        self.decoder: Decoder | HFDecoder
        if cfg.backbone == "native":
            self.decoder = Decoder(cfg.d_model, cfg.n_layers, cfg.n_heads, cfg.max_len,
                                   cfg.dropout, cfg.mlp_hidden, pos_std=cfg.pos_std)
        else:
            assert cfg.hf_config is not None  # TeacherConfig._backbone_config
            self.decoder = HFDecoder(cfg.hf_config, cfg.dropout, backbone)
            width = self.decoder.backbone.config.hidden_size
            if width != cfg.d_model:
                raise ValueError(f"the backbone's hidden_size ({width}) is not the teacher's "
                                 f"d_model ({cfg.d_model})")
            limit = self.decoder.max_positions
            if limit is not None and cfg.max_len > limit:
                raise ValueError(f"teacher.max_len ({cfg.max_len}) is longer than the backbone's "
                                 f"max_position_embeddings ({limit})")
        self.intent_emb = nn.Embedding(cfg.n_intents + 1, cfg.d_model, padding_idx=0)
        self.out_bias = nn.Parameter(torch.zeros(cfg.n_items + 1))
        self._vec_cache: torch.Tensor | None = None

    def train(self, mode: bool = True) -> Teacher:
        self._vec_cache = None  # weights may change: item vectors are recomputed
        return super().train(mode)

    def item_vectors(self) -> torch.Tensor:
        """(N+1, D) item vectors; computed once while serving (eval mode, no grad)."""
        if self.training or torch.is_grad_enabled():
            return self.items()
        if self._vec_cache is None:
            self._vec_cache = self.items()
        return self._vec_cache

    def set_intents(self, n_intents: int, init: torch.Tensor | None = None) -> None:
        """Create the intent-token embedding table (K+1, D), e.g. from cluster centroids."""
        self.cfg.n_intents = n_intents
        self.intent_emb = nn.Embedding(n_intents + 1, self.cfg.d_model, padding_idx=0)
        if init is not None:
            with torch.no_grad():
                self.intent_emb.weight[1:] = init

    def hidden(self, seq: torch.Tensor, coarse: bool = False,
               last_only: bool = False) -> torch.Tensor:
        """seq: (B, T) item ids (or intent tokens if coarse), 0 = pad -> (B, T or 1, D)."""
        x = self.intent_emb(seq) if coarse else F.embedding(seq, self.item_vectors())
        return self.decoder(x, seq != 0, last_only=last_only)

    def head(self, item_vecs: torch.Tensor | None = None
             ) -> tuple[torch.Tensor, torch.Tensor, float]:
        """The item projection head as (vecs (N+1, D), bias (N+1,), scale on h)."""
        vecs = self.item_vectors() if item_vecs is None else item_vecs
        # Both sides are unit-RMS, so raw dot products grow like d; scale them back to O(1).
        return vecs, self.out_bias, self.cfg.d_model**-0.5

    def scores(self, h: torch.Tensor, item_vecs: torch.Tensor | None = None) -> torch.Tensor:
        """Item projection head: (..., D) -> (..., N+1) logits over the whole catalog."""
        vecs, bias, scale = self.head(item_vecs)
        # Scaling h rather than the (..., N+1) product saves a catalog-sized pass.
        return (h * scale) @ vecs.T + bias

    def position_scores(self, seq: torch.Tensor) -> torch.Tensor:
        """Next-item logits at every position: (B, T) -> (B, T, N+1)."""
        return self.scores(self.hidden(seq))

    def forward(self, seq: torch.Tensor, coarse: bool = False) -> torch.Tensor:
        """Next-item logits at the last position: (B, T) -> (B, N+1)."""
        return self.scores(self.hidden(seq, coarse=coarse, last_only=True)[:, -1])
