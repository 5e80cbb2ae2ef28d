"""Leave-one-out split, popularity counts and the synthetic generator."""

from __future__ import annotations

from collections import Counter, defaultdict

import numpy as np
import pytest

from tandemrec.data import PAD, SequenceDataset, item_popularity, leave_one_out, make_synthetic

pytestmark = pytest.mark.unit


def dataset(*seqs: list[int]) -> SequenceDataset:
    n_items = max(max(s) for s in seqs)
    return SequenceDataset(
        name="toy",
        sequences=[np.array(s, dtype=np.int64) for s in seqs],
        n_items=n_items,
        user_ids=[str(u) for u in range(len(seqs))],
        item_ids=[""] + [str(i) for i in range(1, n_items + 1)],
    )


def test_leave_one_out_positions() -> None:
    split = leave_one_out(dataset([1, 2, 3, 4, 5], [6], [7, 8], [3, 2, 1]))
    assert split.eval_users.tolist() == [0, 3]
    assert [t.tolist() for t in split.train] == [[1, 2, 3], [6], [7, 8], [3]]
    assert [v.tolist() for v in split.valid_input] == [[1, 2, 3], [3]]
    assert split.valid_target.tolist() == [4, 2]
    assert [t.tolist() for t in split.test_input] == [[1, 2, 3, 4], [3, 2]]
    assert split.test_target.tolist() == [5, 1]
    assert split.eval_users.dtype == split.test_target.dtype == np.int64


def test_short_users_train_on_everything_and_are_not_evaluated() -> None:
    split = leave_one_out(dataset([1], [2, 3]))
    assert split.eval_users.size == 0 and split.test_target.size == 0
    assert [t.tolist() for t in split.train] == [[1], [2, 3]]
    assert split.valid_input == [] and split.test_input == []


def test_split_leaks_no_target_into_train() -> None:
    ds = make_synthetic(n_users=60, n_items=40, min_len=1, max_len=12, seed=5)
    split = leave_one_out(ds)
    assert len(split.valid_input) == len(split.test_input) == split.eval_users.size
    evaluated = set(split.eval_users.tolist())
    for u, seq in enumerate(ds.sequences):
        if u not in evaluated:
            assert len(seq) < 3 and np.array_equal(split.train[u], seq)
    for k, u in enumerate(split.eval_users.tolist()):
        seq, train = ds.sequences[u], split.train[u]
        assert len(train) == len(seq) - 2  # a strict prefix that stops before both targets
        assert np.array_equal(train, seq[: len(train)])
        assert split.valid_target[k] == seq[len(train)]
        assert split.test_target[k] == seq[len(train) + 1]
        assert np.array_equal(split.valid_input[k], train)
        assert np.array_equal(split.test_input[k], seq[:-1])


def test_sampled_validation_users_train_on_their_second_to_last_item() -> None:
    ds = make_synthetic(n_users=60, n_items=40, min_len=1, max_len=12, seed=5)
    full = leave_one_out(ds)
    split = leave_one_out(ds, val_users=10, seed=3)
    assert split.valid_target.size == len(split.valid_input) == 10
    # Test is the same for every user whatever the validation sample.
    assert np.array_equal(split.eval_users, full.eval_users)
    assert np.array_equal(split.test_target, full.test_target)
    validated = 0
    for k, u in enumerate(split.eval_users.tolist()):
        seq, train = ds.sequences[u], split.train[u]
        assert split.test_target[k] == seq[-1]
        assert len(train) in (len(seq) - 2, len(seq) - 1)  # the test target never trains
        assert np.array_equal(train, seq[: len(train)])
        validated += len(train) == len(seq) - 2
    assert validated == 10
    # Each validation pair is a held-out (prefix, next item) of a user that trains on the prefix.
    held = {(tuple(v.tolist()), int(t)) for v, t in zip(split.valid_input, split.valid_target,
                                                         strict=True)}
    assert held <= {(tuple(ds.sequences[u][:-2].tolist()), int(ds.sequences[u][-2]))
                    for u in split.eval_users.tolist()}
    again = leave_one_out(ds, val_users=10, seed=3)
    assert np.array_equal(again.valid_target, split.valid_target)
    assert np.array_equal(leave_one_out(ds, val_users=10_000).valid_target, full.valid_target)
    with pytest.raises(ValueError, match="val_users"):
        leave_one_out(ds, val_users=-1)


