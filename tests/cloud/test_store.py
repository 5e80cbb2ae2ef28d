"""Store contract on both backends, plus MemoryStore bounds and RedisStore outage behaviour."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest
import redis

from cloud_service.store import (
    MemoryStore,
    RedisStore,
    Store,
    StoreUnavailable,
    make_store,
)
from tests.redis_server import RedisServer

pytestmark = pytest.mark.core


class FakeClock:
    """A settable monotonic clock, so MemoryStore TTL and refill tests need no sleeping."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_history_keeps_the_last_cap_tokens_oldest_first(store: Store, arun) -> None:
    async def body() -> None:
        await store.history_set("s1", [1, 2, 3, 4, 5], cap=4, ttl_s=60)
        await store.history_set("s2", [9], cap=4, ttl_s=60)
        assert await store.history_get("s1", 10) == [2, 3, 4, 5]
        assert await store.history_get("s1", 2) == [4, 5]
        assert await store.history_get("s1", 0) == []
        assert await store.history_get("s2", 10) == [9]
        assert await store.history_get("nobody", 10) == []

    arun(body)


def test_history_set_replaces_the_session_history(store: Store, arun) -> None:
    async def body() -> None:
        await store.history_set("s", [1, 2, 3], cap=8, ttl_s=60)
        await store.history_set("s", [7, 8, 9, 10], cap=3, ttl_s=60)
        assert await store.history_get("s", 8) == [8, 9, 10]
        await store.history_set("s", [], cap=3, ttl_s=60)
        assert await store.history_get("s", 8) == []

    arun(body)


def test_history_and_cache_expire_after_their_ttl(store: Store, arun) -> None:
    async def body() -> None:
        await store.history_set("short", [1, 2], cap=8, ttl_s=1)
        await store.history_set("long", [3], cap=8, ttl_s=60)
        await store.cache_set("short", b"a", ttl_s=1)
        await store.cache_set("long", b"b", ttl_s=60)
        assert await store.history_get("short", 8) == [1, 2]
        assert await store.cache_get("short") == b"a"
        await asyncio.sleep(1.1)
        assert await store.history_get("short", 8) == []
        assert await store.cache_get("short") is None
        assert await store.history_get("long", 8) == [3]
        assert await store.cache_get("long") == b"b"

    arun(body)


def test_cache_round_trips_binary_values_and_overwrites(store: Store, arun) -> None:
    async def body() -> None:
        assert await store.cache_get("k") is None
        blob = bytes(range(256))
        await store.cache_set("k", blob, ttl_s=60)
        assert await store.cache_get("k") == blob
        await store.cache_set("k", b"\x00new", ttl_s=60)
        assert await store.cache_get("k") == b"\x00new"

    arun(body)


def test_rate_bucket_allows_burst_then_refuses_then_refills(store: Store, arun) -> None:
    async def body() -> None:
        # 2 tokens/s: the four takes need not land within 100 ms on a loaded machine.
        results = [await store.rate_take("dev", rate_per_s=2.0, burst=3) for _ in range(3)]
        assert results == [(True, 0.0)] * 3
        allowed, retry_after = await store.rate_take("dev", rate_per_s=2.0, burst=3)
        assert not allowed
        assert 0.0 < retry_after <= 0.5 + 1e-6  # at most one token's worth at 2 tokens/s
        assert (await store.rate_take("other", rate_per_s=2.0, burst=3))[0]  # own bucket
        await asyncio.sleep(retry_after + 0.05)
        assert (await store.rate_take("dev", rate_per_s=2.0, burst=3))[0]

    arun(body)


def test_registry_update_sets_and_deletes_together(store: Store, arun) -> None:
    async def body() -> None:
        assert await store.registry_load() == {}
        await store.registry_update({"a": "1", "b": "2"})
        await store.registry_update({"c": "3"}, delete=["a", "missing"])
        assert await store.registry_load() == {"b": "2", "c": "3"}

    arun(body)


def test_registry_update_is_a_compare_and_set_on_the_revision(store: Store, arun) -> None:
    async def body() -> None:
        assert await store.registry_update({"revision": "1", "current": "v1"}, expect_revision=0)
        # A writer that read revision 0 lost the race: nothing it asked for is applied.
        assert not await store.registry_update({"revision": "1", "current": "v2"}, ["current"],
                                               expect_revision=0)
        assert await store.registry_load() == {"revision": "1", "current": "v1"}
        assert await store.registry_update({"revision": "2", "current": "v2"}, expect_revision=1)
        assert (await store.registry_load())["current"] == "v2"

    arun(body)


def test_invalid_limits_are_refused(store: Store, arun) -> None:
    async def body() -> None:
        with pytest.raises(ValueError):
            await store.history_set("s", [1], cap=0, ttl_s=60)
        with pytest.raises(ValueError):
            await store.rate_take("k", rate_per_s=0.0, burst=3)
        with pytest.raises(ValueError):
            await store.cache_set("k", b"v", ttl_s=0)

    arun(body)


