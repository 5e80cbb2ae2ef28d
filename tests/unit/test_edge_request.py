"""The upstream payload carries intent tokens only, and the device's fusion reranks correctly."""

import json

import numpy as np
import pytest

from edge_client.request import build_request
from edge_client.rerank import fuse, log_softmax, top_intents

pytestmark = pytest.mark.unit

ITEM_INTENTS = np.array([0, 3, 3, 1, 2, 2, 1, 3])  # item -> intent token (7 items, 3 intents)


def test_top_intents_skips_padding_and_normalises():
    tokens, weights = top_intents(np.array([9.0, 1.0, 3.0, 2.0]), 2)
    assert tokens.tolist() == [2, 3]  # logit 9 belongs to padding token 0
    assert weights.sum() == pytest.approx(1.0)
    assert weights[0] == pytest.approx(np.exp(3) / (np.exp(3) + np.exp(2)))


def test_request_is_a_function_of_intents_only():
    logits = np.array([0.0, 0.5, 2.0, 1.0])
    # Two private histories with different item ids but the same intent sequence.
    a = build_request(logits, np.array([1, 3, 4, 7]), ITEM_INTENTS, top_m=2, coarse_len=3, k=10,
                      model_version="v1")
    b = build_request(logits, np.array([2, 6, 5, 1]), ITEM_INTENTS, top_m=2, coarse_len=3, k=10,
                      model_version="v1")
    assert a.to_json_bytes() == b.to_json_bytes()
    payload = json.loads(a.to_json_bytes())
    assert set(payload) == {"intent_tokens", "intent_weights", "coarse_history", "k",
                            "model_version"}
    assert payload["coarse_history"] == [1, 2, 3]
    assert payload["intent_tokens"] == [2, 3]


def test_coarse_len_zero_sends_no_history():
    req = build_request(np.zeros(4), np.array([1, 2]), ITEM_INTENTS, top_m=1, coarse_len=0, k=5,
                        model_version="v1")
    assert req.coarse_history == ()


def test_fuse_weights_and_excludes_history():
    cands = np.array([4, 7, 2])
    teacher = np.array([3.0, 1.0, 0.0])
    device = np.zeros(8)
    device[[4, 7, 2]] = [0.0, 5.0, 0.0]
    items, _ = fuse(cands, teacher, device, weight=1.0)
    assert items.tolist() == [4, 7, 2]  # teacher only
    items, _ = fuse(cands, teacher, device, weight=0.0)
    assert items[0] == 7  # device only
    items, scores = fuse(cands, teacher, device, weight=0.5, exclude=np.array([7]))
    assert items.tolist() == [4, 2]
    expected = 0.5 * log_softmax(teacher) + 0.5 * log_softmax(device[cands])
    assert scores.tolist() == pytest.approx(sorted(expected[[0, 2]], reverse=True))
