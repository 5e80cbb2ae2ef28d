"""Synthetic interaction data with learnable sequential structure, for tests and smoke runs."""

from __future__ import annotations

import csv
import gzip
from pathlib import Path

import numpy as np

from tandemrec.data.types import SequenceDataset

_NOUNS = ("widget", "gadget", "gizmo", "sprocket", "doohickey", "contraption", "trinket", "device")
_P_NEXT = 0.75  # follow the cluster's item chain: what a sequence model can learn
_P_STAY = 0.15  # random item of the same cluster: learnable only as "same cluster"
_START_TIME = 1_600_000_000


def _cluster_of(n_items: int, n_clusters: int) -> np.ndarray:
    """Cluster of each item id (index 0 = padding, -1); clusters are contiguous id blocks."""
    clusters = np.full(n_items + 1, -1, dtype=np.int64)
    clusters[1:] = np.arange(n_items) * n_clusters // n_items
    return clusters


def _generate(
    n_users: int, n_items: int, min_len: int, max_len: int, n_clusters: int, seed: int
) -> tuple[SequenceDataset, list[np.ndarray]]:
    if not 1 <= n_clusters <= n_items:
        raise ValueError(f"need 1 <= n_clusters <= n_items, got {n_clusters} and {n_items}")
    if not 1 <= min_len <= max_len:
        raise ValueError(f"need 1 <= min_len <= max_len, got {min_len} and {max_len}")
    rng = np.random.default_rng(seed)
    cluster = _cluster_of(n_items, n_clusters)
    members = [np.flatnonzero(cluster == c) for c in range(n_clusters)]
    sequences: list[np.ndarray] = []
    times: list[np.ndarray] = []
    for _ in range(n_users):
        length = int(rng.integers(min_len, max_len + 1))
        items = np.empty(length, dtype=np.int64)
        items[0] = rng.choice(members[int(rng.integers(n_clusters))])
        for t in range(1, length):
            group = members[int(cluster[items[t - 1]])]
            draw = rng.random()
            if draw < _P_NEXT:
                # The next item in the cluster's chain, wrapping around at the end.
                pos = int(np.searchsorted(group, items[t - 1]))
                items[t] = group[(pos + 1) % group.size]
            elif draw < _P_NEXT + _P_STAY:
                items[t] = rng.choice(group)
            else:
                items[t] = rng.choice(members[int(rng.integers(n_clusters))])
        sequences.append(items)
        start = _START_TIME + int(rng.integers(0, 30 * 86_400))
        times.append(start + np.cumsum(rng.integers(60, 3_600, size=length)))
    texts = [""] + [
        f"item {i} cluster {cluster[i]} {_NOUNS[cluster[i] % len(_NOUNS)]}"
        for i in range(1, n_items + 1)
    ]
    ds = SequenceDataset(
        name="synthetic",
        sequences=sequences,
        n_items=n_items,
        user_ids=[str(u) for u in range(1, n_users + 1)],
        item_ids=[""] + [str(i) for i in range(1, n_items + 1)],
        item_texts=texts,
        meta={"generator": "clustered item chains", "seed": str(seed)},
    )
    return ds, times


def make_synthetic(
    n_users: int = 200,
    n_items: int = 100,
    min_len: int = 5,
    max_len: int = 40,
    n_clusters: int = 5,
    seed: int = 0,
) -> SequenceDataset:
    """A deterministic dataset where a sequence model clearly beats popularity.

    Items fall into contiguous id clusters, each a chain 1 -> 2 -> ... that wraps around. A user
    starts at a random item and then mostly (75%) takes the next item in the chain, sometimes a
    random item of the same cluster (15%) or of any cluster (10%). Popularity is near uniform,
    so only the order carries signal. Texts like "item 7 cluster 0 widget" carry the cluster.
    """
    return _generate(n_users, n_items, min_len, max_len, n_clusters, seed)[0]


def write_synthetic_csv(
    path: Path | str,
    n_users: int = 200,
    n_items: int = 100,
    min_len: int = 5,
    max_len: int = 40,
    n_clusters: int = 5,
    seed: int = 0,
) -> SequenceDataset:
    """Write make_synthetic's data as a user,item,timestamp,title CSV (gzipped if `.gz`), to
    exercise the bring-your-own-data path end to end; returns the dataset written."""
    ds, times = _generate(n_users, n_items, min_len, max_len, n_clusters, seed)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    texts = ds.item_texts or []
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wt", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["user", "item", "timestamp", "title"])
        for user, seq, stamps in zip(ds.user_ids, ds.sequences, times, strict=True):
            for item, stamp in zip(seq.tolist(), stamps.tolist(), strict=True):
                writer.writerow([user, ds.item_ids[item], stamp, texts[item]])
    return ds