def test_tuning_users_are_validated_users_kept_from_early_stopping() -> None:
    ds = make_synthetic(n_users=80, n_items=40, min_len=3, max_len=12, seed=5)
    for val_users in (0, 20):
        plain = leave_one_out(ds, val_users=val_users, seed=3)
        split = leave_one_out(ds, val_users=val_users, seed=3, tune_share=0.5)
        n_val = len(plain.valid_target)
        assert len(split.tune_target) == round(0.5 * n_val) == len(split.tune_input)
        assert len(split.valid_target) + len(split.tune_target) == n_val
        # Same training data and test: only which held-out pairs early-stop changes.
        assert all(np.array_equal(a, b) for a, b in zip(split.train, plain.train, strict=True))
        assert np.array_equal(split.test_target, plain.test_target)
        def pairs(inputs: list[np.ndarray], targets: np.ndarray) -> Counter:
            return Counter((tuple(v.tolist()), int(t))
                           for v, t in zip(inputs, targets, strict=True))
        assert (pairs(split.valid_input, split.valid_target)
                + pairs(split.tune_input, split.tune_target)
                == pairs(plain.valid_input, plain.valid_target))
        inputs, targets = split.fusion_users()
        assert targets is split.tune_target and inputs is split.tune_input
    assert plain.fusion_users()[1] is plain.valid_target  # no tuning users: early-stopping ones
    with pytest.raises(ValueError, match="tune_share"):
        leave_one_out(ds, tune_share=1.0)


def test_item_popularity_counts_train_only() -> None:
    split = leave_one_out(dataset([1, 1, 2, 3, 3], [2, 3]))
    pop = item_popularity(split.train, n_items=4)
    assert pop.tolist() == [0, 2, 2, 1, 0]  # user 1 is too short to hold out
    assert pop.shape == (5,) and pop[PAD] == 0
    assert item_popularity([], 3).tolist() == [0, 0, 0, 0]
    with pytest.raises(ValueError, match="0..2"):
        item_popularity([np.array([3])], 2)


def test_synthetic_is_deterministic_and_well_formed() -> None:
    a = make_synthetic(seed=1)
    b = make_synthetic(seed=1)
    c = make_synthetic(seed=2)
    assert all(np.array_equal(x, y) for x, y in zip(a.sequences, b.sequences, strict=True))
    assert any(not np.array_equal(x, y) for x, y in zip(a.sequences, c.sequences, strict=False))
    assert a.n_users == 200 and a.n_items == 100
    assert all(5 <= len(s) <= 40 and s.min() >= 1 and s.max() <= 100 for s in a.sequences)
    assert a.item_texts is not None and len(a.item_texts) == 101 and a.item_texts[0] == ""
    assert a.item_texts[7] == "item 7 cluster 0 widget"
    assert a.item_texts[100].startswith("item 100 cluster 4 ")


def test_synthetic_rewards_sequence_models_over_popularity() -> None:
    ds = make_synthetic(seed=0)
    split = leave_one_out(ds)
    top10 = set(np.argsort(-item_popularity(split.train, ds.n_items))[:10].tolist())
    follows: dict[int, Counter[int]] = defaultdict(Counter)
    for seq in split.train:
        for prev, nxt in zip(seq[:-1].tolist(), seq[1:].tolist(), strict=True):
            follows[prev][nxt] += 1
    targets = split.test_target.tolist()
    pop_hits = np.mean([t in top10 for t in targets])
    markov_hits = np.mean(
        [
            t in {i for i, _ in follows[int(inp[-1])].most_common(10)}
            for inp, t in zip(split.test_input, targets, strict=True)
        ]
    )
    assert markov_hits > pop_hits + 0.4


def test_synthetic_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="n_clusters"):
        make_synthetic(n_items=3, n_clusters=5)
    with pytest.raises(ValueError, match="min_len"):
        make_synthetic(min_len=10, max_len=5)
