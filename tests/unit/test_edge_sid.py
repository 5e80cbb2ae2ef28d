"""The semantic-id device's pieces: stored semantic ids, answer checks, its view for fusion."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pytest

from edge_client.device_store import MemoryDeviceStore
from edge_client.local_store import InteractionStore
from edge_client.sid_device import answer_codes, pool_ranking, sid_history, stored_pool
from edge_client.transport import CloudAnswer, CloudError, answer_from_json
from tandem_contract.semantic_ids import SidSpec, sid_device_side

pytestmark = pytest.mark.unit

SPEC = SidSpec((4, 3, 2), 0, 30)


def answer(codes: tuple[int, ...], levels: int = 3, new: tuple[bool, ...] = (),
           items: tuple[int, ...] = (5, 7)) -> CloudAnswer:
    return CloudAnswer(items, (-1.0,) * len(items), "v", (1,) * len(items), 10, codes, levels,
                       new)


def test_events_keep_their_semantic_ids_in_either_store(tmp_path: Path) -> None:
    with InteractionStore(tmp_path / "s.db") as db:
        for store in (db, MemoryDeviceStore()):
            store.append(3, semantic_id=(1, 2, 2))
            store.append(9)
            store.extend([4, 6], [None, np.array([4, 3, 1])])
            items, sids = store.events()
            assert items.tolist() == [3, 9, 4, 6]
            assert sids == [(1, 2, 2), None, None, (4, 3, 1)]
            for bad in ((), (0, 1), (1.5,), "12", (True,)):
                with pytest.raises(ValueError, match="semantic_id"):
                    store.append(2, semantic_id=bad)  # type: ignore[arg-type]
            with pytest.raises(ValueError, match="semantic ids for"):
                store.extend([1, 2], [(1, 1, 1)])
            assert store.history().tolist() == [3, 9, 4, 6]  # nothing half written


def test_a_store_from_before_semantic_ids_gains_them_empty(tmp_path: Path) -> None:
    db = sqlite3.connect(tmp_path / "old.db")
    db.executescript("""
        CREATE TABLE interactions (seq INTEGER PRIMARY KEY AUTOINCREMENT,
                                   item_id INTEGER NOT NULL CHECK (item_id > 0), ts REAL NOT NULL);
        CREATE TABLE pool (id INTEGER PRIMARY KEY CHECK (id = 1), version TEXT NOT NULL,
                           items BLOB NOT NULL, scores BLOB NOT NULL, saved_at REAL NOT NULL);
        INSERT INTO interactions (item_id, ts) VALUES (7, 1.0);
    """)
    db.close()
    with InteractionStore(tmp_path / "old.db") as store:
        assert store.events()[1] == [None]
        store.append(8, semantic_id=(2, 1, 1))
        assert store.events()[1] == [None, (2, 1, 1)]


def test_the_pool_keeps_the_answers_semantic_ids_and_flags(tmp_path: Path) -> None:
    codes, new = np.array([[1, 2, 1], [4, 3, 2]]), np.array([False, True])
    with InteractionStore(tmp_path / "s.db") as db:
        for store in (db, MemoryDeviceStore()):
            store.save_pool("v", [5, 7], [-1.0, -2.0])
            assert store.load_sid_pool() is None  # a table device's pool carries none
            store.save_pool("v", [5, 7], [-1.0, -2.0], codes, new)
            pool = store.load_sid_pool()
            assert pool is not None and pool.version == "v" and pool.items.tolist() == [5, 7]
            assert pool.codes.tolist() == codes.tolist() and pool.new.tolist() == [False, True]
            with pytest.raises(ValueError, match="semantic ids of shape"):
                store.save_pool("v", [5, 7], [-1.0, -2.0], codes[:1], new)
    assert stored_pool(pool, SidSpec((4, 3), 0, 30)) is None  # other levels: unreadable


@pytest.mark.parametrize(("bad", "says"), [
    (answer((1, 2, 1, 4, 3)), "5 codes for 2 items"),
    (answer((1, 2, 1, 5, 3, 2)), "outside 1..size"),
    (answer((1, 2, 1, 0, 3, 2)), "outside 1..size"),
    (answer((1, 2, 1, 4), levels=2), "2 semantic-id levels"),
    (answer((1, 2, 1, 4, 3, 2), new=(True,)), "1 new-item flags"),
])
def test_a_malformed_answer_is_a_bad_response(bad: CloudAnswer, says: str) -> None:
    with pytest.raises(CloudError, match=says) as err:
        answer_codes(bad, SPEC)
    assert err.value.code == "BAD_RESPONSE" and err.value.retryable


def test_an_answers_semantic_ids_read_alike_from_json() -> None:
    body = {"item_ids": [5, 7], "scores": [-1.0, -1.0], "model_version": "v",
            "item_intents": [1, 1], "catalog_size": 10, "item_codes": [1, 2, 1, 4, 3, 2],
            "code_levels": 3, "item_new": [False, True]}
    got = answer_from_json(body)
    assert got == answer((1, 2, 1, 4, 3, 2), new=(False, True))
    codes, new = answer_codes(got, SPEC)
    assert codes.tolist() == [[1, 2, 1], [4, 3, 2]] and new.tolist() == [False, True]
    assert answer_codes(answer((1, 2, 1, 4, 3, 2)), SPEC)[1].tolist() == [False, False]
    with pytest.raises(ValueError, match="booleans"):
        answer_from_json({**body, "item_new": [0, 1]})


def test_events_without_a_usable_semantic_id_are_kept_but_not_read() -> None:
    store = MemoryDeviceStore([3, 4, 5, 6], [(1, 1, 1), None, (1, 1), (4, 3, 2)])
    hist = sid_history(store.events(), SPEC)
    assert hist.items.tolist() == [3, 4, 5, 6]  # all excluded from ranking
    assert hist.read.tolist() == [3, 6] and hist.codes.tolist() == [[1, 1, 1], [4, 3, 2]]


def test_items_flagged_new_are_unknown_to_the_device() -> None:
    rows = np.arange(10, dtype=np.float32)  # 1 + 4 + 3 + 2 rows
    items = np.array([2, 5, 7, 5])  # 5 twice: in the answer and in the pool
    codes = np.array([[1, 1, 1], [2, 3, 1], [4, 1, 2], [2, 3, 1]])
    new = np.array([False, False, True, False])
    d, view = sid_device_side(rows, items, codes, new, 8, SPEC)
    assert np.flatnonzero(view.known).tolist() == [2, 5]
    assert np.isfinite(d).nonzero()[0].tolist() == [2, 5]
    # item 2: rows 1, 5, 8; item 5: rows 2, 7, 8 (log-softmax over the two)
    np.testing.assert_allclose(d[[2, 5]], np.log(np.exp([14, 17]) / np.exp([14, 17]).sum()))
    assert np.exp(view.log_intent_size).round().tolist() == [1, 2, 2, 1, 1]  # known + 1


def test_edge_only_ranks_the_pool_from_semantic_ids() -> None:
    store = MemoryDeviceStore()
    store.save_pool("v", [5, 7, 9], [-1.0, -1.0, -1.0],
                    np.array([[1, 1, 1], [4, 3, 2], [2, 1, 1]]), np.zeros(3, bool))
    rows = np.arange(10, dtype=np.float32)
    items, scores = pool_ranking(rows, store.load_sid_pool(), np.array([7]), 5, SPEC)
    assert items.tolist() == [9, 5] and scores.tolist() == [15.0, 14.0]  # 7 was seen
    assert len(pool_ranking(rows, None, np.array([7]), 5, SPEC)[0]) == 0
