"""The intent vocabulary: residual k-means semantic ids over item vectors, level 1 = intent tokens.

As in TIGER-style semantic ids, level 1 clusters the L2-normalised item vectors and each further
level clusters what the previous levels left unexplained (the residuals), so an item's code
(c1, c2, ...) reads coarse to fine. The level-1 codes are the intent tokens the device sends
upstream instead of item ids. Loading needs numpy only (the edge and the cloud load this
without torch); building a vocabulary runs scikit-learn's k-means.
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

PAD_LABEL = "<pad>"
LABEL_SEP = " · "


def _sq_dists(x: np.ndarray, c: np.ndarray, xx: np.ndarray) -> np.ndarray:
    """Squared distances (n, k) as |x|^2 - 2 x.c + |c|^2 (clipped at 0); xx = |x|^2 precomputed."""
    d = xx[:, None] - 2.0 * (x @ c.T) + (c * c).sum(1)[None, :]
    return np.maximum(d, 0.0)


def _group_sum(v: np.ndarray, assign: np.ndarray, k: int) -> np.ndarray:
    """Row sums of v per cluster (k, d); sort + reduceat is far faster than np.add.at."""
    order = np.argsort(assign, kind="stable")
    starts = np.searchsorted(assign[order], np.arange(k))
    present = np.bincount(assign, minlength=k) > 0
    out = np.zeros((k, v.shape[1]))
    out[present] = np.add.reduceat(v[order], starts[present], axis=0)
    return out


def _kmeanspp(
    x: np.ndarray, xx: np.ndarray, k: int, w: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """k-means++ seeding: each next centre drawn with probability ∝ weight * squared distance."""
    n = x.shape[0]
    first = int(rng.choice(n, p=w / w.sum())) if w.sum() > 0 else int(rng.integers(n))
    chosen = [first]
    d2 = _sq_dists(x, x[[first]], xx)[:, 0]
    for _ in range(1, k):
        p = d2 * w
        if p.sum() <= 0:
            p = d2.copy()  # weights are zero wherever points are still uncovered
        if p.sum() <= 0:
            # Every point coincides with a centre (duplicates): any unchosen point will do.
            p = np.ones(n)
            p[chosen] = 0.0
        idx = int(rng.choice(n, p=p / p.sum()))
        chosen.append(idx)
        d2 = np.minimum(d2, _sq_dists(x, x[[idx]], xx)[:, 0])
    return x[chosen].copy()


def _fill_empty(assign: np.ndarray, d2: np.ndarray, k: int) -> None:
    """Give each empty cluster the farthest point of a cluster that can spare one (in place)."""
    counts = np.bincount(assign, minlength=k)
    empty = np.flatnonzero(counts == 0)
    if empty.size == 0:
        return
    order = np.argsort(-d2, kind="stable")  # farthest from its own centroid first
    pos = 0
    for j in empty:
        while counts[assign[order[pos]]] <= 1:
            pos += 1  # moving a singleton's only point would just empty another cluster
        i = order[pos]
        counts[assign[i]] -= 1
        assign[i] = j
        counts[j] = 1
        d2[i] = 0.0
        pos += 1


def _means(x: np.ndarray, assign: np.ndarray, w: np.ndarray, k: int) -> np.ndarray:
    """Weighted cluster means; a cluster whose items all weigh 0 falls back to the plain mean."""
    sums = _group_sum(x * w[:, None], assign, k)
    wsum = np.bincount(assign, weights=w, minlength=k)
    zero = wsum <= 0
    if zero.any():
        plain = _group_sum(x, assign, k)
        cnt = np.bincount(assign, minlength=k).astype(np.float64)
        sums[zero], wsum[zero] = plain[zero], cnt[zero]
    return sums / np.maximum(wsum, 1e-12)[:, None]


def kmeans(
    x: np.ndarray, k: int, iters: int = 25, seed: int = 0, weights: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Weighted k-means (k-means++ seeding, Lloyd steps) -> (centroids (k, d), assign (n,)).

    The Lloyd steps are scikit-learn's `KMeans`, started from this module's weighted k-means++
    centres (so a converged run's clusters are those of the hand-written loop it replaced;
    tests/unit/test_intent_vocab.py holds that loop as the reference). k is capped at n. No
    cluster is left empty: an emptied cluster takes the point farthest from its centroid, so
    every returned cluster id in 0..k-1 has at least one point. Deterministic for a given seed.
    """
    from sklearn.cluster import KMeans  # training only: loading a vocabulary needs numpy alone
    from sklearn.exceptions import ConvergenceWarning

    x = np.asarray(x, dtype=np.float64)
    n = x.shape[0]
    if n == 0 or k < 1:
        raise ValueError(f"kmeans needs n >= 1 points and k >= 1 (got n={n}, k={k})")
    k = min(int(k), n)
    w = np.ones(n) if weights is None else np.asarray(weights, dtype=np.float64)
    if w.shape != (n,) or (w < 0).any():
        raise ValueError("weights must be non-negative with one entry per point")
    rng = np.random.default_rng(seed)
    xx = (x * x).sum(1)
    init = _kmeanspp(x, xx, k, w, rng)
    with warnings.catch_warnings():  # duplicates leave clusters empty: filled below
        warnings.simplefilter("ignore", ConvergenceWarning)
        fit = KMeans(k, init=init, n_init=1, max_iter=max(1, iters), tol=0.0,
                     algorithm="lloyd").fit(x, sample_weight=w if w.sum() > 0 else None)
    assign = fit.labels_.astype(np.int64)
    d = _sq_dists(x, fit.cluster_centers_, xx)
    _fill_empty(assign, d[np.arange(n), assign].copy(), k)
    return _means(x, assign, w, k), assign


