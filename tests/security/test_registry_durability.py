"""The registry survives Redis losing its data: after FLUSHALL or a restart without persistence
both replicas keep serving and re-assert the live versions within 5 s; compose keeps an AOF."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import yaml

from cloud_service.server import Running
from cloud_service.server import replica_in_thread as live_replica
from cloud_service.store import registry_key
from tandemrec.paths import REPO_ROOT
from tests.redis_server import RedisServer
from tests.security.calls import Caller, token
from tests.security.conftest import security_settings

pytestmark = [pytest.mark.security, pytest.mark.integration]
PREFIX = "sec-reg:"
ASK = {"intent_tokens": [1, 2], "intent_weights": [0.6, 0.4], "k": 5}


@pytest.fixture(scope="module")
def replicas(bundle: Path, bundle_v2: Path, redis_db: RedisServer) -> Iterator[list[Running]]:
    s = security_settings(bundle, redis_url=redis_db.url, redis_prefix=PREFIX, cache_ttl_s=0,
                          registry_poll_s=0.2, bundle_root=str(bundle_v2.parent))
    with contextlib.ExitStack() as stack:
        running = [stack.enter_context(live_replica(s)) for _ in range(2)]
        callers = [Caller(r, "http") for r in running]
        assert callers[0].publish({"x-admin-key": "admin-key"}, str(bundle_v2),
                                  canary_share=0.25)[0] == "OK"
        for c in callers:
            c.close()
        yield running


def registry(db: RedisServer) -> dict[str, str]:
    with redis.Redis.from_url(db.url, decode_responses=True) as r:
        return r.hgetall(registry_key(PREFIX))


def wait_for_registry(db: RedisServer, live: dict[str, str], within_s: float) -> float:
    """Seconds until the registry holds `live`'s versions and routing again."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < within_s:
        got = registry(db)
        if {k: got.get(k) for k in live} == live:
            return time.monotonic() - t0
        time.sleep(0.05)
    raise AssertionError(f"registry not back within {within_s} s: {registry(db)}")


def serve_from_both(replicas: list[Running]) -> None:
    for r in replicas:
        for transport in ("grpc", "http"):
            c = Caller(r, transport)
            try:
                code, out = c.recommend(token("dev-reg"), {**ASK, "device_id": "dev-reg"})
            finally:
                c.close()
            assert code == "OK", out


@pytest.mark.parametrize("loss", ["flushall", "restart"])
def test_replicas_reassert_the_registry_after_redis_loses_it(replicas, redis_db, loss):
    serve_from_both(replicas)
    live = {k: v for k, v in registry(redis_db).items()
            if k in ("current", "canary", "canary_share", "revision") or k.startswith("version:")}
    assert live["current"] and live["canary"] == "v2-test" and len(live) >= 6, live
    if loss == "flushall":
        with redis.Redis.from_url(redis_db.url) as r:
            r.flushall()
    else:
        redis_db.stop()
        serve_from_both(replicas)  # while Redis is away
        redis_db.start()
    serve_from_both(replicas)  # right after: Redis is empty
    assert wait_for_registry(redis_db, live, within_s=5.0) <= 5.0
    serve_from_both(replicas)


def test_compose_redis_keeps_an_append_only_file():
    compose = yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())
    redis_svc = compose["services"]["redis"]
    command = " ".join(redis_svc["command"])
    assert "--appendonly yes" in command
    mounts = [str(v).split(":") for v in redis_svc.get("volumes", [])]
    assert any(m[1] == "/data" and m[0] in compose.get("volumes", {}) for m in mounts), mounts
