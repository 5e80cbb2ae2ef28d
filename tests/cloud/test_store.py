"""Store contract on every backend (in process, one redis-server, a 3-master Redis Cluster), plus
MemoryStore bounds, RedisStore outage behaviour and the cluster's one-slot-per-device keys."""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections import defaultdict

import pytest
import redis
from redis.crc import key_slot

from cloud_service import store as store_module
from cloud_service.store import (
    MemoryStore,
    RedisStore,
    Store,
    StoreUnavailable,
    cluster_url,
    make_store,
    owner_key,
    registry_key,
)
from tests.redis_server import RedisClusterServer, RedisServer

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
        await store.cache_set("o", "short", b"a", ttl_s=1)
        await store.cache_set("o", "long", b"b", ttl_s=60)
        assert await store.history_get("short", 8) == [1, 2]
        assert await store.cache_get("o", "short") == b"a"
        await asyncio.sleep(1.1)
        assert await store.history_get("short", 8) == []
        assert await store.cache_get("o", "short") is None
        assert await store.history_get("long", 8) == [3]
        assert await store.cache_get("o", "long") == b"b"

    arun(body)


def test_cache_round_trips_binary_values_and_overwrites(store: Store, arun) -> None:
    async def body() -> None:
        assert await store.cache_get("dev:a", "k") is None
        blob = bytes(range(256))
        await store.cache_set("dev:a", "k", blob, ttl_s=60)
        assert await store.cache_get("dev:a", "k") == blob
        await store.cache_set("dev:a", "k", b"\x00new", ttl_s=60)
        assert await store.cache_get("dev:a", "k") == b"\x00new"
        assert await store.cache_get("dev:b", "k") is None  # an owner reads only its own

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
            await store.cache_set("o", "k", b"v", ttl_s=0)
        # The owner is the Redis Cluster hash tag: braces would cut it short in every backend.
        for owner in ("", "dev:{x}", "a}b"):
            with pytest.raises(ValueError):
                await store.history_set(owner, [1], cap=4, ttl_s=60)
            with pytest.raises(ValueError):
                await store.history_get(owner, 4)
            with pytest.raises(ValueError):
                await store.cache_get(owner, "k")
            with pytest.raises(ValueError):
                await store.rate_take(owner, rate_per_s=1.0, burst=1)

    arun(body)


def test_a_long_history_is_cut_to_the_cap_in_one_write(store: Store, arun) -> None:
    async def body() -> None:
        tokens = list(range(1, 5001))  # past Lua's unpack limit in one RPUSH
        await store.history_set("dev:long", tokens, cap=4500, ttl_s=60)
        assert await store.history_get("dev:long", 10_000) == tokens[-4500:]

    arun(body)


def test_memory_cache_evicts_least_recently_used() -> None:
    async def body() -> None:
        store = MemoryStore(max_cache_entries=2)
        await store.cache_set("o", "a", b"1", ttl_s=60)
        await store.cache_set("o", "b", b"2", ttl_s=60)
        assert await store.cache_get("o", "a") == b"1"  # touching "a" makes "b" the oldest
        await store.cache_set("o", "c", b"3", ttl_s=60)
        assert await store.cache_get("o", "b") is None
        assert (await store.cache_get("o", "a"), await store.cache_get("o", "c")) == (b"1", b"3")

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
    assert isinstance(redis_store, RedisStore) and not redis_store.cluster
    cluster_store = make_store("redis+cluster://127.0.0.1:1", prefix="x:", max_cache_entries=5)
    assert isinstance(cluster_store, RedisStore) and cluster_store.cluster  # connects lazily
    asyncio.run(redis_store.close())
    asyncio.run(cluster_store.close())


def test_cluster_urls_name_their_seed_nodes() -> None:
    assert cluster_url("redis://h:1/0") is None
    assert cluster_url("redis+cluster://h") == ("redis://h", [("h", 6379)])
    assert cluster_url("rediss+cluster://u:p%40ss@a:7000,b:7001,[::1]:7002/0?ssl_cert_reqs=none"
                       ) == ("rediss://u:p%40ss@a:7000/0?ssl_cert_reqs=none",
                             [("a", 7000), ("b", 7001), ("::1", 7002)])
    for bad in ("redis+cluster://", "redis+cluster://a:b", "redis+cluster://a:1,:2"):
        with pytest.raises(ValueError):
            cluster_url(bad)
    with pytest.raises(ValueError, match="braces"):
        RedisStore("redis://127.0.0.1:1/0", prefix="{tandem}:")


