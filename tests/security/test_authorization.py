"""Object-level authorization over both transports: device A's credentials cannot read, change
or throttle device B's state (session history, cache, rate bucket) on a real Redis."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from cloud_service.server import Running
from cloud_service.server import replica_in_thread as live_replica
from cloud_service.store import owner_key
from tests.redis_server import RedisServer
from tests.security.calls import Caller, app_key, token
from tests.security.conftest import security_settings

pytestmark = [pytest.mark.security, pytest.mark.integration]
PREFIX = "sec-authz:"
ASK = {"intent_tokens": [1, 2], "intent_weights": [0.6, 0.4], "k": 10}
HISTORY = [3, 3, 1]
OTHER_HISTORY = [2, 2]


@pytest.fixture(scope="module")
def replica(bundle: Path, redis_db: RedisServer) -> Iterator[Running]:
    # Small buckets, so flooding shows within a few calls; a long cache, so hits would show.
    s = security_settings(bundle, redis_url=redis_db.url, redis_prefix=PREFIX, cache_ttl_s=600,
                          rate_burst=5, rate_per_s=0.01, key_rate_burst=20, key_rate_per_s=0.01)
    with live_replica(s) as r:
        yield r


def ask(device_id: str, history: list[int] | None = None) -> dict:
    return {**ASK, "device_id": device_id, "coarse_history": history or []}


def stored_history(db: RedisServer, device_id: str) -> list[int]:
    with redis.Redis.from_url(db.url) as r:
        return [int(x) for x in r.lrange(owner_key(PREFIX, f"dev:{device_id}", "hist"), 0, -1)]


def test_a_device_token_acts_only_for_its_own_device(caller: Caller):
    victim, attacker = f"victim-own-{caller.transport}", f"attacker-{caller.transport}"
    code, out = caller.recommend(token(attacker), ask(victim))
    assert code == "PERMISSION_DENIED" and out.get("status", 403) == 403, out
    code, out = caller.manifest(token(attacker), victim)
    assert code == "PERMISSION_DENIED", out
    assert caller.recommend(token(victim), ask(victim))[0] == "OK"


def test_another_credential_cannot_read_a_devices_history_or_cache(caller: Caller):
    victim = f"victim-read-{caller.transport}"
    code, fresh = caller.recommend(app_key("probe-key"), ask(f"fresh-{caller.transport}"))
    assert code == "OK", fresh
    code, own = caller.recommend(token(victim), ask(victim, HISTORY))
    assert code == "OK" and own["item_ids"] != fresh["item_ids"]  # the history matters
    # The shared app key names the victim and sends no history: it gets the answer of a
    # device without history, computed afresh, not the victim's stored history or cache.
    code, seen = caller.recommend(app_key("app-key"), ask(victim))
    assert code == "OK", seen
    assert seen["item_ids"] == fresh["item_ids"] and not seen["cached"]


def test_another_credential_cannot_change_a_devices_history(caller: Caller, redis_db):
    victim = f"victim-write-{caller.transport}"
    code, own = caller.recommend(token(victim), ask(victim, HISTORY))
    assert code == "OK", own
    code, other = caller.recommend(app_key("app-key"), ask(victim, OTHER_HISTORY))
    assert code == "OK" and other["item_ids"] != own["item_ids"]
    code, _ = caller.recommend(token(f"attacker-{caller.transport}"), ask(victim, OTHER_HISTORY))
    assert code == "PERMISSION_DENIED"
    assert stored_history(redis_db, victim) == HISTORY
    code, again = caller.recommend(token(victim), ask(victim))  # relies on the stored history
    assert code == "OK" and again["item_ids"] == own["item_ids"]


def test_flooding_with_a_devices_id_does_not_throttle_that_device(caller: Caller):
    victim = f"victim-rl-{caller.transport}"
    codes = []
    while "RESOURCE_EXHAUSTED" not in codes and len(codes) < 40:
        codes.append(caller.recommend(app_key("flood-key"), ask(victim))[0])
    assert codes[-1] == "RESOURCE_EXHAUSTED"  # the flooding key ran out of its own bucket
    for _ in range(8):
        assert caller.recommend(token(f"attacker-{caller.transport}"),
                                ask(victim))[0] == "PERMISSION_DENIED"
    code, out = caller.recommend(token(victim), ask(victim))
    assert code == "OK", out


def test_rotating_device_ids_does_not_escape_the_key_bucket(caller: Caller):
    codes = [caller.recommend(app_key("rotate-key"), ask(f"rot-{caller.transport}-{i}"))[0]
             for i in range(24)]
    assert codes.count("OK") <= 20 and codes[-1] == "RESOURCE_EXHAUSTED"
    if caller.transport == "http":
        code, out = caller.recommend(app_key("rotate-key"), ask("rot-last"))
        assert out["status"] == 429
