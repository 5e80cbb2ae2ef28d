"""bfloat16 matmuls in training, on CPUs that run them natively (AVX512-BF16, AMX).

Weights, optimizer state, norms and softmax stay in float32; only the matrix products of the
decoder (through `torch.autocast`) and of the catalog head (`chunked_head_loss`) take bf16
inputs. On a CPU without native bf16 it would be emulated and slower, so "bf16" falls back to
float32 there, with a message.
"""

from __future__ import annotations

import contextlib
from functools import cache

import torch

from tandemrec.progress import log

PRECISIONS = ("fp32", "bf16")


@cache
def bf16_supported() -> bool:
    """Whether oneDNN runs bf16 matmuls natively on this CPU."""
    try:
        return bool(torch.backends.mkldnn.is_available()
                    and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def matmul_dtype(precision: str) -> torch.dtype | None:
    """The dtype of training matmuls for a config's `precision`; None means float32."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "fp32":
        return None
    if not bf16_supported():
        log("precision bf16: this CPU has no native bfloat16 matmuls; training in float32")
        return None
    return torch.bfloat16


def autocast(dtype: torch.dtype | None,
             device_type: str = "cpu") -> contextlib.AbstractContextManager:
    """bf16 autocast for the forward pass when `dtype` is set, else nothing."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type, dtype=dtype)
