"""The device's interaction log: order, limits, the offline pool, and durability under SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np
import pytest

from edge_client.local_store import InteractionStore

pytestmark = pytest.mark.unit

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_append_and_history_order_and_limit(tmp_path: Path) -> None:
    with InteractionStore(tmp_path / "s.db") as store:
        seqs = [store.append(i) for i in (5, 3, 9)]
        store.extend([7, 1])
        assert seqs == sorted(seqs)
        assert len(store) == 5
        h = store.history()
        assert h.dtype == np.int64
        assert h.tolist() == [5, 3, 9, 7, 1]
        assert store.history(limit=2).tolist() == [7, 1]
        assert store.history(limit=0).tolist() == []
        assert store.history(limit=100).tolist() == [5, 3, 9, 7, 1]
    with InteractionStore(tmp_path / "s.db") as again:  # persisted across reopen
        assert again.history().tolist() == [5, 3, 9, 7, 1]


def test_wal_and_full_sync_are_on(tmp_path: Path) -> None:
    with InteractionStore(tmp_path / "s.db") as store:
        db = store._db()
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL


@pytest.mark.parametrize("bad", [0, -3, 1.5, "7", True, None, 1 << 63])
def test_bad_item_id_is_refused(tmp_path: Path, bad: object) -> None:
    with InteractionStore(tmp_path / "s.db") as store:
        with pytest.raises(ValueError, match="item_id"):
            store.append(bad)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="item_id"):
            store.extend([4, bad])  # type: ignore[list-item]
        assert len(store) == 0  # extend is all or nothing


def test_numpy_ids_accepted(tmp_path: Path) -> None:
    with InteractionStore(tmp_path / "s.db") as store:
        store.extend(np.array([3, 4], dtype=np.int64))  # type: ignore[arg-type]
        store.append(np.int32(8))  # type: ignore[arg-type]
        assert store.history().tolist() == [3, 4, 8]


def test_pool_round_trip_and_replace(tmp_path: Path) -> None:
    with InteractionStore(tmp_path / "s.db") as store:
        assert store.load_pool() is None
        store.save_pool("v1", [4, 2, 9], [0.5, 0.25, -1.0])
        store.save_pool("v2", [11, 12], [2.0, 1.0])
    with InteractionStore(tmp_path / "s.db") as store:
        pool = store.load_pool()
        assert pool is not None
        version, items, scores, saved_at = pool
        assert version == "v2"
        assert items.dtype == np.int64 and items.tolist() == [11, 12]
        assert scores.dtype == np.float64 and scores.tolist() == [2.0, 1.0]
        assert saved_at > 0
        with pytest.raises(ValueError, match="scores"):
            store.save_pool("v3", [1, 2], [1.0])
        assert store.load_pool() is not None and store.load_pool()[0] == "v2"  # type: ignore[index]


def test_concurrent_appends_from_threads(tmp_path: Path) -> None:
    with InteractionStore(tmp_path / "s.db") as store:
        def worker(base: int) -> None:
            for i in range(20):
                store.append(base + i)

        threads = [threading.Thread(target=worker, args=(1000 * (t + 1),)) for t in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        h = store.history().tolist()
        assert sorted(h) == sorted(1000 * (t + 1) + i for t in range(4) for i in range(20))


def test_closed_store_raises(tmp_path: Path) -> None:
    store = InteractionStore(tmp_path / "s.db")
    store.close()
    store.close()
    with pytest.raises(ValueError, match="closed"):
        store.append(1)


_WRITER = textwrap.dedent(
    """
    import sys
    from edge_client.local_store import InteractionStore

    store = InteractionStore(sys.argv[1])
    for n in range(1, 1_000_000):
        store.append(n)
        print(f"acked {n}", flush=True)
    """
)


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_acknowledged_appends_survive_sigkill(tmp_path: Path) -> None:
    db = tmp_path / "crash.db"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    proc = subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(db)],
        cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    # A hung writer must not hang the suite.
    watchdog = threading.Timer(60, proc.kill)
    watchdog.start()
    acked = 0
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            acked = int(line.split()[1])
            if acked >= 50:
                os.kill(proc.pid, signal.SIGKILL)
                break
        # Lines already in the pipe were acknowledged before the kill landed.
        rest, err = proc.communicate(timeout=30)
    finally:
        watchdog.cancel()
    assert acked >= 50, err
    acked = max([acked, *(int(ln.split()[1]) for ln in rest.splitlines() if ln)])
    assert proc.returncode == -signal.SIGKILL
    with InteractionStore(db) as store:
        h = store.history().tolist()
    # Every acknowledged append is there, in order; at most the in-flight one more.
    assert acked <= len(h) <= acked + 1
    assert h == list(range(1, len(h) + 1))
