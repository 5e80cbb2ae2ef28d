"""Mini-batches of left-padded sequences, bucketed by length so little compute goes on padding."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

from tandemrec.models.inputs import left_pad


@dataclass(frozen=True)
class Rows:
    """Where one process's rows [start, stop) sit in a global batch of `total` (train/ddp.py)."""

    start: int
    stop: int
    total: int


Shard = Callable[[int], Rows]  # a global batch's row count -> this process's rows


def local_rows(shard: Shard, n: int) -> tuple[Rows, bool]:
    """This process's rows of a global batch of `n`, and whether they are a stand-in: a share
    left empty (a last batch smaller than the group) trains on row 0 with no target, since
    every DDP process takes part in every step."""
    mine = shard(n)
    return (mine, False) if mine.stop > mine.start else (Rows(0, 1, n), True)


def pad_to(seqs: list[np.ndarray], t: int) -> torch.Tensor:
    """Left-pad to exactly `t` columns (every rank pads its rows as the whole batch is)."""
    x = left_pad(seqs, t)
    return torch.nn.functional.pad(x, (t - x.shape[1], 0))


def padded_length(seqs: list[np.ndarray], max_len: int) -> int:
    """The width `left_pad` gives these sequences."""
    return max(1, min(max_len, max(len(s) for s in seqs)))


def length_buckets(seqs: list[np.ndarray], batch_size: int,
                   rng: np.random.Generator) -> Iterator[np.ndarray]:
    """Yield batches of indices into `seqs` (those with >= 2 items), similar lengths together.

    Sequences are sorted by length (with random tie-breaking), cut into batches, and the batches
    are shuffled: every batch has sequences of similar length, so padding is rare.
    """
    usable = np.array([i for i, s in enumerate(seqs) if len(s) >= 2], dtype=np.int64)
    lengths = np.array([len(seqs[i]) for i in usable])
    order = usable[np.lexsort((rng.random(len(usable)), lengths))]
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    for b in rng.permutation(len(batches)):
        yield batches[b]


def window(seq: np.ndarray, max_len: int, recent: float, rng: np.random.Generator) -> np.ndarray:
    """The last `max_len + 1` items of `seq`, or with probability `1 - recent` an earlier window.

    Histories longer than the window lose their older items to truncation (a third of ML-1M's
    training interactions at 200); drawing an earlier window now and then trains on them too,
    while the most recent window, the one serving reads, keeps most of the weight.
    """
    n = max_len + 1
    if len(seq) <= n or recent >= 1.0 or rng.random() < recent:
        return seq[-n:]
    end = int(rng.integers(n, len(seq) + 1))  # uniform over all full windows, the last included
    return seq[end - n:end]


def training_batches(seqs: list[np.ndarray], max_len: int, batch_size: int,
                     rng: np.random.Generator, recent: float = 1.0, shard: Shard | None = None
                     ) -> Iterator[tuple]:
    """Yield (inputs, targets) (B, T) for next-item prediction at every position.

    `recent` < 1 trains long histories on earlier windows at times (see `window`). With
    `shard` (data-parallel training), every process draws the same global batches and yields
    only its own rows, padded to the global batch's width, and where they sit: (x, y, Rows).
    """
    for rows in length_buckets(seqs, batch_size, rng):
        windows = [window(seqs[i], max_len, recent, rng) for i in rows]
        if shard is None:
            full = left_pad(windows, max_len + 1)
            yield full[:, :-1], full[:, 1:]
            continue
        mine, stand_in = local_rows(shard, len(rows))
        full = pad_to(windows[mine.start:mine.stop], padded_length(windows, max_len + 1))
        yield full[:, :-1], full[:, 1:] * (not stand_in), mine


def n_batches(seqs: list[np.ndarray], batch_size: int) -> int:
    n = sum(1 for s in seqs if len(s) >= 2)
    return (n + batch_size - 1) // batch_size


def eval_batches(seqs: list[np.ndarray], max_len: int,
                 batch_size: int = 256) -> Iterator[tuple[slice, torch.Tensor]]:
    """Yield (slice into seqs, left-padded inputs) in order, for scoring held-out users."""
    for i in range(0, len(seqs), batch_size):
        yield slice(i, i + batch_size), left_pad(seqs[i:i + batch_size], max_len)


def loss_positions(targets: torch.Tensor, share: float, gen: torch.Generator | None = None,
                   rows: Rows | None = None) -> torch.Tensor:
    """(B, T) bool: the positions whose next-item loss is computed this step.

    Scoring the whole catalog at every position is most of a training step on a long-history
    dataset; a random `share` of the positions (the last one always kept, as it is what serving
    predicts) gives a full-softmax gradient at a fraction of the cost, and every position is
    still a target over the epochs. Padded positions (target 0) are never kept. The draw is on
    the CPU generator `gen` whatever the device; with `rows` (data-parallel training) it is the
    whole global batch's draw, of which these rows take theirs, as one process would.
    """
    keep = targets != 0
    if share >= 1.0:
        return keep
    if rows is None:
        drawn = torch.rand(targets.shape, generator=gen) < share
    else:
        drawn = (torch.rand((rows.total, targets.shape[1]), generator=gen) < share)[
            rows.start:rows.stop]
    drawn[:, -1] = True
    return keep & drawn.to(keep.device)
