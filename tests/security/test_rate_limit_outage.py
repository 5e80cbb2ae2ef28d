"""While Redis is away the rate limit holds on each replica (degraded, never open), over both
transports, against a real redis-server that the test stops and starts again."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from cloud_service.server import Running
from cloud_service.server import replica_in_thread as live_replica
from tests.redis_server import RedisServer
from tests.security.calls import Caller, app_key, token
from tests.security.conftest import security_settings

pytestmark = [pytest.mark.security, pytest.mark.integration]
BURST = 4
ASK = {"intent_tokens": [1, 2], "intent_weights": [0.6, 0.4], "k": 5}


@pytest.fixture(scope="module")
def replica(bundle: Path, redis_db: RedisServer) -> Iterator[Running]:
    s = security_settings(bundle, redis_url=redis_db.url, redis_prefix="sec-rl:", cache_ttl_s=0,
                          rate_burst=BURST, rate_per_s=0.01, key_rate_burst=BURST,
                          key_rate_per_s=0.01)
    with live_replica(s) as r:
        yield r


@pytest.fixture
def redis_down(redis_db: RedisServer) -> Iterator[None]:
    redis_db.stop()
    try:
        yield
    finally:
        redis_db.start()


def test_the_limit_holds_per_principal_while_redis_is_down(caller: Caller, redis_down):
    device = f"outage-{caller.transport}"
    codes = [caller.recommend(token(device), {**ASK, "device_id": device})[0]
             for _ in range(BURST + 3)]
    assert codes == ["OK"] * BURST + ["RESOURCE_EXHAUSTED"] * 3
    key = f"{'probe' if caller.transport == 'grpc' else 'flood'}-key"  # a fresh key each
    codes = [caller.recommend(app_key(key), {**ASK, "device_id": f"rot-{i}"})[0]
             for i in range(BURST + 2)]
    assert codes == ["OK"] * BURST + ["RESOURCE_EXHAUSTED"] * 2