def test_memory_cache_evicts_least_recently_used() -> None:
    async def body() -> None:
        store = MemoryStore(max_cache_entries=2)
        await store.cache_set("a", b"1", ttl_s=60)
        await store.cache_set("b", b"2", ttl_s=60)
        assert await store.cache_get("a") == b"1"  # touching "a" makes "b" the oldest
        await store.cache_set("c", b"3", ttl_s=60)
        assert await store.cache_get("b") is None
        assert (await store.cache_get("a"), await store.cache_get("c")) == (b"1", b"3")

    asyncio.run(body())


def test_memory_ttls_refresh_on_write_and_sessions_are_bounded() -> None:
    async def body() -> None:
        clock = FakeClock()
        store = MemoryStore(max_sessions=2, clock=clock)
        await store.history_set("s", [1], cap=4, ttl_s=10)
        clock.now += 8
        await store.history_set("s", [1, 2], cap=4, ttl_s=10)  # expiry moves to t+18
        clock.now += 8
        assert await store.history_get("s", 4) == [1, 2]
        clock.now += 3
        assert await store.history_get("s", 4) == []
        for name in ("x", "y", "z"):
            await store.history_set(name, [7], cap=4, ttl_s=60)
        assert await store.history_get("x", 4) == []  # evicted: only two sessions are kept
        assert await store.history_get("z", 4) == [7]

    asyncio.run(body())


def test_memory_bucket_refills_continuously_and_caps_at_burst() -> None:
    async def body() -> None:
        clock = FakeClock()
        store = MemoryStore(clock=clock)
        assert [(await store.rate_take("k", 2.0, 2))[0] for _ in range(3)] == [True, True, False]
        clock.now += 0.25  # half a token at 2 tokens/s
        assert await store.rate_take("k", 2.0, 2) == (False, pytest.approx(0.25))
        clock.now += 100  # long idle: the bucket holds burst tokens, not 200
        assert [(await store.rate_take("k", 2.0, 2))[0] for _ in range(3)] == [True, True, False]

    asyncio.run(body())


def test_make_store_picks_the_backend_and_drops_foreign_options() -> None:
    assert isinstance(make_store(None, prefix="x:", max_cache_entries=5), MemoryStore)
    redis_store = make_store("redis://127.0.0.1:1/0", prefix="x:", max_cache_entries=5)
    assert isinstance(redis_store, RedisStore)
    asyncio.run(redis_store.close())


def test_redis_replicas_share_state(redis_server: RedisServer) -> None:
    async def body() -> None:
        prefix = f"test-{uuid.uuid4().hex[:12]}:"
        a, b = RedisStore(redis_server.url, prefix=prefix), RedisStore(redis_server.url, prefix)
        try:
            await a.history_set("s", [1, 2], cap=8, ttl_s=60)
            assert await b.history_get("s", 8) == [1, 2]
            assert (await a.rate_take("dev", 1.0, 1))[0]
            assert not (await b.rate_take("dev", 1.0, 1))[0]  # one bucket across replicas
        finally:
            await a.close()
            await b.close()

    redis_server.start()
    asyncio.run(body())


def test_redis_down_raises_store_unavailable_and_recovers(redis_server: RedisServer) -> None:
    async def body() -> None:
        store = RedisStore(redis_server.url, prefix=f"test-{uuid.uuid4().hex[:12]}:")
        try:
            assert (await store.rate_take("dev", 5.0, 2))[0]  # loads the Lua script
            redis_server.stop()
            started = time.monotonic()
            calls = [
                lambda: store.history_set("s", [1], cap=4, ttl_s=60),
                lambda: store.history_get("s", 4),
                lambda: store.cache_get("k"),
                lambda: store.cache_set("k", b"v", ttl_s=60),
                lambda: store.rate_take("dev", 5.0, 2),
                lambda: store.registry_load(),
                lambda: store.registry_update({"a": "1"}),
            ]
            for call in calls:
                with pytest.raises(StoreUnavailable):
                    await call()
            assert time.monotonic() - started < 5.0  # fails fast: no long retry backoff
            redis_server.start()
            # The restarted server lost its script cache: EVALSHA meets NOSCRIPT and reloads.
            assert await store.rate_take("dev", 5.0, 2) == (True, 0.0)
            await store.history_set("s", [3], cap=4, ttl_s=60)
            assert await store.history_get("s", 4) == [3]
        finally:
            redis_server.start()
            await store.close()

    redis_server.start()
    asyncio.run(body())


def test_redis_timeout_raises_store_unavailable(redis_server: RedisServer) -> None:
    async def body() -> None:
        store = RedisStore(redis_server.url, prefix=f"test-{uuid.uuid4().hex[:12]}:")
        admin = redis.Redis.from_url(redis_server.url)
        try:
            await store.cache_set("k", b"v", ttl_s=60)
            admin.execute_command("CLIENT", "PAUSE", 1000, "ALL")  # server alive but silent
            with pytest.raises(StoreUnavailable, match="Timeout"):
                await store.cache_get("k")
            # UNPAUSE is paused too, so this returns once the pause lapses (~0.5 s from now).
            admin.execute_command("CLIENT", "UNPAUSE")
            assert await store.cache_get("k") == b"v"
        finally:
            admin.execute_command("CLIENT", "UNPAUSE")
            admin.close()
            await store.close()

    redis_server.start()
    asyncio.run(body())
