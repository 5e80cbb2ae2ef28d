"""Residual k-means semantic ids and their readable intent labels."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tandemrec.models.intent_vocab import (
    PAD_LABEL,
    IntentVocab,
    _fill_empty,
    _kmeanspp,
    _means,
    _sq_dists,
    build_intent_vocab,
    kmeans,
    label_intents,
    merge_small_clusters,
)

pytestmark = pytest.mark.unit


def _blobs(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Three tight, far-apart Gaussian blobs of unequal size, shuffled; returns (x, true label)."""
    rng = np.random.default_rng(seed)
    centres = np.array([[10.0, 0.0, 0.0], [0.0, 10.0, 0.0], [0.0, 0.0, 10.0]])
    truth = np.repeat([0, 1, 2], [30, 12, 20])
    rng.shuffle(truth)
    return centres[truth] + 0.3 * rng.standard_normal((truth.size, 3)), truth


def _same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """Labels may be permuted; the partitions must match: a bijection between label sets."""
    pairs = set(zip(a.tolist(), b.tolist(), strict=True))
    return len(pairs) == len(set(a.tolist())) == len(set(b.tolist()))


def test_kmeans_recovers_separated_blobs() -> None:
    x, truth = _blobs()
    for seed in range(5):
        centroids, assign = kmeans(x, 3, seed=seed)
        assert centroids.shape == (3, 3) and assign.shape == (x.shape[0],)
        assert _same_partition(assign, truth)


def test_kmeans_deterministic_and_weighted() -> None:
    x = np.random.default_rng(1).standard_normal((80, 4))
    c1, a1 = kmeans(x, 5, seed=3)
    c2, a2 = kmeans(x, 5, seed=3)
    np.testing.assert_array_equal(a1, a2)
    np.testing.assert_array_equal(c1, c2)
    w = np.zeros(80)
    w[:40] = 1.0  # zero-weight points are still assigned, only the centroids ignore them
    _, aw = kmeans(x, 5, seed=3, weights=w)
    assert np.bincount(aw, minlength=5).min() >= 1


