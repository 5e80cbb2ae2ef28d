"""The upstream payload carries intent tokens only (fusion is tested in test_fusion.py)."""

import json

import numpy as np
import pytest

from tandem_contract.intents import top_intents
from tandem_contract.request import build_request

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


def test_items_the_device_does_not_know_leave_no_token():
    intents = ITEM_INTENTS.copy()
    intents[5] = 0  # item 5 is new to the device: its bundle has no intent for it
    req = build_request(np.zeros(4), np.array([1, 5, 3]), intents, top_m=1, coarse_len=3, k=5,
                        model_version="v1")
    assert req.coarse_history == (3, 1)
