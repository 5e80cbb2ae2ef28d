"""Fixtures for the cloud core: one real redis-server and one real 3-master Redis Cluster per
session, and every Store backend.

pytest-asyncio is not a dependency, so tests run their coroutine through `arun`, which also
closes the store on the same event loop (redis.asyncio connections belong to one loop).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

import pytest

from cloud_service.store import MemoryStore, RedisStore, Store
from tests.redis_server import RedisClusterServer, RedisServer

T = TypeVar("T")


@pytest.fixture(params=["memory", "redis", "cluster"])
def store(request: pytest.FixtureRequest) -> Iterator[Store]:
    """Each backend in turn: in process, one redis-server, a 3-master Redis Cluster. Redis keys
    get a per-test prefix so tests never see each other."""
    if request.param == "memory":
        yield MemoryStore()
        return
    fixture = "redis_server" if request.param == "redis" else "redis_cluster"
    server: RedisServer | RedisClusterServer = request.getfixturevalue(fixture)
    server.start()  # no-op when running; revives it if an earlier test failed while it was down
    yield RedisStore(server.url, prefix=f"test-{uuid.uuid4().hex[:12]}:")


@pytest.fixture
def arun(store: Store) -> Callable[[Callable[[], Awaitable[T]]], T]:
    """Run an async test body on a fresh loop, then close the store on that same loop."""

    def run(body: Callable[[], Awaitable[T]]) -> T:
        async def main() -> Any:
            try:
                return await body()
            finally:
                await store.close()

        return asyncio.run(main())

    return run
