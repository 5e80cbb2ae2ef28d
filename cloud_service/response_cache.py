"""The response cache's key and record: a `Recommendation` as compact JSON bytes and back."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from cloud_service.domain import Recommendation


def cache_key(mode: str, version: str, *parts: Any) -> str:
    """A key that names the mode, the version and every input that shapes the answer."""
    body = json.dumps([mode, version, *[list(p) if isinstance(p, tuple) else p for p in parts]])
    return f"resp:{version}:{hashlib.sha256(body.encode()).hexdigest()[:32]}"


def encode(rec: Recommendation) -> bytes:
    """The fields an answer needs again (short keys: one record per device and request)."""
    return json.dumps({"i": rec.item_ids, "s": rec.scores, "v": rec.model_version,
                       "t": rec.item_intents, "n": rec.catalog_size, "c": rec.item_codes,
                       "l": rec.code_levels, "w": rec.item_new}).encode()


def decode(raw: bytes) -> Recommendation:
    """The cached answer, marked `cached`; records from before a field existed read it empty."""
    d = json.loads(raw)
    return Recommendation(tuple(d["i"]), tuple(d["s"]), d["v"], cached=True,
                          item_intents=tuple(d.get("t", ())), catalog_size=d.get("n", 0),
                          item_codes=tuple(d.get("c", ())), code_levels=d.get("l", 0),
                          item_new=tuple(d.get("w", ())))
