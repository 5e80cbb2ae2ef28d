"""What the SDK needs of a device's store, and the in-memory one simulated devices use.

`edge_client.local_store.InteractionStore` is the persistent one (SQLite).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Protocol

import numpy as np

from edge_client.local_store import SidPool, check_semantic_id, pool_blobs


class DeviceStore(Protocol):
    """The private interaction log and the offline pool (`InteractionStore` persists both).

    Each event may carry the item's semantic id, and the pool the cloud's semantic ids and
    new-item flags: what a device with the semantic-id student reads.
    """

    def append(self, item_id: int, ts: float | None = None,
               semantic_id: Sequence[int] | None = None) -> int: ...
    def extend(self, items: Sequence[int],
               semantic_ids: Sequence[Sequence[int] | None] | None = None) -> None: ...
    def history(self, limit: int | None = None) -> np.ndarray: ...
    def events(self) -> tuple[np.ndarray, list[tuple[int, ...] | None]]: ...
    def save_pool(self, version: str, items: Sequence[int], scores: Sequence[float],
                  codes: np.ndarray | None = None, new: np.ndarray | None = None) -> None: ...
    def load_pool(self) -> tuple[str, np.ndarray, np.ndarray, float] | None: ...
    def load_sid_pool(self) -> SidPool | None: ...


class MemoryDeviceStore:
    """In-memory `DeviceStore` for simulated devices (nothing survives the process)."""

    def __init__(self, items: Sequence[int] = (),
                 semantic_ids: Sequence[Sequence[int] | None] | None = None) -> None:
        self._items: list[int] = []
        self._sids: list[tuple[int, ...] | None] = []
        self._pool: tuple[str, np.ndarray, np.ndarray, float] | None = None
        self._sid_pool: SidPool | None = None
        self.extend(items, semantic_ids)

    def append(self, item_id: int, ts: float | None = None,
               semantic_id: Sequence[int] | None = None) -> int:
        self._sids.append(check_semantic_id(semantic_id))
        self._items.append(int(item_id))
        return len(self._items)

    def extend(self, items: Sequence[int],
               semantic_ids: Sequence[Sequence[int] | None] | None = None) -> None:
        sids = [None] * len(items) if semantic_ids is None else list(semantic_ids)
        if len(sids) != len(items):
            raise ValueError(f"{len(sids)} semantic ids for {len(items)} items")
        checked = [check_semantic_id(s) for s in sids]
        self._items.extend(int(i) for i in items)
        self._sids.extend(checked)

    def history(self, limit: int | None = None) -> np.ndarray:
        h = np.asarray(self._items, dtype=np.int64)
        return h[-limit:] if limit else h

    def events(self) -> tuple[np.ndarray, list[tuple[int, ...] | None]]:
        return np.asarray(self._items, dtype=np.int64), list(self._sids)

    def save_pool(self, version: str, items: Sequence[int], scores: Sequence[float],
                  codes: np.ndarray | None = None, new: np.ndarray | None = None) -> None:
        item_arr = np.asarray(items, np.int64)
        pool_blobs(len(item_arr), codes, new)  # the SQLite store's checks
        self._pool = (version, item_arr, np.asarray(scores, np.float32), time.time())
        self._sid_pool = None if codes is None else SidPool(
            version, item_arr, np.asarray(scores, np.float64), np.asarray(codes, np.int64),
            np.zeros(len(item_arr), bool) if new is None else np.asarray(new, bool))

    def load_pool(self) -> tuple[str, np.ndarray, np.ndarray, float] | None:
        return self._pool

    def load_sid_pool(self) -> SidPool | None:
        return self._sid_pool
