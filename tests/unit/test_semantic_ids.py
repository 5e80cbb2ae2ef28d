"""Semantic ids as rows of the semantic-id student's code table (tandem_contract, numpy only)."""

import numpy as np
import pytest

from tandem_contract.semantic_ids import (
    SidSpec,
    drop_hash,
    hash_bucket,
    score_items,
    sid_device_side,
    sid_rows,
    table_rows,
)

pytestmark = pytest.mark.unit
LEVELS = [6, 4, 3]


def test_rows_are_offset_per_level_with_padding_at_zero():
    codes = np.array([[0, 0, 0], [1, 1, 1], [6, 4, 3]])
    np.testing.assert_array_equal(sid_rows(codes, LEVELS), [[0, 0, 0], [1, 7, 11], [6, 10, 13]])
    assert table_rows(LEVELS, 0) == 14 and table_rows(LEVELS, 5) == 19
    with pytest.raises(ValueError, match="out of range"):
        sid_rows(np.array([[7, 1, 1]]), LEVELS)
    with pytest.raises(ValueError, match="levels"):
        sid_rows(np.array([[1, 1]]), LEVELS)


def test_hashed_rows_follow_the_levels_and_spread_evenly():
    rows = sid_rows(np.array([[0, 0, 0], [1, 1, 1], [2, 2, 2]]), LEVELS, 5, np.array([0, 1, 2]))
    assert rows.shape == (3, 4) and rows[0, 3] == 0
    assert set(rows[1:, 3].tolist()) <= set(range(14, 19))
    buckets = hash_bucket(np.arange(1, 10_001), 64)
    assert buckets.min() == 1 and buckets.max() == 64
    assert np.bincount(buckets)[1:].min() > 100  # about 156 ids a bucket
    again = hash_bucket(np.arange(1, 10_001), 64)  # stable: the same id, the same bucket
    np.testing.assert_array_equal(buckets, again)
    with pytest.raises(ValueError, match="item id"):
        sid_rows(np.array([[1, 1, 1]]), LEVELS, 5)


def test_item_scores_sum_their_rows_and_padding_counts_nothing():
    row_scores = np.arange(14, dtype=np.float32)  # row r scores r
    rows = sid_rows(np.array([[1, 1, 1], [6, 4, 3], [2, 0, 0]]), LEVELS)
    np.testing.assert_array_equal(score_items(row_scores, rows), [1 + 7 + 11, 6 + 10 + 13, 2])


def test_new_items_score_without_their_hash_row():
    spec = SidSpec(tuple(LEVELS), 5, 10)
    codes, items = np.array([[1, 1, 1], [2, 2, 2]]), np.array([1, 2])
    rows = spec.rows(codes, items)
    flagged = spec.rows(codes, items, np.array([False, True]))
    np.testing.assert_array_equal(flagged[0], rows[0])  # a known item keeps its bucket
    np.testing.assert_array_equal(flagged[1], [*rows[1, :3], 0])
    np.testing.assert_array_equal(drop_hash(rows, np.array([True, True]), 0), rows)  # no hash
    row_scores = np.arange(table_rows(LEVELS, 5), dtype=np.float32)
    row_scores[19 - 5:] = 100.0  # the buckets dominate a known item's score
    logp, view = sid_device_side(row_scores, items, codes, np.array([False, True]), 3, spec)
    assert view.known[1] and not view.known[2]
    own = score_items(row_scores, flagged)  # the new item: its three levels only
    assert own[1] == 2 + 8 + 12 and own[0] > 100


def test_a_second_hash_is_independent_of_the_first():
    ids = np.arange(1, 10_001)
    first, second = hash_bucket(ids, 64), hash_bucket(ids, 64, 1)
    assert second.min() == 1 and second.max() == 64 and np.bincount(second)[1:].min() > 100
    np.testing.assert_array_equal(hash_bucket(ids, 64, 1), second)  # stable too
    np.testing.assert_array_equal(hash_bucket(ids.reshape(100, 100), 64, 1), second.reshape(
        100, 100))  # any shape
    # Of the id pairs that share a bucket under the first hash, about 1 in 64 share one under
    # the second: the buckets they share tell apart the items the first one merged.
    same_first = first[:, None] == first[None, :]
    same_second = second[:, None] == second[None, :]
    off = ~np.eye(len(ids), dtype=bool)
    share = (same_first & same_second & off).sum() / (same_first & off).sum()
    assert 0.5 / 64 < share < 2 / 64


def test_two_hashes_give_two_rows_and_new_items_drop_both():
    codes, items = np.array([[1, 1, 1], [2, 2, 2]]), np.array([1, 2])
    rows = sid_rows(codes, LEVELS, 5, items, hash_count=2)
    assert rows.shape == (2, 5)
    np.testing.assert_array_equal(rows[:, :4], sid_rows(codes, LEVELS, 5, items))  # hash 0 kept
    assert ((rows[:, 3:] >= 14) & (rows[:, 3:] < 19)).all()
    spec = SidSpec(tuple(LEVELS), 5, 10, hash_count=2)
    np.testing.assert_array_equal(spec.rows(codes, items), rows)
    flagged = spec.rows(codes, items, np.array([False, True]))
    np.testing.assert_array_equal(flagged[1], [*rows[1, :3], 0, 0])
    np.testing.assert_array_equal(flagged[0], rows[0])
    with pytest.raises(ValueError, match="hash_count"):
        sid_rows(codes, LEVELS, 5, items, hash_count=0)


def test_the_manifest_records_the_hash_count_and_old_bundles_read_as_one():
    spec = SidSpec((6, 4, 3), 16, 30, hash_count=2)
    assert SidSpec.from_extra({"student": spec.record()}) == spec
    old = {k: v for k, v in spec.record().items() if k != "hash_count"}
    assert SidSpec.from_extra({"student": old}) == SidSpec((6, 4, 3), 16, 30, 1)
    with pytest.raises(ValueError, match="hash_count"):
        SidSpec.from_extra({"student": {**spec.record(), "hash_count": 0}})
