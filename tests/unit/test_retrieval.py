"""Intent-token retrieval: weighted quotas per intent, then popular items."""

import numpy as np
import pytest

from tandemrec.retrieval import IntentIndex

pytestmark = pytest.mark.unit

# items 1..9; intents: 1 -> {1,2,3}, 2 -> {4,5,6}, 3 -> {7,8,9}
INTENT = np.array([0, 1, 1, 1, 2, 2, 2, 3, 3, 3])
POP = np.array([0, 5, 9, 1, 3, 8, 2, 7, 6, 4])


def test_lists_sorted_by_popularity():
    idx = IntentIndex(INTENT, POP)
    assert idx.items_by_intent[1].tolist() == [2, 1, 3]
    assert idx.items_by_intent[2].tolist() == [5, 4, 6]
    assert idx.popular.tolist() == [2, 5, 7, 8, 1, 9, 4, 6, 3]


def test_weighted_quotas_without_popular_share():
    idx = IntentIndex(INTENT, POP)
    # 4 slots, weights 0.75 / 0.25 -> 3 from intent 2, 1 from intent 1
    got = idx.candidates(np.array([2, 1]), np.array([0.75, 0.25]), n=4, popular_share=0.0)
    assert got.tolist() == [5, 4, 6, 2]


def test_popular_fill_and_no_duplicates():
    idx = IntentIndex(INTENT, POP)
    got = idx.candidates(np.array([3]), np.array([1.0]), n=6, popular_share=0.5)
    assert got.tolist()[:3] == [7, 8, 9]
    assert len(set(got.tolist())) == 6
    assert got.tolist()[3:] == [2, 5, 1]  # most popular items not already chosen


def test_small_intents_leave_slots_to_others():
    idx = IntentIndex(INTENT, POP)
    got = idx.candidates(np.array([1, 2]), np.array([0.9, 0.1]), n=6, popular_share=0.0)
    assert sorted(got.tolist()) == [1, 2, 3, 4, 5, 6]
