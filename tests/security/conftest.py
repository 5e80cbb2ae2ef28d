"""Fixtures of the security tier: a caller per transport, settings with every credential kind.

Each module starts its own replica (and, where it needs one, its own redis-server), so tests
that take Redis away or exhaust buckets cannot disturb another module.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from cloud_service.server import Running
from cloud_service.settings import CloudSettings
from tests.redis_server import RedisServer
from tests.security.calls import SECRET, TRANSPORTS, Caller


def security_settings(bundle: Path, **kw: Any) -> CloudSettings:
    """A replica with device tokens, app keys and an admin key, on free ports."""
    base: dict[str, Any] = dict(
        bundle=str(bundle), http_port=0, grpc_port=0, n_retrieve=40,
        device_token_secret=SecretStr(SECRET), admin_api_key=SecretStr("admin-key"),
        device_api_keys=[SecretStr(k) for k in ("app-key", "probe-key", "flood-key",
                                                "rotate-key")])
    base.update(kw)
    return CloudSettings(**base)


@pytest.fixture(scope="module")
def redis_db() -> Iterator[RedisServer]:
    """A redis-server of the module's own, so stopping or flushing it disturbs no other."""
    with RedisServer() as server:
        yield server


@pytest.fixture(params=TRANSPORTS)
def caller(request: pytest.FixtureRequest) -> Iterator[Caller]:
    """The module's `replica`, called over each transport in turn."""
    replica: Running = request.getfixturevalue("replica")
    c = Caller(replica, request.param)
    try:
        yield c
    finally:
        c.close()
