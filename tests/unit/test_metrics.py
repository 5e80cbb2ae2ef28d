"""Ranking metrics checked against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tandemrec.eval.metrics import (
    MISS_RANK,
    metrics_from_ranks,
    sample_negatives,
    sampled_ranks,
    target_ranks,
)

pytestmark = pytest.mark.unit


def test_single_rank_values() -> None:
    # rank 0: ndcg 1/log2(2) = 1, mrr 1/1 = 1; rank 2: ndcg 1/log2(4) = 0.5, mrr 1/3.
    m0 = metrics_from_ranks(np.array([0]), ks=(1, 5))
    assert m0["hr@1"] == 1.0 and m0["ndcg@1"] == 1.0 and m0["mrr@1"] == 1.0
    m2 = metrics_from_ranks(np.array([2]), ks=(2, 3))
    # rank 2 is outside top-2 (positions 0, 1) but inside top-3.
    assert m2["hr@2"] == 0.0 and m2["ndcg@2"] == 0.0 and m2["mrr@2"] == 0.0
    assert m2["hr@3"] == 1.0
    assert m2["ndcg@3"] == pytest.approx(0.5)
    assert m2["mrr@3"] == pytest.approx(1 / 3)


def test_three_user_averages() -> None:
    # ranks 0, 3, 12 with ks=(5, 10, 20):
    #   hr@5  = (1 + 1 + 0) / 3 = 2/3;   hr@10 = 2/3;   hr@20 = 3/3 = 1
    #   ndcg@5 = (1 + 1/log2(5)) / 3 = (1 + 0.430677) / 3 = 0.476892
    #   ndcg@20 = (1 + 1/log2(5) + 1/log2(14)) / 3 = (1 + 0.430677 + 0.262650) / 3 = 0.564442
    #   mrr@5 = (1 + 1/4) / 3 = 0.416667;   mrr@20 = (1 + 1/4 + 1/13) / 3 = 0.442308
    m = metrics_from_ranks(np.array([0, 3, 12]))
    assert m["n_users"] == 3
    assert m["hr@5"] == pytest.approx(2 / 3)
    assert m["hr@10"] == pytest.approx(2 / 3)
    assert m["hr@20"] == pytest.approx(1.0)
    assert m["ndcg@5"] == pytest.approx((1 + 1 / math.log2(5)) / 3)
    assert m["ndcg@5"] == pytest.approx(0.476892, abs=1e-6)
    assert m["ndcg@20"] == pytest.approx(0.564442, abs=1e-6)
    assert m["mrr@5"] == pytest.approx(0.416667, abs=1e-6)
    assert m["mrr@20"] == pytest.approx(0.442308, abs=1e-6)
    assert set(m) == {f"{n}@{k}" for n in ("hr", "ndcg", "mrr") for k in (5, 10, 20)} | {"n_users"}


def test_target_ranks_basic_and_padding_ignored() -> None:
    # Column 0 is padding with a huge score: it must never count as a competitor.
    scores = np.array(
        [
            [99.0, 0.1, 0.9, 0.5, 0.3],  # target 3 (0.5): only item 2 (0.9) is higher -> 1
            [99.0, 0.8, 0.2, 0.4, 0.1],  # target 1 (0.8): best -> 0
            [99.0, 0.1, 0.2, 0.3, 0.4],  # target 1 (0.1): worst of 4 -> 3
        ]
    )
    np.testing.assert_array_equal(target_ranks(scores, np.array([3, 1, 1])), [1, 0, 3])


def test_history_excluded_but_never_the_target() -> None:
    scores = np.array([[0.0, 0.9, 0.8, 0.5, 0.1]])
    # Without exclusion target 3 has items 1 and 2 above it -> rank 2.
    assert target_ranks(scores, np.array([3]))[0] == 2
    # History {1, 2} removed -> rank 0; listing the target (3) in history changes nothing.
    assert target_ranks(scores, np.array([3]), [np.array([1, 2])])[0] == 0
    assert target_ranks(scores, np.array([3]), [np.array([1, 2, 3, 3])])[0] == 0
    # Excluding a lower-scored item does not change the rank; padding id 0 in history is fine.
    assert target_ranks(scores, np.array([3]), [np.array([0, 4])])[0] == 2


def test_ties_are_pessimistic() -> None:
    # Target 2 (0.5) ties with items 1 and 3, item 4 is higher: rank = 1 (higher) + 2 (ties) = 3.
    scores = np.array([[0.0, 0.5, 0.5, 0.5, 0.7, 0.1]])
    assert target_ranks(scores, np.array([2]))[0] == 3
    # A constant-score model gets the worst rank, not the best.
    flat = np.zeros((1, 6))
    assert target_ranks(flat, np.array([1]))[0] == 4


def test_nan_scores_count_against_target() -> None:
    scores = np.array([[0.0, np.nan, 0.5, 0.1], [0.0, 0.9, np.nan, 0.1]])
    # User 0: NaN competitor beats the target 2 -> 1. User 1: NaN target is beaten by both -> 2.
    np.testing.assert_array_equal(target_ranks(scores, np.array([2, 2])), [1, 2])


def test_chunked_equals_unchunked_and_brute_force() -> None:
    rng = np.random.default_rng(1)
    n_users, n_items = 37, 50
    # Rounded scores force plenty of ties.
    scores = np.round(rng.random((n_users, n_items + 1)), 1)
    targets = rng.integers(1, n_items + 1, n_users)
    exclude = [rng.choice(np.arange(n_items + 1), rng.integers(0, 20)) for _ in range(n_users)]
    full = target_ranks(scores, targets, exclude, chunk_size=n_users)
    for chunk in (1, 5, 16):
        np.testing.assert_array_equal(
            target_ranks(scores, targets, exclude, chunk_size=chunk), full
        )
    for u in range(n_users):
        keep = np.ones(n_items + 1, dtype=bool)
        keep[[0, *exclude[u], targets[u]]] = False
        assert full[u] == np.sum(scores[u, keep] >= scores[u, targets[u]])


def test_target_ranks_rejects_bad_ids() -> None:
    scores = np.zeros((2, 4))
    with pytest.raises(ValueError):
        target_ranks(scores, np.array([0, 1]))  # padding is not a valid target
    with pytest.raises(ValueError):
        target_ranks(scores, np.array([1, 4]))  # out of range
    with pytest.raises(ValueError):
        target_ranks(scores, np.array([1, 2]), [np.array([1])])  # one list for two users


def test_sampled_is_deterministic_and_avoids_history() -> None:
    rng = np.random.default_rng(2)
    n_users, n_items = 20, 300
    targets = rng.integers(1, n_items + 1, n_users)
    history = [rng.choice(np.arange(1, n_items + 1), 100, replace=False) for _ in range(n_users)]
    negs = sample_negatives(n_items, targets, history, n_negatives=100, seed=7)
    assert negs.shape == (n_users, 100)
    for u in range(n_users):
        assert len(np.unique(negs[u])) == 100  # without replacement
        assert not np.isin(negs[u], history[u]).any()
        assert targets[u] not in negs[u] and 0 not in negs[u]
    np.testing.assert_array_equal(
        negs, sample_negatives(n_items, targets, history, n_negatives=100, seed=7, chunk_size=3)
    )
    assert not np.array_equal(negs, sample_negatives(n_items, targets, history, 100, seed=8))

    # History items score highest, the target next: a sampled history item would push it down.
    scores = rng.random((n_users, n_items + 1)) * 0.5
    scores[np.arange(n_users), targets] = 0.9
    for u in range(n_users):
        scores[u, history[u]] = 5.0
    ranks = sampled_ranks(scores, targets, history, n_negatives=100, seed=7)
    np.testing.assert_array_equal(ranks, 0)
    np.testing.assert_array_equal(ranks, sampled_ranks(scores, targets, history, 100, seed=7))


def test_sampled_rank_counts_higher_negatives() -> None:
    # 4 items, target 1, no history: all 3 others are sampled; items 2 and 3 beat the target.
    scores = np.array([[0.0, 0.5, 0.6, 0.5, 0.1]])
    assert sampled_ranks(scores, np.array([1]), None, n_negatives=3)[0] == 2
    with pytest.raises(ValueError):
        sampled_ranks(scores, np.array([1]), None, n_negatives=4)  # only 3 allowed items


def test_miss_rank_counts_as_a_miss_at_every_cutoff() -> None:
    ranks = np.array([2, MISS_RANK, MISS_RANK])
    assert MISS_RANK >= 10**6
    m = metrics_from_ranks(ranks, ks=(3,))
    assert m["hr@3"] == pytest.approx(1 / 3)
    assert m["ndcg@3"] == pytest.approx((1 / math.log2(4)) / 3)
