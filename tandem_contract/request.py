"""What the device sends upstream in collaborative mode: intent tokens only, never item ids."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import numpy as np

from tandem_contract.intents import top_intents


@dataclass(frozen=True)
class CollaborativeRequest:
    """The whole upstream payload. Every integer in it is an intent token (1..K) or k."""

    intent_tokens: tuple[int, ...]  # the student's top-m next intents
    intent_weights: tuple[float, ...]  # their probabilities, renormalised to sum to 1
    coarse_history: tuple[int, ...]  # intent tokens of the last L interactions, oldest first
    k: int
    model_version: str

    def to_json_bytes(self) -> bytes:
        """The serialized payload (what a transport would carry, and what is counted as bytes)."""
        return json.dumps(asdict(self), separators=(",", ":")).encode()


def build_request(intent_logits: np.ndarray, history: np.ndarray, item_intents: np.ndarray,
                  *, top_m: int, coarse_len: int, k: int,
                  model_version: str) -> CollaborativeRequest:
    """Turn the device's private state into the upstream request.

    `history` (item ids) is read only through `item_intents` (the bundle's item -> intent token
    table), so what leaves the device is a function of intents alone.
    """
    recent = history[-coarse_len:] if coarse_len > 0 else history[:0]
    coarse = item_intents[np.asarray(recent, dtype=np.int64)]
    if len(coarse) and coarse.min() <= 0:  # one pass when every item is known (no copy)
        coarse = coarse[coarse > 0]  # an item the bundle does not know (token 0) says nothing
    return _request(intent_logits, coarse, top_m, k, model_version)


def request_from_tokens(intent_logits: np.ndarray, history_tokens: np.ndarray, *, top_m: int,
                        coarse_len: int, k: int, model_version: str) -> CollaborativeRequest:
    """The upstream request from the intent tokens of the history's events, oldest first:
    what a semantic-id device sends (level 1 of each stored semantic id)."""
    coarse = np.asarray(history_tokens, dtype=np.int64)
    coarse = coarse[-coarse_len:] if coarse_len > 0 else coarse[:0]
    return _request(intent_logits, coarse, top_m, k, model_version)


def _request(intent_logits: np.ndarray, coarse: np.ndarray, top_m: int, k: int,
             model_version: str) -> CollaborativeRequest:
    """The request from the intent head and the coarse history (integer tokens, cut to L)."""
    tokens, weights = top_intents(intent_logits, top_m)
    return CollaborativeRequest(tuple(tokens.tolist()), _round6(weights),
                                tuple(coarse.tolist()), int(k), model_version)


def _round6(weights: np.ndarray) -> tuple[float, ...]:
    """`round(w, 6)` of each weight, vectorised: for float32 weights (what `top_intents` gives)
    w * 1e6 is exact in float64 (24 + 14 significant bits), so numpy's rint of it and division
    by 1e6 land on the very float Python's correctly rounded `round` returns."""
    if weights.dtype != np.float32:
        return tuple(round(float(w), 6) for w in weights)
    scaled = np.multiply(weights, 1e6, dtype=np.float64)  # the float64 cast inside the product
    np.rint(scaled, out=scaled)  # np.round's way, in place
    scaled /= 1e6
    return tuple(scaled.tolist())
