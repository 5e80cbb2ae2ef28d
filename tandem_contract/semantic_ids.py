"""Semantic ids as the semantic-id student reads them: one row of a small code table per level.

An item's semantic id is its residual k-means code (c1, c2, c3), 1-based per level (level 1 =
the intent token; tandemrec.models.intent_vocab). The semantic-id student keeps one embedding
per code of each level, plus optionally `hash_buckets` rows for a hashed residual of the item
id, all in one table: level l's code c is row offset_l + c, the hash bucket b is row
offset_L + b, and row 0 is padding. Nothing here grows with the catalog: the device turns the
semantic id it stores with each history event, or that the cloud sends with each candidate,
into rows (`sid_rows`) and sums the student's per-row scores (`score_items`). numpy only.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

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


def score_items(row_scores: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Item scores from the student's per-row scores (V,): the sum over an item's rows.

    rows (C, L [+ 1]) from `sid_rows` -> (C,). Row 0 (padding) contributes nothing, so an item
    scores on the levels it has.
    """
    s = np.asarray(row_scores, dtype=np.float32).copy()
    s[0] = 0.0
    return s[np.asarray(rows, dtype=np.int64)].sum(-1)
