"""Leave-one-out splitting by time, the protocol of SASRec/BERT4Rec-style evaluation."""

from __future__ import annotations

import numpy as np

from tandemrec.data.types import LeaveOneOutSplit, SequenceDataset

MIN_EVAL_LENGTH = 3  # one item to train on, one to validate, one to test


def leave_one_out(ds: SequenceDataset) -> LeaveOneOutSplit:
    """Hold out each user's last item for test and second-to-last for validation.

    Users with at least 3 interactions are evaluated: train = seq[:-2], validation predicts
    seq[-2] from seq[:-2], test predicts seq[-1] from seq[:-1]. Shorter users keep everything in
    train and are not evaluated. Inputs are views of the dataset's arrays (no copies).
    """
    train: list[np.ndarray] = []
    eval_users: list[int] = []
    valid_input: list[np.ndarray] = []
    valid_target: list[int] = []
    test_input: list[np.ndarray] = []
    test_target: list[int] = []
    for user, seq in enumerate(ds.sequences):
        if len(seq) < MIN_EVAL_LENGTH:
            train.append(seq)
            continue
        train.append(seq[:-2])
        eval_users.append(user)
        valid_input.append(seq[:-2])
        valid_target.append(int(seq[-2]))
        test_input.append(seq[:-1])
        test_target.append(int(seq[-1]))
    return LeaveOneOutSplit(
        train=train,
        eval_users=np.array(eval_users, dtype=np.int64),
        valid_input=valid_input,
        valid_target=np.array(valid_target, dtype=np.int64),
        test_input=test_input,
        test_target=np.array(test_target, dtype=np.int64),
    )


def item_popularity(train: list[np.ndarray], n_items: int) -> np.ndarray:
    """Interaction counts per item id (shape n_items + 1, padding 0 counts 0), for baselines and
    popularity-based negative sampling."""
    if not train:
        return np.zeros(n_items + 1, dtype=np.int64)
    items = np.concatenate([np.asarray(s, dtype=np.int64) for s in train])
    if items.size and (items.min() < 0 or items.max() > n_items):
        raise ValueError(f"item ids must lie in 0..{n_items}, found {items.min()}..{items.max()}")
    counts = np.bincount(items, minlength=n_items + 1).astype(np.int64)
    counts[0] = 0
    return counts
