"""Semantic ids as the semantic-id student reads them: one row of a small code table per level.

An item's semantic id is its residual k-means code (c1, c2, c3), 1-based per level (level 1 =
the intent token; tandemrec.models.intent_vocab). The semantic-id student keeps one embedding
per code of each level, plus optionally `hash_buckets` rows for a hashed residual of the item
id, all in one table: level l's code c is row offset_l + c, the hash bucket b is row
offset_L + b, and row 0 is padding. Nothing here grows with the catalog: the device turns the
semantic id it stores with each history event, or that the cloud sends with each candidate,
into rows (`sid_rows`) and sums the student's per-row scores (`score_items`). numpy only.

`SidSpec` is what a semantic-id device bundle records of its student (training writes it, the
SDK reads it), and `sid_device_side` the SDK's view for fusion (`SidEvaluator.device_side`
builds the same offline; tests/integration/test_sid_wire.py holds their rankings equal).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from tandem_contract.fusion import DeviceView, device_log_probs

_GOLDEN = np.uint64(2654435761)  # Knuth's multiplicative hash constant


def table_rows(level_sizes: Sequence[int], hash_buckets: int) -> int:
    """Rows of the code table: padding, every level's codes, the hash buckets."""
    return 1 + int(sum(level_sizes)) + int(hash_buckets)


def hash_bucket(item_ids: np.ndarray, hash_buckets: int) -> np.ndarray:
    """1-based bucket of each item id (0 for padding id 0): stable, the same on every side."""
    ids = np.asarray(item_ids, dtype=np.int64)
    mixed = (ids.astype(np.uint64) * _GOLDEN) & np.uint64(0xFFFFFFFF)
    return np.where(ids > 0, (mixed % np.uint64(hash_buckets)).astype(np.int64) + 1, 0)


def sid_rows(codes: np.ndarray, level_sizes: Sequence[int], hash_buckets: int = 0,
             item_ids: np.ndarray | None = None) -> np.ndarray:
    """(..., L) semantic ids (0 = padding) -> (..., L [+ 1]) rows of the code table.

    With `hash_buckets` > 0 a last column holds each item's hashed-id row (`item_ids`, same
    leading shape, required then). A padding code maps to row 0 at every level.
    """
    codes = np.asarray(codes, dtype=np.int64)
    sizes = np.asarray(level_sizes, dtype=np.int64)
    if codes.shape[-1] != len(sizes):
        raise ValueError(f"semantic ids have {codes.shape[-1]} levels, the table {len(sizes)}")
    if (codes < 0).any() or (codes > sizes).any():
        raise ValueError(f"a semantic id is out of range for level sizes {sizes.tolist()}")
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    rows = np.where(codes > 0, codes + offsets, 0)
    if hash_buckets <= 0:
        return rows
    if item_ids is None or np.shape(item_ids) != codes.shape[:-1]:
        raise ValueError("hashed rows need one item id per semantic id")
    bucket = hash_bucket(item_ids, hash_buckets)
    hashed = np.where(bucket > 0, bucket + int(sizes.sum()), 0)
    return np.concatenate([rows, hashed[..., None]], axis=-1)


def drop_hash(rows: np.ndarray, new: np.ndarray, hash_buckets: int) -> np.ndarray:
    """Rows (C, L') with the hash row of each item flagged `new` (C,) set to padding.

    A new item's bucket was trained on the known items that share it, so its residual is
    theirs, not its own: a new item scores from its semantic id alone.
    """
    flags = np.asarray(new, dtype=bool)
    if hash_buckets <= 0 or not flags.any():
        return rows
    out = np.array(rows, dtype=np.int64, copy=True)
    out[flags, -1] = 0
    return out


