"""Leave-one-out splitting by time, the protocol of SASRec/BERT4Rec-style evaluation."""

from __future__ import annotations

import numpy as np

from tandemrec.data.types import LeaveOneOutSplit, SequenceDataset

MIN_EVAL_LENGTH = 3  # one item to train on, one to validate, one to test


def leave_one_out(ds: SequenceDataset, val_users: int = 0, seed: int = 0,
                  tune_share: float = 0.0) -> LeaveOneOutSplit:
    """Hold out each user's last item for test and second-to-last for validation.

    Users with at least 3 interactions are evaluated: train = seq[:-2], validation predicts
    seq[-2] from seq[:-2], test predicts seq[-1] from seq[:-1]. Shorter users keep everything in
    train and are not evaluated. Inputs are views of the dataset's arrays (no copies).

    `val_users > 0` validates on that many users drawn with `seed` and trains on the other
    users' second-to-last items (train = seq[:-1]), as gSASRec's evaluation code does: the
    model tested on the last item has then seen every earlier one. Test is unchanged.

    `tune_share > 0` moves that share of the validated users (drawn with `seed`) to `tune_*`:
    they are held out the same way but never used for early stopping, so a choice made on them
    afterwards (the fusion setting) sees models that were not selected on their targets.
    """
    evaluable = [u for u, seq in enumerate(ds.sequences) if len(seq) >= MIN_EVAL_LENGTH]
    validated = _validation_users(evaluable, val_users, seed)
    tuned = _tuning_users(evaluable if validated is None else sorted(validated), tune_share, seed)
    train: list[np.ndarray] = []
    eval_users: list[int] = []
    valid_input: list[np.ndarray] = []
    valid_target: list[int] = []
    tune_input: list[np.ndarray] = []
    tune_target: list[int] = []
    test_input: list[np.ndarray] = []
    test_target: list[int] = []
    for user, seq in enumerate(ds.sequences):
        if len(seq) < MIN_EVAL_LENGTH:
            train.append(seq)
            continue
        eval_users.append(user)
        if validated is not None and user not in validated:
            train.append(seq[:-1])
        else:
            train.append(seq[:-2])
            inputs, targets = (tune_input, tune_target) if user in tuned else (
                valid_input, valid_target)
            inputs.append(seq[:-2])
            targets.append(int(seq[-2]))
        test_input.append(seq[:-1])
        test_target.append(int(seq[-1]))
    return LeaveOneOutSplit(
        train=train,
        eval_users=np.array(eval_users, dtype=np.int64),
        valid_input=valid_input,
        valid_target=np.array(valid_target, dtype=np.int64),
        test_input=test_input,
        test_target=np.array(test_target, dtype=np.int64),
        tune_input=tune_input,
        tune_target=np.array(tune_target, dtype=np.int64),
    )


def _validation_users(candidates: list[int], val_users: int, seed: int) -> set[int] | None:
    """The users whose second-to-last item is held out, or None for all `candidates`."""
    if val_users < 0:
        raise ValueError(f"val_users must be >= 0 (0 = validate every user), got {val_users}")
    if val_users == 0 or val_users >= len(candidates):
        return None
    rng = np.random.default_rng(seed)
    return set(rng.choice(candidates, size=val_users, replace=False).tolist())


def _tuning_users(pool: list[int], share: float, seed: int) -> set[int]:
    """The validated users (`pool`) kept apart for fusion tuning, a seeded `share` of them."""
    if not 0 <= share < 1:
        raise ValueError(f"tune_share must be in [0, 1), got {share}")
    n = int(round(share * len(pool)))
    if n == 0:
        return set()
    rng = np.random.default_rng([seed, 1])  # independent of the validation draw
    return set(rng.choice(pool, size=n, replace=False).tolist())


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
