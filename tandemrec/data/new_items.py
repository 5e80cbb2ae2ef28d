"""The fresh-catalog protocol: a seeded share of items is new to the device but known to the cloud.

A cloud retrained daily knows yesterday's launches; the phone's student, shipped earlier, does
not. `select_new_items` draws those launches, `device_view` is the split as the device holds it
(its own inputs without the items it does not know), and `drop_new_targets` keeps a new item
from ever being a target the student trains or validates towards. Torch-free (numpy only).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from tandemrec.data.split import item_popularity
from tandemrec.data.types import LeaveOneOutSplit

# Weight of an item never seen in training, relative to an item seen once: it can still be
# drawn (the draw never fails for lack of candidates) but almost never is while others remain.
ZERO_COUNT_WEIGHT = 1e-6


def select_new_items(split_train: list[np.ndarray], n_items: int, share: float,
                     seed: int) -> np.ndarray:
    """Bool mask (n_items + 1,) of the items that are new to the device; index 0 is never new.

    Draws round(share * n_items) distinct items without replacement, each with probability
    proportional to its interaction count in `split_train` (so the new items are as popular as
    real launches, not the long tail a uniform draw would give). Items never seen in training
    get a tiny weight (ZERO_COUNT_WEIGHT). Deterministic for a given `seed`.
    """
    if not 0.0 <= share < 1.0:
        raise ValueError(f"new-items share must be in [0, 1), got {share}")
    new = np.zeros(n_items + 1, dtype=bool)
    k = int(round(share * n_items))
    if k == 0:
        return new
    counts = item_popularity(split_train, n_items)[1:].astype(np.float64)
    weights = np.where(counts > 0, counts, ZERO_COUNT_WEIGHT)
    rng = np.random.default_rng(seed)
    picked = rng.choice(n_items, size=k, replace=False, p=weights / weights.sum())
    new[picked + 1] = True
    return new


def _known(seq: np.ndarray, new: np.ndarray) -> np.ndarray:
    return seq[~new[seq]]


def device_view(split: LeaveOneOutSplit, new: np.ndarray) -> LeaveOneOutSplit:
    """The split as the device holds it: new items removed from every input.

    The device drops items it does not know from its own history, so `train`, `valid_input`
    and `test_input` lose their new items (a sequence may get shorter, even empty) while the
    users, their order and the targets (`eval_users`, `valid_target`, `test_target`) stay as
    they are, aligned row for row with `split`. A target may itself be new: evaluation reports
    those users apart; training uses `drop_new_targets` so that it never sees one.
    """
    new = np.asarray(new, dtype=bool)
    return dataclasses.replace(
        split,
        train=[_known(s, new) for s in split.train],
        valid_input=[_known(s, new) for s in split.valid_input],
        test_input=[_known(s, new) for s in split.test_input],
        tune_input=[_known(s, new) for s in split.tune_input],
    )


def drop_new_targets(split: LeaveOneOutSplit, new: np.ndarray) -> LeaveOneOutSplit:
    """`split` without the validation users whose validation target is new (for training).

    The student early-stops and tunes on validation; a new item as a validation target would
    reward it for predicting an item it must not know. Training targets come from `train`,
    which `device_view` has already cleaned; test users are left as they are.
    """
    keep = ~np.asarray(new, dtype=bool)[split.valid_target]
    return dataclasses.replace(
        split,
        valid_input=[s for s, k in zip(split.valid_input, keep, strict=True) if k],
        valid_target=split.valid_target[keep],
    )
