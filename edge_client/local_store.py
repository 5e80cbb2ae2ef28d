"""The device's private interaction log and offline candidate pool, in SQLite.

Item ids never leave the device; this is where they live. Writes are durable once acknowledged
(WAL + synchronous=FULL, committed before returning), so a killed app loses no interaction.
Each event may carry the item's semantic id (what a semantic-id student reads), and the pool
the semantic ids and new-item flags the cloud sent with it; a store written before those
columns existed gains them, empty, when opened.
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
from typing import Final, NamedTuple

import numpy as np

_MAX_ID: Final[int] = (1 << 63) - 1  # SQLite INTEGER is a signed 64-bit value
_SCHEMA: Final[str] = """
CREATE TABLE IF NOT EXISTS interactions (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    item_id INTEGER NOT NULL CHECK (item_id > 0),
    ts REAL NOT NULL,
    sid BLOB
);
CREATE TABLE IF NOT EXISTS pool (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    version TEXT NOT NULL,
    items BLOB NOT NULL,
    scores BLOB NOT NULL,
    saved_at REAL NOT NULL,
    codes BLOB,
    new BLOB
);
"""
# Columns added after the first release: (table, column, declaration) for stores made before.
_ADDED: Final[tuple[tuple[str, str, str], ...]] = (
    ("interactions", "sid", "BLOB"), ("pool", "codes", "BLOB"), ("pool", "new", "BLOB"))
_MAX_LEVELS: Final[int] = 64


def _item_id(value: object) -> int:
    """A valid item id as a Python int, or ValueError saying what is wrong with it."""
    # bool is an Integral but True is never meant as item 1.
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"item_id must be a positive int, got {type(value).__name__} {value!r}")
    item = int(value)
    if not 0 < item <= _MAX_ID:
        raise ValueError(f"item_id must be a positive int below 2**63, got {item}")
    return item


def check_semantic_id(value: object) -> tuple[int, ...] | None:
    """A semantic id as a tuple of codes (each >= 1), None for none, or ValueError."""
    if value is None:
        return None
    if isinstance(value, str | bytes) or not isinstance(value, Sequence | np.ndarray):
        raise ValueError(f"semantic_id must be a sequence of codes, got {value!r}")
    codes = list(value)
    if not 0 < len(codes) <= _MAX_LEVELS or any(
            isinstance(c, bool) or not isinstance(c, numbers.Integral) or not 0 < int(c) < 1 << 31
            for c in codes):
        raise ValueError(f"semantic_id must hold 1 to {_MAX_LEVELS} codes, each a positive int "
                         f"below 2**31, got {value!r}")
    return tuple(int(c) for c in codes)


def _sid_blob(value: object) -> bytes | None:
    sid = check_semantic_id(value)
    return None if sid is None else np.asarray(sid, dtype="<i4").tobytes()


def _timestamp(ts: float | None) -> float:
    if ts is None:
        return time.time()
    if not math.isfinite(ts):
        raise ValueError(f"ts must be a finite number of seconds, got {ts!r}")
    return float(ts)


class SidPool(NamedTuple):
    """The last answer's pool with what a semantic-id device needs of it."""

    version: str
    items: np.ndarray  # (C,) int64
    scores: np.ndarray  # (C,) the teacher's log-probabilities
    codes: np.ndarray  # (C, L) int64 semantic ids
    new: np.ndarray  # (C,) bool: newer than the paired device model