def score_items(row_scores: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Item scores from the student's per-row scores (V,): the sum over an item's rows.

    rows (C, L [+ 1]) from `sid_rows` -> (C,). Row 0 (padding) contributes nothing, so an item
    scores on the levels it has.
    """
    s = np.asarray(row_scores, dtype=np.float32).copy()
    s[0] = 0.0
    return s[np.asarray(rows, dtype=np.int64)].sum(-1)


SID_MODEL = "sid_student_int8.onnx"  # the semantic-id device bundle's model file


@dataclass(frozen=True)
class SidSpec:
    """What a semantic-id device bundle's manifest records of its student (`extra.student`)."""

    level_sizes: tuple[int, ...]  # codes per level; level 1 = the intent tokens
    hash_buckets: int  # rows of the hashed item-id residual (0: none)
    max_len: int  # the model's history window

    @property
    def levels(self) -> int:
        return len(self.level_sizes)

    def record(self) -> dict[str, Any]:
        """The manifest's `extra.student` for this spec."""
        return {"kind": "sid", "model": SID_MODEL, "level_sizes": list(self.level_sizes),
                "hash_buckets": self.hash_buckets, "max_len": self.max_len}

    @classmethod
    def from_extra(cls, extra: dict[str, Any]) -> SidSpec | None:
        """The spec of a manifest's `extra`; None for a table student's bundle."""
        rec = extra.get("student")
        if not isinstance(rec, dict) or rec.get("kind") != "sid":
            return None
        sizes = tuple(int(k) for k in rec["level_sizes"])
        if not sizes or min(sizes) < 1:
            raise ValueError(f"level_sizes must list positive sizes, got {list(sizes)}")
        return cls(sizes, int(rec["hash_buckets"]), int(rec["max_len"]))

    def check(self, codes: np.ndarray, what: str) -> np.ndarray:
        """(C, L) int64 semantic ids, each code within 1..size of its level, or ValueError."""
        c = np.asarray(codes)
        if c.dtype.kind not in "iu" or c.ndim != 2 or c.shape[1] != self.levels:
            raise ValueError(f"{what}: semantic ids must be integers, {self.levels} per item "
                             f"(got shape {c.shape}, dtype {c.dtype})")
        c = c.astype(np.int64, copy=False)
        if len(c) and ((c < 1).any() or (c > np.asarray(self.level_sizes)).any()):
            raise ValueError(f"{what}: a code is outside 1..size of its level (sizes "
                             f"{list(self.level_sizes)})")
        return c

    def rows(self, codes: np.ndarray, item_ids: np.ndarray,
             new: np.ndarray | None = None) -> np.ndarray:
        """(C, L) checked semantic ids of items -> their rows of the code table (C, L'); the
        items flagged `new` (C,) without their hash row (`drop_hash`)."""
        rows = sid_rows(codes, self.level_sizes, self.hash_buckets,
                        np.asarray(item_ids, dtype=np.int64))
        return rows if new is None else drop_hash(rows, new, self.hash_buckets)


def sid_device_side(row_scores: np.ndarray, items: np.ndarray, codes: np.ndarray,
                    new: np.ndarray, n_items: int, spec: SidSpec) -> tuple[np.ndarray, DeviceView]:
    """The semantic-id device's log-probabilities (N+1,) and what it knows, for fusion.

    `items` (C,) with their semantic ids `codes` (C, L) are those the device has semantic ids
    for (the cloud's answer and its earlier pool; repeats allowed, ids past the catalog
    dropped). It knows them, except those flagged `new` (C,): its model never trained on
    them, so fusion treats them as unknown (the bundle's `device_missing` rule applies), and
    scores them without their hash row.
    """
    items = np.asarray(items, dtype=np.int64)
    inside = (items >= 1) & (items <= n_items)
    items, codes = items[inside], np.asarray(codes, dtype=np.int64)[inside]
    flags = np.asarray(new, dtype=bool)[inside]
    known = np.zeros(n_items + 1, dtype=bool)
    known[items] = True
    known[items[flags]] = False
    s = np.full(n_items + 1, -np.inf, dtype=np.float32)
    s[items] = score_items(row_scores, spec.rows(codes, items, flags))
    intent = np.zeros(n_items + 1, dtype=np.int64)
    intent[items] = codes[:, 0]
    view = DeviceView.build(known, intent, spec.level_sizes[0])
    return device_log_probs(s, view), view
