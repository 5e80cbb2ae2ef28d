"""Decoder-only transformer pieces shared by the teacher and the student.

Pre-norm blocks (RMSNorm), causal self-attention over left-padded sequences and a SwiGLU MLP,
as in LLaMA-style decoders. Attention is written out with matmuls (no fused kernels, no
nn.TransformerEncoderLayer fast path) so the same code trains in torch and exports to ONNX.
Every linear layer goes through `make_linear`, so compression can swap in low-rank factors.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from tandemrec.models.dropout import Dropout


class RMSNorm(nn.Module):
    """Root-mean-square layer norm (Zhang & Sennrich, 2019): no mean, no bias."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


class LowRankLinear(nn.Module):
    """y = (x @ A) @ B + b: a rank-r factorisation of a dense (in -> out) layer (OD-LLM)."""

    def __init__(self, in_features: int, out_features: int, rank: int, bias: bool) -> None:
        super().__init__()
        self.in_features, self.out_features, self.rank = in_features, out_features, rank
        self.down = nn.Linear(in_features, rank, bias=False)  # A: (r, in)
        self.up = nn.Linear(rank, out_features, bias=bias)  # B: (out, r)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.down(x))


def make_linear(in_features: int, out_features: int, bias: bool, rank: int | None) -> nn.Module:
    """A dense layer, or its low-rank factorisation when `rank` is given."""
    if rank is None:
        return nn.Linear(in_features, out_features, bias=bias)
    return LowRankLinear(in_features, out_features, rank, bias)


def attention_bias(valid: torch.Tensor) -> torch.Tensor:
    """Additive causal mask that also hides padded keys. valid: (B, T) bool -> (B, 1, T, T).

    A large finite negative (not -inf) keeps fully padded rows finite, and one additive float
    mask built once per forward is cheaper on the device than a boolean fill in every layer.
    """
    idx = torch.arange(valid.shape[1], device=valid.device)
    allowed = (idx[None, :] <= idx[:, None])[None] & valid[:, None, :]  # (B, T, T): key <= query
    return ((~allowed).float() * -1e9)[:, None]


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention; `last_only` computes the final query position only."""

    def __init__(self, d_model: int, n_heads: int, dropout: float,
                 ranks: dict[str, int | None] | None = None) -> None:
        super().__init__()
        assert d_model % n_heads == 0
        ranks = ranks or {}
        self.n_heads, self.d_head = n_heads, d_model // n_heads
        self.qkv = make_linear(d_model, 3 * d_model, False, ranks.get("qkv"))
        self.proj = make_linear(d_model, d_model, False, ranks.get("proj"))
        self.drop = Dropout(dropout)
        # PyTorch SDPA is opt-in: with an additive mask it is slower than plain matmuls on CPU
        # (bench/teacher_speed.py), and ONNX export wants the matmuls anyway.
        self.fused = False

    def forward(self, x: torch.Tensor, bias: torch.Tensor, last_only: bool = False) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).split(d, dim=-1)  # each (B, T, D)
        if last_only:
            q, bias = q[:, -1:], bias[:, :, -1:]  # (B, 1, D), (B, 1, 1, T)
        tq = q.shape[1]
        q = q.view(b, tq, self.n_heads, self.d_head).transpose(1, 2)  # (B, H, Tq, Dh)
        k = k.view(b, t, self.n_heads, self.d_head).transpose(1, 2)  # (B, H, T, Dh)
        v = v.view(b, t, self.n_heads, self.d_head).transpose(1, 2)
        if self.fused:
            p = self.drop.p if self.training else 0.0
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=p)
        else:
            att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(self.d_head)) + bias  # (B,H,Tq,T)
            att = att.softmax(dim=-1)
            y = self.drop(att) @ v  # (B, H, Tq, Dh)
        y = y.transpose(1, 2).reshape(b, tq, d)
        return self.drop(self.proj(y))


def plain_attention(model: nn.Module) -> None:
    """Turn off PyTorch SDPA in every attention layer: ONNX exports want the plain matmuls."""
    for mod in model.modules():
        if isinstance(mod, CausalSelfAttention):
            mod.fused = False


class SwiGLU(nn.Module):
    """Gated MLP (Shazeer, 2020): down(silu(gate(x)) * up(x))."""

    def __init__(self, d_model: int, hidden: int, dropout: float,
                 ranks: dict[str, int | None] | None = None) -> None:
        super().__init__()
        ranks = ranks or {}
        self.gate_up = make_linear(d_model, 2 * hidden, False, ranks.get("gate_up"))
        self.down = make_linear(hidden, d_model, False, ranks.get("down"))
        self.drop = Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up(x).chunk(2, dim=-1)
        return self.drop(self.down(F.silu(gate) * up))


class Block(nn.Module):
    """Pre-norm decoder block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, d_model: int, n_heads: int, mlp_hidden: int, dropout: float,
                 ranks: dict[str, int | None] | None = None) -> None:
        super().__init__()
        self.norm1 = RMSNorm(d_model)
        self.attn = CausalSelfAttention(d_model, n_heads, dropout, ranks)
        self.norm2 = RMSNorm(d_model)
        self.mlp = SwiGLU(d_model, mlp_hidden, dropout, ranks)

    def forward(self, x: torch.Tensor, bias: torch.Tensor, last_only: bool = False) -> torch.Tensor:
        if last_only:
            x = x[:, -1:] + self.attn(self.norm1(x), bias, last_only=True)  # (B, 1, D)
        else:
            x = x + self.attn(self.norm1(x), bias)
        return x + self.mlp(self.norm2(x))


class Decoder(nn.Module):
    """Learned positions (counted from the most recent item) plus a stack of blocks."""

    def __init__(self, d_model: int, n_layers: int, n_heads: int, max_len: int, dropout: float,
                 mlp_hidden: int, layer_ranks: list[dict[str, int | None]] | None = None,
                 pos_std: float = 1.0) -> None:
        super().__init__()
        self.max_len = max_len
        self.pos = nn.Embedding(max_len, d_model)
        # Item vectors enter at unit RMS; positions drawn at std 1 weigh as much as the item
        # itself, GPT-2 and SASRec start them small (0.02) so that identity dominates.
        if pos_std != 1.0:  # nn.Embedding already draws at std 1; redrawing would shift seeds
            nn.init.normal_(self.pos.weight, std=pos_std)
        self.drop = Dropout(dropout)
        ranks = layer_ranks or [{} for _ in range(n_layers)]
        self.blocks = nn.ModuleList(
            Block(d_model, n_heads, mlp_hidden, dropout, ranks[i]) for i in range(n_layers)
        )
        self.norm = RMSNorm(d_model)

    def forward(self, x: torch.Tensor, valid: torch.Tensor, last_only: bool = False,
                return_hidden: bool = False) -> torch.Tensor | tuple[torch.Tensor, list]:
        """x: (B, T, D) input embeddings, valid: (B, T) -> (B, T or 1, D) final hidden states."""
        t = x.shape[1]
        # Position 0 is the most recent item, so sequences of any length share the same
        # meaning for each position and batches can be trimmed to their longest sequence.
        positions = (t - 1) - torch.arange(t, device=x.device)
        x = self.drop(x + self.pos(positions)[None]) * valid[..., None]
        bias = attention_bias(valid)
        hidden = []
        for i, block in enumerate(self.blocks):
            is_last = i == len(self.blocks) - 1
            x = block(x, bias, last_only=last_only and is_last)
            hidden.append(x)
        out = self.norm(x)
        return (out, hidden) if return_hidden else out
