"""Training windows over long histories and the batches built from them."""

from __future__ import annotations

import numpy as np

from tandemrec.train.batches import training_batches, window


def test_short_history_is_kept_whole() -> None:
    rng = np.random.default_rng(0)
    seq = np.arange(1, 4)
    for recent in (0.0, 0.5, 1.0):
        assert window(seq, 3, recent, rng).tolist() == [1, 2, 3]


def test_recent_one_always_truncates_to_the_last_window() -> None:
    rng = np.random.default_rng(0)
    seq = np.arange(1, 11)
    assert all(window(seq, 3, 1.0, rng).tolist() == [7, 8, 9, 10] for _ in range(50))


def test_earlier_windows_are_contiguous_and_cover_every_item() -> None:
    rng = np.random.default_rng(0)
    seq = np.arange(1, 11)  # 10 items, windows of 4: ends 4..10, 7 distinct windows
    drawn = [window(seq, 3, 0.0, rng) for _ in range(400)]
    assert all(len(w) == 4 and np.all(np.diff(w) == 1) for w in drawn)
    assert {int(w[-1]) for w in drawn} == set(range(4, 11))
    assert set(np.concatenate(drawn).tolist()) == set(range(1, 11))


def test_recent_share_is_respected() -> None:
    rng = np.random.default_rng(1)
    seq = np.arange(1, 101)
    last = sum(window(seq, 3, 0.5, rng)[-1] == 100 for _ in range(4000))
    # P(last window) = 0.5 + 0.5 / 97 windows = 0.505
    assert abs(last / 4000 - 0.505) < 0.03


def test_batches_shift_targets_by_one_inside_the_window() -> None:
    rng = np.random.default_rng(2)
    seqs = [np.arange(1, 31), np.arange(100, 103)]
    for x, y in training_batches(seqs, 5, 2, rng, recent=0.0):
        for row_x, row_y in zip(x.numpy(), y.numpy(), strict=True):
            valid = row_y != 0
            assert np.all(row_y[valid][:-1] == row_x[valid][1:])
            assert np.all(np.diff(row_y[valid]) == 1)
