"""The committed wire code matches protos/, round-trips, and keeps item ids off the intent path."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]


def test_generated_code_is_fresh() -> None:
    proc = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "gen_protos.py"), "--check"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert proc.returncode == 0, (
        "tandem_wire/v1 is stale or could not be checked against protos/; regenerate with "
        f"`python scripts/gen_protos.py` and commit the result.\n{proc.stdout}{proc.stderr}"
    )


def test_recommend_request_round_trips() -> None:
    from tandem_wire.v1 import recommend_pb2

    req = recommend_pb2.RecommendRequest(
        request_id="r-1",
        device_id="dev-7",
        intent_tokens=[3, 17, 5],
        intent_weights=[0.5, 0.25, 0.25],
        coarse_history=[1, 3, 3, 17],
        k=20,
        model_version="v2",
    )
    back = recommend_pb2.RecommendRequest.FromString(req.SerializeToString())
    assert back == req
    assert back.request_id == "r-1"
    assert back.device_id == "dev-7"
    assert list(back.intent_tokens) == [3, 17, 5]
    assert list(back.intent_weights) == [0.5, 0.25, 0.25]  # exact in float32
    assert list(back.coarse_history) == [1, 3, 3, 17]
    assert back.k == 20
    assert back.model_version == "v2"


def test_recommend_request_carries_no_item_ids() -> None:
    """The privacy contract: collaborative mode sends intents only, so no item field may appear."""
    from tandem_wire.v1 import recommend_pb2

    names = [f.name for f in recommend_pb2.RecommendRequest.DESCRIPTOR.fields]
    assert "intent_tokens" in names  # sanity: we are looking at the right message
    leaking = [n for n in names if n.startswith("item") or "item" in n.split("_")]
    assert not leaking, f"RecommendRequest must never carry item ids, found fields {leaking}"