def _hand_written_lloyd(x: np.ndarray, k: int, iters: int, seed: int,
                        w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The Lloyd loop `kmeans` ran before scikit-learn's: the reference its clusters must equal."""
    n = x.shape[0]
    xx = (x * x).sum(1)
    centroids = _kmeanspp(x, xx, k, w, np.random.default_rng(seed))
    assign = np.full(n, -1, dtype=np.int64)
    for _ in range(iters):
        d = _sq_dists(x, centroids, xx)
        new = d.argmin(1)
        _fill_empty(new, d[np.arange(n), new].copy(), k)
        centroids = _means(x, new, w, k)
        if np.array_equal(new, assign):
            break
        assign = new
    return centroids, assign


def _item_like(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors around 20 topics, and popularity weights: heavy-tailed, some items unseen."""
    rng = np.random.default_rng(seed)
    topics = rng.standard_normal((20, 16))
    x = topics[rng.integers(0, 20, 800)] + 0.8 * rng.standard_normal((800, 16))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    w = np.floor(rng.zipf(1.5, 800).clip(max=500) * (rng.random(800) > 0.05))
    return x, w


def _inertia(x: np.ndarray, c: np.ndarray, a: np.ndarray, w: np.ndarray) -> float:
    return float((w * ((x - c[a]) ** 2).sum(1)).sum())


@pytest.mark.parametrize("seed", range(4))
def test_kmeans_clusters_equal_the_hand_written_loop_it_replaced(seed: int) -> None:
    # Converged (the budget is not binding): the same seeding gives the same clusters.
    x, w = _item_like(seed)
    for weights in (w, np.ones_like(w)):
        ref_c, ref_a = _hand_written_lloyd(x, 24, 300, seed, weights)
        c, a = kmeans(x, 24, iters=300, seed=seed, weights=weights)
        np.testing.assert_array_equal(a, ref_a)
        np.testing.assert_allclose(c, ref_c, atol=1e-9)


@pytest.mark.parametrize("seed", range(4))
def test_kmeans_quality_equals_the_hand_written_loop_under_a_binding_budget(seed: int) -> None:
    # Stopped after 5 steps (seeds 1 and 3 have not converged by then), the two may settle the
    # last moves apart: the weighted inertia stays within 1%.
    x, w = _item_like(seed)
    ref = _inertia(x, *_hand_written_lloyd(x, 64, 5, seed, w), w)
    ours = _inertia(x, *kmeans(x, 64, iters=5, seed=seed, weights=w), w)
    assert abs(ours / ref - 1) < 0.01, (ours, ref)


def test_kmeans_caps_k_and_handles_duplicates() -> None:
    x = np.arange(8, dtype=float).reshape(4, 2)
    c, a = kmeans(x, 10)
    assert c.shape == (4, 2) and sorted(a.tolist()) == [0, 1, 2, 3]
    dup = np.zeros((5, 2))  # all points identical: clusters still non-empty
    _, a = kmeans(dup, 3)
    assert np.bincount(a, minlength=3).min() >= 1
    with pytest.raises(ValueError):
        kmeans(np.zeros((0, 2)), 2)


def _vocab(n_items: int = 60, k: int = 6) -> IntentVocab:
    rng = np.random.default_rng(0)
    vecs = np.vstack([np.zeros((1, 8)), rng.standard_normal((n_items, 8))])
    return build_intent_vocab(vecs, None, n_intents=k, level_sizes=(4, 3), iters=10)


def test_codes_shape_padding_and_ranges() -> None:
    v = _vocab()
    assert v.codes.shape == (61, 3) and v.codes.dtype == np.int64
    assert not v.codes[0].any()
    assert v.n_intents == 6 and v.levels == 3 and v.n_items == 60
    level1 = v.codes[1:, 0]
    assert level1.min() >= 1 and level1.max() <= 6
    assert set(level1.tolist()) == set(range(1, 7))  # every intent token has items
    assert v.codes[1:, 1].min() >= 1 and v.codes[1:, 1].max() <= 4
    assert v.codes[1:, 2].min() >= 1 and v.codes[1:, 2].max() <= 3
    assert [c.shape for c in v.centroids] == [(6, 8), (4, 8), (3, 8)]
    assert v.sizes[0] == 0 and v.sizes.sum() == 60 and v.sizes.shape == (7,)
    assert v.labels == [PAD_LABEL] + [f"intent {t}" for t in range(1, 7)]


def test_intent_of_and_items_of_agree() -> None:
    v = _vocab()
    items = np.array([[0, 1, 2], [3, 59, 60]])
    assert v.intent_of(items).shape == (2, 3) and v.intent_of(items)[0, 0] == 0
    seen = []
    for t in range(1, v.n_intents + 1):
        members = v.items_of(t)
        assert members.size == v.sizes[t] and (np.diff(members) > 0).all()
        assert (v.intent_of(members) == t).all()
        seen.extend(members.tolist())
    assert sorted(seen) == list(range(1, 61))
    assert v.items_of(0).size == 0 and v.items_of(99).size == 0


def test_json_round_trip() -> None:
    v = _vocab()
    back = IntentVocab.from_json(json.loads(json.dumps(v.to_json())))
    np.testing.assert_array_equal(back.codes, v.codes)
    np.testing.assert_array_equal(back.sizes, v.sizes)
    assert back.labels == v.labels
    for a, b in zip(back.centroids, v.centroids, strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(back.items_of(2), v.items_of(2))


GENRE_GROUPS = {
    "Sci-Fi, Action": ("Alien Strike", "Star Raid", "Orbit Run", "Laser Dawn"),
    "Comedy, Romance": ("Love Oops", "Wedding Mixup", "Date Night", "Kiss Me Twice"),
    "Horror, Thriller": ("Dark House", "Night Scream", "The Cellar", "Blood Moon"),
}


def _movie_texts() -> tuple[list[str], np.ndarray]:
    texts, codes = [""], [0]
    for code, (genres, titles) in enumerate(GENRE_GROUPS.items(), 1):
        for year, title in enumerate(titles, 1990):
            texts.append(f"{title} ({year}). Genres: {genres}")
            codes.append(code)
    texts.append("Odd One (1999). Genres: Drama, Action")  # a stray in the horror cluster
    codes.append(3)
    return texts, np.array(codes)


def test_labels_use_distinctive_genres() -> None:
    texts, codes = _movie_texts()
    labels = label_intents(texts, codes, 3)
    assert labels == [PAD_LABEL, "Sci-Fi · Action", "Comedy · Romance", "Horror · Thriller"]


def test_labels_from_built_vocab_and_words() -> None:
    texts, codes = _movie_texts()
    # Item vectors = one-hot of the true group, so k-means recovers the groups exactly.
    vecs = np.vstack([np.zeros(3), np.eye(3)[codes[1:] - 1]])
    v = build_intent_vocab(vecs, texts, n_intents=3, level_sizes=(2,), iters=5)
    by_group = {v.labels[v.intent_of(np.array([i]))[0]] for i in (1, 5, 9)}
    assert by_group == {"Sci-Fi · Action", "Comedy · Romance", "Horror · Thriller"}
    words = ["", "Organic shampoo for dry hair, 12 fl oz", "Shampoo and conditioner pack"]
    assert label_intents(words, np.array([0, 1, 1]), 1) == [PAD_LABEL, "Shampoo · Organic"]


def test_labels_unique_on_clash() -> None:
    same = [f"M{i}. Genres: Drama, War" for i in range(4)]
    texts = ["", *same, *same[:3], "M9. Genres: Drama, War, Crime", *same[:2]]
    codes = np.array([0] + [1] * 4 + [2] * 4 + [3] * 2)
    labels = label_intents(texts, codes, 3)
    # Code 2 ties with code 1 on "Drama · War" and appends its next term; code 3 has none left.
    assert labels == [PAD_LABEL, "Drama · War", "Drama · War · Crime", "Drama · War (2)"]
    assert label_intents(["", "", "x"], np.array([0, 1, 2]), 2)[1:] == ["intent 1", "intent 2"]


def test_merge_small_clusters_hand_example() -> None:
    # Clusters {0,1,2} near 0, {3,4} near 10, {5} near 11: the singleton joins its neighbour.
    x = np.array([[0.0], [0.2], [0.4], [10.0], [10.2], [11.0]])
    c, assign = merge_small_clusters(x, np.array([0, 0, 0, 1, 1, 2]), 3, min_size=2)
    assert assign.tolist() == [0, 0, 0, 1, 1, 1]
    np.testing.assert_allclose(c, [[0.2], [31.2 / 3]])


def test_min_items_gives_every_token_an_anonymity_set() -> None:
    rng = np.random.default_rng(0)
    vecs = np.vstack([np.zeros((1, 8)), rng.standard_normal((200, 8))])
    pop = np.concatenate([[0.0], rng.pareto(1.0, 200) + 1.0])  # skewed: tiny popular clusters
    plain = build_intent_vocab(vecs, n_intents=40, level_sizes=(4,), seed=1, weights=pop)
    assert plain.sizes[1:].min() < 5  # the case the floor is for
    v = build_intent_vocab(vecs, n_intents=40, level_sizes=(4,), seed=1, weights=pop, min_items=5)
    assert v.sizes[1:].min() >= 5 and v.sizes.sum() == 200
    assert v.n_intents < 40 and len(v.labels) == v.n_intents + 1
    tokens = v.codes[1:, 0]
    assert set(tokens.tolist()) == set(range(1, v.n_intents + 1))
    for t in range(1, v.n_intents + 1):
        assert (v.intent_of(v.items_of(t)) == t).all()