def test_an_unreachable_cluster_raises_store_unavailable_at_once() -> None:
    async def body() -> None:
        store = RedisStore("redis+cluster://127.0.0.1:1,127.0.0.1:2", prefix="x:")
        try:
            started = time.monotonic()
            with pytest.raises(StoreUnavailable, match="cannot be connected"):
                await store.history_get("dev:a", 4)
            with pytest.raises(StoreUnavailable):
                await store.registry_load()
            assert time.monotonic() - started < 5.0
        finally:
            await store.close()

    asyncio.run(body())


def test_every_key_of_a_device_hashes_to_one_slot() -> None:
    """The owner is each key's hash tag, so history, bucket and every cached response of a
    device share its slot, whatever the prefix; distinct devices spread over the slots."""
    slots = set()
    for i in range(200):
        owner = f"dev:device-{i}" if i % 2 else f"key:{i:016x}"
        keys = [owner_key(prefix, owner, kind, name)
                for prefix in ("tandem:", "test-1a2b:", "")
                for kind, name in (("hist", ""), ("rate", ""), ("cache", "resp:v1:ab12"),
                                   ("cache", "resp:v2:{odd}"))]
        assert keys[0].startswith("tandem:{" + owner + "}:")
        (slot,) = {key_slot(k.encode()) for k in keys}
        assert slot == key_slot(owner.encode())
        slots.add(slot)
    assert len(slots) > 150  # not one hot slot: devices land all over the cluster
    assert registry_key("tandem:") == "tandem:registry"  # the registry kept its name


def test_every_lua_script_touches_one_key() -> None:
    """A script's keys must share a slot on a cluster; each of ours names KEYS[1] only."""
    scripts = {name: src for name, src in vars(store_module).items() if name.endswith("_LUA")}
    assert set(scripts) == {"_BUCKET_LUA", "_REGISTRY_CAS_LUA", "_HISTORY_LUA"}
    for name, src in scripts.items():
        assert set(re.findall(r"KEYS\[(\w+)\]", src)) == {"1"}, name


def test_the_cluster_keeps_each_devices_keys_on_one_node_in_one_slot(
    redis_cluster: RedisClusterServer,
) -> None:
    """On a real cluster: every key the store wrote for a device is in the device's slot, on
    the one node serving that slot, and the devices' keys are spread over all three nodes."""
    prefix = f"test-{uuid.uuid4().hex[:12]}:"
    owners = [f"dev:d{i}" for i in range(24)] + ["key:0123456789abcdef"]

    async def body() -> None:
        store = RedisStore(redis_cluster.url, prefix=prefix)
        try:
            for owner in owners:
                await store.history_set(owner, [1, 2, 3], cap=8, ttl_s=60)
                await store.rate_take(owner, 10.0, 5)
                for version in ("v1", "v2"):
                    await store.cache_set(owner, f"resp:{version}:abc", b"x", ttl_s=60)
            await store.registry_update({"revision": "1"}, expect_revision=0)
        finally:
            await store.close()

    redis_cluster.start()
    asyncio.run(body())
    found: dict[str, list[tuple[int, int]]] = defaultdict(list)  # owner -> (node, slot)
    registry_nodes = []
    for node, url in enumerate(redis_cluster.node_urls):
        with redis.Redis.from_url(url, decode_responses=True) as r:
            for key in r.scan_iter(match=f"{prefix}*", count=1000):
                if key == registry_key(prefix):
                    registry_nodes.append(node)
                    continue
                owner = re.fullmatch(re.escape(prefix) + r"\{([^}]+)\}:.*", key)
                assert owner, key
                found[owner.group(1)].append((node, int(r.cluster("KEYSLOT", key))))
    assert sorted(found) == sorted(owners)
    for owner, places in found.items():
        assert len(places) == 4, (owner, places)  # history, bucket, two cached responses
        assert len(set(places)) == 1, (owner, places)  # one node, one slot
    assert {node for places in found.values() for node, _ in places} == {0, 1, 2}
    assert len(registry_nodes) == 1


