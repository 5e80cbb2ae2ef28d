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


def _reference(idx, tokens, weights, n, share):
    """The top-up as first written: np.isin over the n most popular items."""
    w = weights / weights.sum()
    slots = int(round(n * (1.0 - share)))
    lists = [idx.items_by_intent[int(t)] for t in tokens]
    quotas = [int(np.ceil(wk * slots)) for wk in w]
    chosen, taken = [], 0
    for items, q in zip(lists, quotas, strict=True):
        chosen.append(items[:min(q, slots - taken)])
        taken += len(chosen[-1])
    for items, q in zip(lists, quotas, strict=True):
        if taken >= slots:
            break
        chosen.append(items[q:q + slots - taken])
        taken += len(chosen[-1])
    pool = np.concatenate(chosen)
    if len(np.unique(tokens)) < len(tokens):
        pool = pool[np.sort(np.unique(pool, return_index=True)[1])]
    head = idx.popular[:n]
    return np.concatenate([pool, head[~np.isin(head, pool)][: n - len(pool)]])[:n]


def test_the_popular_top_up_is_the_isin_one_on_random_requests():
    rng = np.random.default_rng(0)
    for trial in range(300):
        n_items = int(rng.integers(5, 400))
        k = int(rng.integers(1, min(30, n_items)))
        intent = np.concatenate([[0], rng.integers(1, k + 1, n_items)])
        intent[1:k + 1] = np.arange(1, k + 1)  # every token has an item
        idx = IntentIndex(intent, np.concatenate([[0], rng.integers(0, 50, n_items)]))
        tokens = rng.integers(1, k + 1, int(rng.integers(1, 9)))  # repeats now and then
        weights = rng.random(len(tokens)) + 0.01
        n, share = int(rng.integers(1, n_items + 50)), float(rng.choice([0.0, 0.1, 0.5]))
        got = idx.candidates(tokens, weights, n, share)
        np.testing.assert_array_equal(got, _reference(idx, tokens, weights, n, share),
                                      err_msg=f"trial {trial}")
