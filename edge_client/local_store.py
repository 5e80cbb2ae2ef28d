"""The device's private interaction log and offline candidate pool, in SQLite.

Item ids never leave the device; this is where they live. Writes are durable once acknowledged
(WAL + synchronous=FULL, committed before returning), so a killed app loses no interaction.
"""

from __future__ import annotations

import math
import numbers
import sqlite3
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Final

import numpy as np

_MAX_ID: Final[int] = (1 << 63) - 1  # SQLite INTEGER is a signed 64-bit value
_SCHEMA: Final[str] = """
CREATE TABLE IF NOT EXISTS interactions (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    item_id INTEGER NOT NULL CHECK (item_id > 0),
    ts REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS pool (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    version TEXT NOT NULL,
    items BLOB NOT NULL,
    scores BLOB NOT NULL,
    saved_at REAL NOT NULL
);
"""


def _item_id(value: object) -> int:
    """A valid item id as a Python int, or ValueError saying what is wrong with it."""
    # bool is an Integral but True is never meant as item 1.
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"item_id must be a positive int, got {type(value).__name__} {value!r}")
    item = int(value)
    if not 0 < item <= _MAX_ID:
        raise ValueError(f"item_id must be a positive int below 2**63, got {item}")
    return item


def _timestamp(ts: float | None) -> float:
    if ts is None:
        return time.time()
    if not math.isfinite(ts):
        raise ValueError(f"ts must be a finite number of seconds, got {ts!r}")
    return float(ts)


class InteractionStore:
    """Append-only interaction history plus the last candidate pool, for one user on one device.

    One connection guarded by a lock: calls from any thread are serialised, and SQLite never
    sees two writers from this process.
    """

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        # isolation_level=None: no implicit transactions; every write below opens its own.
        self._conn: sqlite3.Connection | None = sqlite3.connect(
            self.path, isolation_level=None, check_same_thread=False
        )
        self._conn.execute("PRAGMA journal_mode=WAL")
        # FULL fsyncs the WAL on every commit, so an acknowledged append survives power loss too.
        self._conn.execute("PRAGMA synchronous=FULL")
        self._conn.executescript(_SCHEMA)

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise ValueError(f"interaction store {self.path} is closed")
        return self._conn

    # -- interactions -------------------------------------------------------------------------

    def append(self, item_id: int, ts: float | None = None) -> int:
        """Record one interaction and return its sequence number once it is committed."""
        item, when = _item_id(item_id), _timestamp(ts)
        with self._lock:
            cur = self._db().execute(
                "INSERT INTO interactions (item_id, ts) VALUES (?, ?)", (item, when)
            )
            seq = cur.lastrowid
        assert seq is not None
        return seq

    def extend(self, items: Sequence[int]) -> None:
        """Record several interactions in one transaction: all of them or none."""
        rows = [(_item_id(i), time.time()) for i in items]
        if not rows:
            return
        with self._lock:
            db = self._db()
            db.execute("BEGIN IMMEDIATE")
            try:
                db.executemany("INSERT INTO interactions (item_id, ts) VALUES (?, ?)", rows)
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    def history(self, limit: int | None = None) -> np.ndarray:
        """Item ids (int64), oldest first; only the last ``limit`` when given."""
        if limit is not None and limit < 0:
            raise ValueError(f"limit must be >= 0 or None, got {limit}")
        with self._lock:
            if limit is None:
                rows = self._db().execute("SELECT item_id FROM interactions ORDER BY seq")
                ids = [r[0] for r in rows]
            else:
                rows = self._db().execute(
                    "SELECT item_id FROM interactions ORDER BY seq DESC LIMIT ?", (limit,)
                )
                ids = [r[0] for r in rows][::-1]
        return np.asarray(ids, dtype=np.int64)

    def __len__(self) -> int:
        with self._lock:
            (n,) = self._db().execute("SELECT COUNT(*) FROM interactions").fetchone()
        return int(n)

    # -- offline candidate pool ---------------------------------------------------------------

    def save_pool(self, version: str, items: Sequence[int], scores: Sequence[float]) -> None:
        """Replace the stored candidate pool (what the device serves when the cloud is away)."""
        if not isinstance(version, str) or not version:
            raise ValueError(f"pool version must be a non-empty str, got {version!r}")
        item_arr = np.asarray([_item_id(i) for i in items], dtype=np.int64)
        score_arr = np.asarray(scores, dtype=np.float64).reshape(-1)
        if len(item_arr) != len(score_arr):
            raise ValueError(f"pool has {len(item_arr)} items but {len(score_arr)} scores")
        row = (version, item_arr.astype("<i8").tobytes(), score_arr.astype("<f8").tobytes(),
               time.time())
        with self._lock:
            # A single-row REPLACE is one atomic statement: readers see the old pool or the new.
            self._db().execute(
                "INSERT OR REPLACE INTO pool (id, version, items, scores, saved_at) "
                "VALUES (1, ?, ?, ?, ?)",
                row,
            )

    def load_pool(self) -> tuple[str, np.ndarray, np.ndarray, float] | None:
        """(version, items int64, scores float64, saved_at unix seconds), or None if never saved."""
        with self._lock:
            row = self._db().execute(
                "SELECT version, items, scores, saved_at FROM pool WHERE id = 1"
            ).fetchone()
        if row is None:
            return None
        version, items, scores, saved_at = row
        return (
            str(version),
            np.frombuffer(items, dtype="<i8").astype(np.int64),
            np.frombuffer(scores, dtype="<f8").astype(np.float64),
            float(saved_at),
        )

    # -- lifecycle ----------------------------------------------------------------------------

    def close(self) -> None:
        """Close the connection; further calls raise ValueError. Safe to call twice."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def __enter__(self) -> InteractionStore:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