def _l2_normalise(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length; all-zero rows (items without a vector) stay zero."""
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norms > 0, norms, 1.0)


@dataclass
class IntentVocab:
    """Semantic ids for items 0..n_items; level-1 codes 1..K are the intent tokens (0 = padding).

    `codes[i, l]` is item i's code at level l, 1-based at every level so 0 always means padding
    (row 0). `centroids[l]` is (K_l, d): row c-1 is code c's centroid. `labels[t]` is token t's
    readable label and `sizes[t]` its item count (index 0 = padding).
    """

    codes: np.ndarray
    centroids: list[np.ndarray]
    labels: list[str]
    sizes: np.ndarray
    _order: np.ndarray = field(init=False, repr=False, compare=False)
    _starts: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.codes = np.asarray(self.codes, dtype=np.int64)
        self.sizes = np.asarray(self.sizes, dtype=np.int64)
        self.centroids = [np.asarray(c, dtype=np.float32) for c in self.centroids]
        if self.codes.ndim != 2 or self.codes[0].any():
            raise ValueError("codes must be (n_items + 1, levels) with row 0 (padding) all zeros")
        if len(self.labels) != self.n_intents + 1:
            raise ValueError("labels must have one entry per intent token plus <pad>")
        # Inverted index token -> items (sorted by token, stable so item ids stay ascending).
        level1 = self.codes[1:, 0]
        self._order = np.argsort(level1, kind="stable").astype(np.int64) + 1
        self._starts = np.searchsorted(level1[self._order - 1], np.arange(self.n_intents + 2))

    @property
    def n_intents(self) -> int:
        return int(self.centroids[0].shape[0]) if self.centroids else 0

    @property
    def n_items(self) -> int:
        return int(self.codes.shape[0] - 1)

    @property
    def levels(self) -> int:
        return int(self.codes.shape[1])

    def intent_of(self, items: np.ndarray) -> np.ndarray:
        """Level-1 intent token per item id (0 for padding), same shape as `items`."""
        return self.codes[np.asarray(items, dtype=np.int64), 0]

    def items_of(self, token: int) -> np.ndarray:
        """Item ids (ascending) whose intent token is `token`; empty for 0 or out of range."""
        if not 1 <= token <= self.n_intents:
            return np.zeros(0, dtype=np.int64)
        return self._order[self._starts[token] : self._starts[token + 1]]

    def to_json(self) -> dict[str, Any]:
        """Plain lists and numbers, for the versioned model bundle."""
        return {
            "format": 1,
            "codes": self.codes.tolist(),
            "centroids": [c.tolist() for c in self.centroids],
            "labels": list(self.labels),
            "sizes": self.sizes.tolist(),
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> IntentVocab:
        """Inverse of `to_json`."""
        return cls(
            codes=np.asarray(d["codes"], dtype=np.int64).reshape(-1, max(1, len(d["centroids"]))),
            centroids=[np.asarray(c, dtype=np.float32) for c in d["centroids"]],
            labels=[str(s) for s in d["labels"]],
            sizes=np.asarray(d["sizes"], dtype=np.int64),
        )


def merge_small_clusters(
    x: np.ndarray, assign: np.ndarray, k: int, min_size: int, weights: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Fold clusters of fewer than `min_size` points into their nearest neighbours.

    An intent token that covers one item says as much as that item's id; a floor on the items
    per token keeps every token an anonymity set of at least `min_size` items. The smallest
    cluster goes first, its points to their nearest remaining centroid, until all are large
    enough (or one is left). Returns (centroids (k', d), assign in 0..k'-1).
    """
    x = np.asarray(x, dtype=np.float64)
    w = np.ones(len(x)) if weights is None else np.asarray(weights, dtype=np.float64)
    assign = assign.copy()
    alive = list(range(k))
    centroids = _means(x, assign, w, k)
    while len(alive) > 1:
        sizes = np.bincount(assign, minlength=k)
        smallest = min(alive, key=lambda c: (sizes[c], c))
        if sizes[smallest] >= min_size:
            break
        alive.remove(smallest)
        moved = np.flatnonzero(assign == smallest)
        rest = np.array(alive)
        d = _sq_dists(x[moved], centroids[rest], (x[moved] ** 2).sum(1))
        assign[moved] = rest[d.argmin(1)]
        centroids = _means(x, assign, w, k)
    renumber = np.full(k, -1, dtype=np.int64)
    renumber[alive] = np.arange(len(alive))
    return centroids[alive], renumber[assign]


def build_intent_vocab(
    item_vecs: np.ndarray,
    texts: Sequence[str] | None = None,
    n_intents: int = 64,
    level_sizes: Sequence[int] = (16, 16),
    iters: int = 25,
    seed: int = 0,
    weights: np.ndarray | None = None,
    min_items: int = 1,
) -> IntentVocab:
    """Residual k-means over item vectors (row 0 = padding, skipped) -> IntentVocab.

    Level 1 has `n_intents` codes (capped at the item count); `level_sizes` gives the sizes of the
    finer levels. `weights` (e.g. popularity, indexed by item id, n_items or n_items + 1 long)
    pull centroids toward heavily weighted items. `texts` (aligned with item ids) give labels.
    `min_items` is the floor on items per intent token (small clusters are merged, so there
    may be fewer than `n_intents` tokens).
    """
    vecs = np.asarray(item_vecs, dtype=np.float64)
    n = vecs.shape[0] - 1
    if n < 1:
        raise ValueError("item_vecs needs row 0 (padding) plus at least one item")
    w = None
    if weights is not None:
        w = np.asarray(weights, dtype=np.float64)
        w = w[1:] if w.shape[0] == n + 1 else w
    residual = _l2_normalise(vecs[1:])
    codes = np.zeros((n + 1, 1 + len(level_sizes)), dtype=np.int64)
    centroids: list[np.ndarray] = []
    for level, k in enumerate([n_intents, *level_sizes]):
        # Each level gets its own seed so levels do not share their k-means++ draws.
        c, assign = kmeans(residual, k, iters=iters, seed=seed + level, weights=w)
        if level == 0 and min_items > 1:
            c, assign = merge_small_clusters(residual, assign, len(c), min_items, w)
        codes[1:, level] = assign + 1
        centroids.append(c.astype(np.float32))
        residual = residual - c[assign]
    k1 = centroids[0].shape[0]
    sizes = np.bincount(codes[:, 0], minlength=k1 + 1)
    sizes[0] = 0
    labels = (
        label_intents(list(texts), codes[:, 0], k1)
        if texts is not None
        else [PAD_LABEL] + [f"intent {t}" for t in range(1, k1 + 1)]
    )
    return IntentVocab(codes=codes, centroids=centroids, labels=labels, sizes=sizes)


# Function words and packaging units: frequent in product titles but they name no intent.
_STOPWORD_TEXT = """
    the and for with from this that these those are was were has have had not but all any
    you your our its his her their they them into onto over under out off one two three new
    more most very can will just also than then when what which who whom how why where each
    per via use used using made make makes based about after before set size inch inches
    oz ounce ounces pack packs fluid count piece pieces item items ml lbs pound pounds gram
    grams total"""
_STOPWORDS = frozenset(_STOPWORD_TEXT.split())
_WORD = re.compile(r"[a-z]+")


def _terms(text: str) -> list[str]:
    """Distinct terms of one item text, in order: MovieLens genres, else content words."""
    if "Genres:" in text:
        genres = text.rsplit("Genres:", 1)[1].split(",")
        return list(dict.fromkeys(g.strip() for g in genres if g.strip()))
    words = (m for m in _WORD.findall(text.lower()) if len(m) >= 3 and m not in _STOPWORDS)
    return list(dict.fromkeys(w.capitalize() for w in words))


def _ranked_terms(
    texts: Sequence[str], level1_codes: np.ndarray, n_intents: int
) -> list[list[str]]:
    """Per code 1..K, its terms best first by tf-idf (ties: first appearance in the cluster)."""
    tf: list[dict[str, float]] = [{} for _ in range(n_intents + 1)]
    for i in range(1, len(texts)):
        c = int(level1_codes[i])
        if 1 <= c <= n_intents:
            for t in _terms(texts[i] or ""):
                tf[c][t] = tf[c].get(t, 0.0) + 1.0
    sizes = np.bincount(np.asarray(level1_codes[1 : len(texts)], dtype=np.int64),
                        minlength=n_intents + 1)
    spread: dict[str, float] = {}  # sum over clusters of the term's share of the cluster
    for c in range(1, n_intents + 1):
        for t in tf[c]:
            tf[c][t] /= max(1, int(sizes[c]))
            spread[t] = spread.get(t, 0.0) + tf[c][t]
    ranked: list[list[str]] = [[]]
    for c in range(1, n_intents + 1):
        # Smooth idf: a term shared by every cluster keeps a small positive weight, so a cluster
        # made only of common terms still gets a label.
        first = {t: r for r, t in enumerate(tf[c])}
        scored = {t: f * math.log1p(n_intents / spread[t]) for t, f in tf[c].items()}
        ranked.append(sorted(scored, key=lambda t: (-scored[t], first[t])))
    return ranked


def label_intents(
    texts: Sequence[str], level1_codes: np.ndarray, n_intents: int, max_terms: int = 2
) -> list[str]:
    """Readable label per intent token, e.g. "Sci-Fi · Action"; labels[0] = "<pad>".

    `texts[i]` and `level1_codes[i]` belong to item i (row 0 = padding, ignored). Labels are
    unique: a clash is resolved with the next distinct term, else a " (2)"-style suffix; larger
    clusters are labelled first so they keep the plain label.
    """
    ranked = _ranked_terms(texts, level1_codes, n_intents)
    sizes = np.bincount(np.asarray(level1_codes[1 : len(texts)], dtype=np.int64),
                        minlength=n_intents + 1)
    labels = [PAD_LABEL] + [""] * n_intents
    used = {PAD_LABEL}
    for c in sorted(range(1, n_intents + 1), key=lambda c: (-int(sizes[c]), c)):
        terms = ranked[c]
        base = terms[:max_terms]
        plain = LABEL_SEP.join(base) if base else f"intent {c}"
        label = plain
        for extra in terms[max_terms:]:
            if label not in used:
                break
            label = LABEL_SEP.join([*base, extra])
        n = 2
        while label in used:
            label, n = f"{plain} ({n})", n + 1
        labels[c] = label
        used.add(label)
    return labels
