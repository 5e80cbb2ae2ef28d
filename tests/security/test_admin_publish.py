"""Admin publish over both transports: only bundles under TANDEM_CLOUD_BUNDLE_ROOT, one 400 for
every bad path (NUL byte, over-long, outside the root, missing), and canaries routed on the
authenticated principal."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from cloud_service.server import Running
from cloud_service.server import replica_in_thread as live_replica
from tests.security.calls import Caller, app_key, token
from tests.security.conftest import security_settings

pytestmark = [pytest.mark.security, pytest.mark.integration]
ADMIN = {"x-admin-key": "admin-key"}
ASK = {"intent_tokens": [1, 2], "intent_weights": [0.6, 0.4], "k": 5}


@pytest.fixture(scope="module")
def replica(bundle: Path, bundle_v2: Path) -> Iterator[Running]:
    # The root holds bundle_v2 only: the start-up bundle (the operator's own) lies outside it.
    s = security_settings(bundle, bundle_root=str(bundle_v2.parent), cache_ttl_s=0,
                          rate_burst=1000, key_rate_burst=1000)
    with live_replica(s) as r:
        yield r


def bad_paths(bundle: Path, bundle_v2: Path) -> list[str]:
    root = bundle_v2.parent
    return [
        f"{bundle_v2}\x00/etc",                  # NUL byte: was HTTP 500 / gRPC INTERNAL
        "/" + "a" * 300 + "/bundle",             # a component over NAME_MAX: was OSError
        "/" + "/".join(["abcdefgh"] * 600),      # over PATH_MAX
        str(bundle),                             # a real bundle, outside the root
        "/etc",                                  # exists, outside the root
        "/no/such/dir/anywhere",                 # missing, outside the root
        str(root / ".." / bundle.parent.name),   # escapes the root with ..
        str(root / "missing-inside"),            # missing, inside the root
        "",
    ]


def test_bad_bundle_paths_are_invalid_argument_with_one_message(caller: Caller, bundle,
                                                                bundle_v2):
    # Credentials first: a device gets no detail about the path, whatever it sends.
    assert caller.publish(app_key("app-key"), str(bundle_v2))[0] == "PERMISSION_DENIED"
    assert caller.publish(token("dev-1"), f"{bundle_v2}\x00")[0] == "PERMISSION_DENIED"
    answers = [caller.publish(ADMIN, path) for path in bad_paths(bundle, bundle_v2)]
    assert {code for code, _ in answers} == {"INVALID_ARGUMENT"}, answers
    messages = {out["message"] for _, out in answers}
    assert len(messages) == 1, messages  # nothing tells an existing path from a missing one
    if caller.transport == "http":
        assert {out["status"] for _, out in answers} == {400}


def test_a_canary_under_the_root_routes_on_the_principal(caller: Caller, bundle_v2):
    code, state = caller.publish(ADMIN, str(bundle_v2), canary_share=0.5)
    assert code == "OK" and state["canary"] == "v2-test", state
    # One app key is one principal: whatever device ids it names, it stays on one side.
    by_key = {caller.recommend(app_key("app-key"), {**ASK, "device_id": f"d-{i}"})[1]
              ["model_version"] for i in range(12)}
    assert len(by_key) == 1, by_key
    # Device tokens keep their own side each, so the canary still reaches a share of them.
    by_device = {caller.recommend(token(f"d-{i}"), {**ASK, "device_id": f"d-{i}"})[1]
                 ["model_version"] for i in range(12)}
    assert by_device == {"v2-test", state["current"]}, by_device
