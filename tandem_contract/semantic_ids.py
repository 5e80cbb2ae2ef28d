"""Semantic ids as the semantic-id student reads them: one row of a small code table per level.

An item's semantic id is its residual k-means code (c1, c2, c3), 1-based per level (level 1 =
the intent token; tandemrec.models.intent_vocab). The semantic-id student keeps one embedding
per code of each level, plus optionally `hash_buckets` rows for a hashed residual of the item
id, all in one table: level l's code c is row offset_l + c, the hash bucket b is row
offset_L + b, and row 0 is padding. With `hash_count` k > 1 each item takes k buckets of those
rows, by k independent hashes: two items that share one bucket rarely share all k, so each
keeps a residual of its own (hash embeddings; Svenstrup et al., 2017).

Nothing here grows with the catalog: the device turns the semantic id it stores with each
history event, or that the cloud sends with each candidate, into rows (`sid_rows`) and sums the
student's per-row scores (`score_items`). numpy only.

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
# splitmix64's increment and finaliser multipliers (Steele et al., 2014), for hashes 2..k
_MIX = tuple(np.uint64(c) for c in (0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB))


def table_rows(level_sizes: Sequence[int], hash_buckets: int) -> int:
    """Rows of the code table: padding, every level's codes, the hash buckets."""
    return 1 + int(sum(level_sizes)) + int(hash_buckets)


def hash_bucket(item_ids: np.ndarray, hash_buckets: int, which: int = 0) -> np.ndarray:
    """1-based bucket of each item id (0 for padding id 0) by hash number `which`: stable,
    the same on every side. Hash 0 is Knuth's multiplicative one; hash j > 0 splitmix64's
    finaliser of id + j * its increment, independent of it."""
    ids = np.atleast_1d(np.asarray(item_ids, dtype=np.int64))
    x = ids.astype(np.uint64)
    if which == 0:
        mixed = (x * _GOLDEN) & np.uint64(0xFFFFFFFF)
    else:
        x = x + np.full_like(x, which) * _MIX[0]  # arrays wrap mod 2^64 without a warning
        x = (x ^ (x >> np.uint64(30))) * _MIX[1]
        x = (x ^ (x >> np.uint64(27))) * _MIX[2]
        mixed = x ^ (x >> np.uint64(31))
    out = np.where(ids > 0, (mixed % np.uint64(hash_buckets)).astype(np.int64) + 1, 0)
    return out.reshape(np.shape(item_ids))


def sid_rows(codes: np.ndarray, level_sizes: Sequence[int], hash_buckets: int = 0,
             item_ids: np.ndarray | None = None, hash_count: int = 1) -> np.ndarray:
    """(..., L) semantic ids (0 = padding) -> (..., L [+ k]) rows of the code table.

    With `hash_buckets` > 0 the last `hash_count` (k) columns hold each item's hashed-id rows
    (`item_ids`, same leading shape, required then), one per hash. A padding code maps to row 0
    at every level.
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
    if hash_count < 1:
        raise ValueError(f"hash_count must be at least 1, got {hash_count}")
    hashed = [hash_bucket(item_ids, hash_buckets, j) for j in range(hash_count)]
    offset = int(sizes.sum())
    cols = [np.where(b > 0, b + offset, 0)[..., None] for b in hashed]
    return np.concatenate([rows, *cols], axis=-1)


def drop_hash(rows: np.ndarray, new: np.ndarray, hash_buckets: int,
              hash_count: int = 1) -> np.ndarray:
    """Rows (C, L') with the hash rows (the last `hash_count`) of each item flagged `new` (C,)
    set to padding.

    A new item's buckets were trained on the known items that share them, so their residual is
    theirs, not its own: a new item scores from its semantic id alone.
    """
    flags = np.asarray(new, dtype=bool)
    if hash_buckets <= 0 or not flags.any():
        return rows
    out = np.array(rows, dtype=np.int64, copy=True)
    out[flags, -hash_count:] = 0
    return out


def score_items(row_scores: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Item scores from the student's per-row scores (V,): the sum over an item's rows.

    rows (C, L [+ k]) from `sid_rows` -> (C,). Row 0 (padding) contributes nothing, so an item
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
    hash_count: int = 1  # hashed rows per item (bundles before it have one)

    @property
    def levels(self) -> int:
        return len(self.level_sizes)

    def record(self) -> dict[str, Any]:
        """The manifest's `extra.student` for this spec."""
        return {"kind": "sid", "model": SID_MODEL, "level_sizes": list(self.level_sizes),
                "hash_buckets": self.hash_buckets, "hash_count": self.hash_count,
                "max_len": self.max_len}

    @classmethod
    def from_extra(cls, extra: dict[str, Any]) -> SidSpec | None:
        """The spec of a manifest's `extra`; None for a table student's bundle."""
        rec = extra.get("student")
        if not isinstance(rec, dict) or rec.get("kind") != "sid":
            return None
        sizes = tuple(int(k) for k in rec["level_sizes"])
        if not sizes or min(sizes) < 1:
            raise ValueError(f"level_sizes must list positive sizes, got {list(sizes)}")
        count = int(rec.get("hash_count", 1))
        if count < 1:
            raise ValueError(f"hash_count must be at least 1, got {count}")
        return cls(sizes, int(rec["hash_buckets"]), int(rec["max_len"]), count)

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
        items flagged `new` (C,) without their hash rows (`drop_hash`)."""
        rows = sid_rows(codes, self.level_sizes, self.hash_buckets,
                        np.asarray(item_ids, dtype=np.int64), self.hash_count)
        return rows if new is None else drop_hash(rows, new, self.hash_buckets, self.hash_count)


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
