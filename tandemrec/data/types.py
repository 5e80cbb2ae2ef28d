"""Domain types for interaction data: a dense, time-ordered sequence dataset and its split."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

PAD = 0  # item id 0 is padding everywhere; real items are 1..n_items


@dataclass
class SequenceDataset:
    """Users' interaction sequences with items re-indexed densely to 1..n_items.

    `sequences[u]` is user u's item ids in time order (int64). `item_ids[i]` and `user_ids[u]`
    keep the original ids (item_ids[0] is "" for padding). `item_texts[i]` is the item's text
    ("" where the source has none; index 0 is padding) or None when the source has no text.
    """

    name: str
    sequences: list[np.ndarray]
    n_items: int
    user_ids: list[str]
    item_ids: list[str]
    item_texts: list[str] | None = None
    meta: dict[str, str] = field(default_factory=dict)

    @property
    def n_users(self) -> int:
        return len(self.sequences)

    @property
    def n_interactions(self) -> int:
        return int(sum(len(s) for s in self.sequences))


@dataclass
class LeaveOneOutSplit:
    """Leave-one-out by time: last item = test target, second to last = validation target.

    Only users with at least 3 interactions are evaluated (`eval_users`); the others train on
    everything they have. `train[u]` never contains user u's test target, nor its validation
    target when u is validated (`val_users` in `leave_one_out` validates a sample of users).
    Validated users are either early-stopping users (`valid_*`) or fusion-tuning users
    (`tune_*`, empty unless `tune_share` > 0): no model is selected on the tuning users.
    """

    train: list[np.ndarray]
    eval_users: np.ndarray
    valid_input: list[np.ndarray]
    valid_target: np.ndarray
    test_input: list[np.ndarray]
    test_target: np.ndarray
    tune_input: list[np.ndarray] = field(default_factory=list)
    tune_target: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    def fusion_users(self) -> tuple[list[np.ndarray], np.ndarray]:
        """Inputs and targets the fusion setting is chosen on: the tuning users where there
        are any, else the early-stopping users."""
        if len(self.tune_target):
            return self.tune_input, self.tune_target
        return self.valid_input, self.valid_target
