"""The bundled sentence encoder: unit vectors, sensible similarity, and the on-disk cache."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tandemrec.text.encoder import DIM, encode_texts, encoder_available, item_text_vectors

pytestmark = [
    pytest.mark.core,
    pytest.mark.skipif(not encoder_available(), reason="sentence encoder not installed"),
]

TEXTS = [
    "space adventure film with aliens",
    "sci-fi movie about aliens in space",
    "organic shampoo for dry hair",
]


def test_shape_dtype_unit_norm_and_similarity() -> None:
    calls: list[tuple[int, int]] = []
    v = encode_texts(TEXTS, progress=lambda done, total: calls.append((done, total)))
    assert v.shape == (3, DIM) and v.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    sims = v @ v.T
    # The two alien films must be closer to each other than either is to shampoo.
    assert sims[0, 1] > sims[0, 2] + 0.2 and sims[0, 1] > sims[1, 2] + 0.2
    assert calls[0] == (0, 3) and calls[-1] == (3, 3)


def test_empty_text_is_zero_row() -> None:
    v = encode_texts(["", TEXTS[0]])
    assert not v[0].any()
    assert np.linalg.norm(v[1]) == pytest.approx(1.0, abs=1e-5)
    assert encode_texts([]).shape == (0, DIM)


def test_cache_hit_returns_identical_array(tmp_path: Path) -> None:
    texts = [""] + TEXTS  # row 0 is padding, as in SequenceDataset.item_texts
    first = item_text_vectors(texts, cache=tmp_path)
    files = list(tmp_path.iterdir())
    assert len(files) == 1 and files[0].suffix == ".npy"
    second = item_text_vectors(texts, cache=tmp_path)
    np.testing.assert_array_equal(first, second)
    assert list(tmp_path.iterdir()) == files
    assert first.shape == (4, DIM) and not first[0].any()
