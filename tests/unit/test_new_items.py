"""The fresh-catalog protocol's data side: which items are new, and the device's view."""

import numpy as np
import pytest

from tandemrec.data.new_items import device_view, drop_new_targets, select_new_items
from tandemrec.data.types import LeaveOneOutSplit

pytestmark = pytest.mark.unit


def _seqs(*items: list[int]) -> list[np.ndarray]:
    return [np.array(s, dtype=np.int64) for s in items]


def test_draw_follows_popularity():
    # Items 1 and 2 hold 10^5 interactions each, items 3..10 one each: a draw of 2 is {1, 2}
    # (any other item has probability 8 / 200008 per draw, so the 20 seeds below all agree).
    train = _seqs([1] * 10**5 + [3, 4, 5, 6], [2] * 10**5 + [7, 8, 9, 10])
    for seed in range(20):
        new = select_new_items(train, n_items=10, share=0.2, seed=seed)
        assert np.flatnonzero(new).tolist() == [1, 2]


def test_zero_count_items_get_a_tiny_weight_not_a_crash():
    # Only item 1 was ever seen; drawing 3 of 5 must still succeed, and item 1 is among them.
    new = select_new_items(_seqs([1, 1, 1]), n_items=5, share=0.6, seed=0)
    assert new.sum() == 3 and new[1]
    # no training data at all: a uniform draw
    assert select_new_items([], n_items=5, share=0.4, seed=0).sum() == 2


def test_seeded_share_and_padding():
    rng = np.random.default_rng(0)
    train = [rng.integers(1, 201, size=30) for _ in range(50)]
    a = select_new_items(train, n_items=200, share=0.1, seed=7)
    b = select_new_items(train, n_items=200, share=0.1, seed=7)
    c = select_new_items(train, n_items=200, share=0.1, seed=8)
    assert a.dtype == bool and a.shape == (201,)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert a.sum() == c.sum() == 20
    assert not a[0] and not c[0]
    assert select_new_items(train, n_items=200, share=0.33, seed=7).sum() == 66
    assert select_new_items(train, n_items=200, share=0.0, seed=7).sum() == 0
    with pytest.raises(ValueError, match=r"share must be in \[0, 1\)"):
        select_new_items(train, n_items=200, share=1.0, seed=7)


def _split() -> LeaveOneOutSplit:
    # users 0..2 evaluated, user 3 too short; item 4 and 5 are new
    return LeaveOneOutSplit(
        train=_seqs([1, 4, 2], [5, 5], [3], [4]),
        eval_users=np.array([0, 1, 2]),
        valid_input=_seqs([1, 4, 2], [5, 5], [3]),
        valid_target=np.array([3, 1, 4]),
        test_input=_seqs([1, 4, 2, 3], [5, 5, 1], [3, 4]),
        test_target=np.array([5, 2, 1]),
    )


NEW = np.array([False, False, False, False, True, True])


def test_device_view_drops_new_items_from_inputs_only():
    split = _split()
    dev = device_view(split, NEW)
    assert [s.tolist() for s in dev.train] == [[1, 2], [], [3], []]
    assert [s.tolist() for s in dev.valid_input] == [[1, 2], [], [3]]
    assert [s.tolist() for s in dev.test_input] == [[1, 2, 3], [1], [3]]
    # same users, same order, same targets (new targets stay: evaluation reports them apart)
    np.testing.assert_array_equal(dev.eval_users, split.eval_users)
    np.testing.assert_array_equal(dev.valid_target, split.valid_target)
    np.testing.assert_array_equal(dev.test_target, split.test_target)
    assert [s.tolist() for s in split.train] == [[1, 4, 2], [5, 5], [3], [4]]  # not modified


def test_device_view_of_nothing_new_is_the_split():
    split = _split()
    dev = device_view(split, np.zeros(6, dtype=bool))
    for a, b in zip(dev.train + dev.test_input, split.train + split.test_input, strict=True):
        np.testing.assert_array_equal(a, b)


def test_drop_new_targets_removes_those_validation_users():
    dev = drop_new_targets(device_view(_split(), NEW), NEW)
    np.testing.assert_array_equal(dev.valid_target, [3, 1])
    assert [s.tolist() for s in dev.valid_input] == [[1, 2], []]
    assert len(dev.train) == 4 and len(dev.test_input) == 3  # only validation changes
    seen = np.concatenate([*dev.train, *dev.valid_input, dev.valid_target])
    assert not NEW[seen].any()