@pytest.mark.parametrize("backend", ["redis", "cluster"])
def test_redis_replicas_share_state(backend: str, request: pytest.FixtureRequest) -> None:
    server = request.getfixturevalue("redis_server" if backend == "redis" else "redis_cluster")

    async def body() -> None:
        prefix = f"test-{uuid.uuid4().hex[:12]}:"
        a, b = RedisStore(server.url, prefix=prefix), RedisStore(server.url, prefix)
        try:
            await a.history_set("s", [1, 2], cap=8, ttl_s=60)
            assert await b.history_get("s", 8) == [1, 2]
            assert (await a.rate_take("dev", 1.0, 1))[0]
            assert not (await b.rate_take("dev", 1.0, 1))[0]  # one bucket across replicas
            await a.cache_set("dev", "k", b"v", ttl_s=60)
            assert await b.cache_get("dev", "k") == b"v"
        finally:
            await a.close()
            await b.close()

    server.start()
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
                lambda: store.cache_get("o", "k"),
                lambda: store.cache_set("o", "k", b"v", ttl_s=60),
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
            await store.cache_set("o", "k", b"v", ttl_s=60)
            admin.execute_command("CLIENT", "PAUSE", 1000, "ALL")  # server alive but silent
            with pytest.raises(StoreUnavailable, match="Timeout"):
                await store.cache_get("o", "k")
            # UNPAUSE is paused too, so this returns once the pause lapses (~0.5 s from now).
            admin.execute_command("CLIENT", "UNPAUSE")
            assert await store.cache_get("o", "k") == b"v"
        finally:
            admin.execute_command("CLIENT", "UNPAUSE")
            admin.close()
            await store.close()

    redis_server.start()
    asyncio.run(body())


def _owner_served_by(cluster: RedisClusterServer, node: int, prefix: str) -> str:
    """A device whose keys live on the cluster's `node`-th master."""
    with redis.Redis.from_url(cluster.node_urls[node]) as r:
        ranges = [(int(lo), int(hi)) for lo, hi, (_, port, *_), *_ in r.cluster("SLOTS")
                  if int(port) == cluster.ports[node]]
    for i in range(10_000):
        owner = f"dev:d{i}"
        slot = key_slot(owner_key(prefix, owner, "hist").encode())
        if any(lo <= slot <= hi for lo, hi in ranges):
            return owner
    raise AssertionError(f"no device found on node {node}: {ranges}")


def test_a_cluster_node_down_raises_store_unavailable_and_recovers(
    redis_cluster: RedisClusterServer,
) -> None:
    """One master away: its devices' calls fail fast as StoreUnavailable (the service then
    degrades); back (empty, without its scripts), the same client serves them again."""
    prefix = f"test-{uuid.uuid4().hex[:12]}:"
    redis_cluster.start()
    owner = _owner_served_by(redis_cluster, 1, prefix)

    async def body() -> None:
        store = RedisStore(redis_cluster.url, prefix=prefix)
        try:
            assert (await store.rate_take(owner, 5.0, 2))[0]  # loads the Lua script
            await store.history_set(owner, [1, 2], cap=4, ttl_s=60)
            redis_cluster.stop_node(1)
            started = time.monotonic()
            calls = [
                lambda: store.history_set(owner, [1], cap=4, ttl_s=60),
                lambda: store.history_get(owner, 4),
                lambda: store.cache_get(owner, "k"),
                lambda: store.cache_set(owner, "k", b"v", ttl_s=60),
                lambda: store.rate_take(owner, 5.0, 2),
            ]
            for call in calls:
                with pytest.raises(StoreUnavailable):
                    await call()
            assert time.monotonic() - started < 5.0  # fails fast: no long retry backoff
            await asyncio.to_thread(redis_cluster.start)  # waits for cluster_state:ok
            deadline = time.monotonic() + 10.0
            while True:  # the client's next topology refresh finds the node again
                try:
                    assert await store.rate_take(owner, 5.0, 2) == (True, 0.0)
                    break
                except StoreUnavailable:
                    if time.monotonic() > deadline:
                        raise
                    await asyncio.sleep(0.1)
            await store.history_set(owner, [3], cap=4, ttl_s=60)
            assert await store.history_get(owner, 4) == [3]
        finally:
            await asyncio.to_thread(redis_cluster.start)
            await store.close()

    asyncio.run(body())