def pool_blobs(n: int, codes: np.ndarray | None,
              new: np.ndarray | None) -> tuple[bytes | None, bytes | None]:
    """A pool's semantic ids and new-item flags as stored (None: none sent), or ValueError."""
    if codes is None:
        return None, None
    c = np.asarray(codes, dtype=np.int64)
    flags = np.zeros(n, dtype=bool) if new is None else np.asarray(new, dtype=bool).reshape(-1)
    if c.ndim != 2 or len(c) != n or len(flags) != n or (n and c.shape[1] == 0):
        raise ValueError(f"pool has {n} items but semantic ids of shape {c.shape} and "
                         f"{len(flags)} new-item flags")
    return c.astype("<i4").tobytes(), flags.astype(np.uint8).tobytes()


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
        for table, column, decl in _ADDED:
            names = {r[1] for r in self._conn.execute(f"PRAGMA table_info({table})")}
            if column not in names:
                self._conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {decl}")

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise ValueError(f"interaction store {self.path} is closed")
        return self._conn

    # -- interactions -------------------------------------------------------------------------

    def append(self, item_id: int, ts: float | None = None,
               semantic_id: Sequence[int] | None = None) -> int:
        """Record one interaction (with the item's semantic id, if known) and return its
        sequence number once it is committed."""
        item, when, sid = _item_id(item_id), _timestamp(ts), _sid_blob(semantic_id)
        with self._lock:
            cur = self._db().execute(
                "INSERT INTO interactions (item_id, ts, sid) VALUES (?, ?, ?)", (item, when, sid)
            )
            seq = cur.lastrowid
        assert seq is not None
        return seq

    def extend(self, items: Sequence[int],
               semantic_ids: Sequence[Sequence[int] | None] | None = None) -> None:
        """Record several interactions (semantic ids parallel to them, or none) in one
        transaction: all of them or none."""
        sids = [None] * len(items) if semantic_ids is None else list(semantic_ids)
        if len(sids) != len(items):
            raise ValueError(f"{len(sids)} semantic ids for {len(items)} items")
        rows = [(_item_id(i), time.time(), _sid_blob(s)) for i, s in zip(items, sids, strict=True)]
        if not rows:
            return
        with self._lock:
            db = self._db()
            db.execute("BEGIN IMMEDIATE")
            try:
                db.executemany("INSERT INTO interactions (item_id, ts, sid) VALUES (?, ?, ?)",
                               rows)
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

    def events(self) -> tuple[np.ndarray, list[tuple[int, ...] | None]]:
        """(item ids, their semantic ids or None), oldest first, read together."""
        with self._lock:
            rows = self._db().execute("SELECT item_id, sid FROM interactions ORDER BY seq")
            pairs = [(r[0], r[1]) for r in rows]
        sids = [None if b is None else tuple(np.frombuffer(b, dtype="<i4").tolist())
                for _, b in pairs]
        return np.asarray([i for i, _ in pairs], dtype=np.int64), sids

    def __len__(self) -> int:
        with self._lock:
            (n,) = self._db().execute("SELECT COUNT(*) FROM interactions").fetchone()
        return int(n)

    # -- offline candidate pool ---------------------------------------------------------------

    def save_pool(self, version: str, items: Sequence[int], scores: Sequence[float],
                  codes: np.ndarray | None = None, new: np.ndarray | None = None) -> None:
        """Replace the stored candidate pool (what the device serves when the cloud is away),
        with the items' semantic ids (C, L) and new-item flags (C,) when the cloud sent them."""
        if not isinstance(version, str) or not version:
            raise ValueError(f"pool version must be a non-empty str, got {version!r}")
        item_arr = np.asarray([_item_id(i) for i in items], dtype=np.int64)
        score_arr = np.asarray(scores, dtype=np.float64).reshape(-1)
        if len(item_arr) != len(score_arr):
            raise ValueError(f"pool has {len(item_arr)} items but {len(score_arr)} scores")
        code_blob, new_blob = pool_blobs(len(item_arr), codes, new)
        row = (version, item_arr.astype("<i8").tobytes(), score_arr.astype("<f8").tobytes(),
               time.time(), code_blob, new_blob)
        with self._lock:
            # A single-row REPLACE is one atomic statement: readers see the old pool or the new.
            self._db().execute(
                "INSERT OR REPLACE INTO pool (id, version, items, scores, saved_at, codes, new) "
                "VALUES (1, ?, ?, ?, ?, ?, ?)",
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

    def load_sid_pool(self) -> SidPool | None:
        """The stored pool with its semantic ids; None if none was saved with them."""
        with self._lock:
            row = self._db().execute(
                "SELECT version, items, scores, codes, new FROM pool WHERE id = 1"
            ).fetchone()
        if row is None or row[3] is None:
            return None
        items = np.frombuffer(row[1], dtype="<i8").astype(np.int64)
        codes = np.frombuffer(row[3], dtype="<i4").astype(np.int64)
        return SidPool(str(row[0]), items, np.frombuffer(row[2], dtype="<f8").astype(np.float64),
                       codes.reshape(len(items), -1) if len(items) else codes.reshape(0, 0),
                       np.frombuffer(row[4], dtype=np.uint8).astype(bool))

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
