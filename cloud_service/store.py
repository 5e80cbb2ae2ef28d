"""Shared state of the cloud service: session history, response cache, rate buckets, registry.

`MemoryStore` is the embedded default for a single replica; `RedisStore` shares the state between
replicas, on one Redis node (`redis://`) or a Redis Cluster (`redis+cluster://`). Both raise
`StoreUnavailable` when the backend is down so the service can degrade.

Per-device state belongs to an *owner*, the principal's scope (`dev:<device id>` or
`key:<api key id>`). In Redis every key of an owner carries the owner as its hash tag, for
example `tandem:{dev:abc}:hist`, so a cluster keeps all of one device's keys in one hash slot;
every Lua script and every command touches a single key.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Generic, Protocol, TypeVar
from urllib.parse import urlsplit, urlunsplit

from cachetools import TLRUCache

V = TypeVar("V")


class StoreUnavailable(Exception):
    """The backend cannot be reached or timed out; the caller should degrade, not fail."""


class Store(Protocol):
    """What the service needs from its shared state; every method may raise StoreUnavailable.

    `owner` is the principal's scope (`Principal.scope`): one session history and one rate
    bucket per owner, and response-cache entries that only that owner reads.
    """

    async def history_set(
        self, owner: str, tokens: Sequence[int], cap: int, ttl_s: int
    ) -> None: ...
    async def history_get(self, owner: str, limit: int) -> list[int]: ...
    async def cache_get(self, owner: str, key: str) -> bytes | None: ...
    async def cache_set(self, owner: str, key: str, value: bytes, ttl_s: int) -> None: ...
    async def rate_take(self, owner: str, rate_per_s: float, burst: int) -> tuple[bool, float]: ...
    async def registry_load(self) -> dict[str, str]: ...
    async def registry_update(
        self, fields: dict[str, str], delete: Sequence[str] = (),
        expect_revision: int | None = None,
    ) -> bool: ...
    async def close(self) -> None: ...


def _check_owner(owner: str) -> None:
    # The owner is a Redis Cluster hash tag: a brace would end (or empty) the tag early.
    if not owner or "{" in owner or "}" in owner:
        raise ValueError(f"owner must be non-empty and hold no braces, got {owner!r}")


def _check_history(cap: int, ttl_s: int) -> None:
    # cap 0 would turn the [-cap:] cut into "keep everything"; refuse it in both stores.
    if cap < 1 or ttl_s < 1:
        raise ValueError(f"history cap and ttl_s must be >= 1, got cap={cap} ttl_s={ttl_s}")


def _check_bucket(rate_per_s: float, burst: int) -> None:
    if not (rate_per_s > 0 and math.isfinite(rate_per_s)) or burst < 1:
        raise ValueError(f"need rate_per_s > 0 and burst >= 1, got {rate_per_s}, {burst}")


def _revision(fields: dict[str, str]) -> int:
    return int(fields.get("revision", "0") or 0)


def _bucket_ttl_s(rate_per_s: float, burst: int) -> int:
    """Seconds after which an idle bucket is full again, so forgetting it changes nothing."""
    return math.ceil(burst / rate_per_s) + 1


class _TTLMap(Generic[V]):
    """A bounded LRU map whose entries each expire after their own TTL (cachetools' TLRUCache:
    expired entries go first, then the least recently used once it is full)."""

    def __init__(self, max_entries: int, clock: Callable[[], float]) -> None:
        if max_entries < 1:
            raise ValueError(f"max_entries must be >= 1, got {max_entries}")
        self._data: TLRUCache[str, tuple[float, V]] = TLRUCache(
            max_entries, ttu=lambda _key, item, now: now + item[0], timer=clock)

    def get(self, key: str) -> V | None:
        item = self._data.get(key)
        return None if item is None else item[1]

    def set(self, key: str, value: V, ttl_s: float) -> None:
        self._data[key] = (ttl_s, value)


class MemoryStore:
    """In-process store for a single replica: bounded LRU maps with TTLs on a monotonic clock.

    Safe under asyncio because no method awaits between reading and writing; not thread-safe.
    """

    def __init__(
        self,
        *,
        max_cache_entries: int = 100_000,
        max_sessions: int = 100_000,
        max_buckets: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._clock = clock
        self._history: _TTLMap[list[int]] = _TTLMap(max_sessions, clock)
        self._cache: _TTLMap[bytes] = _TTLMap(max_cache_entries, clock)
        # An evicted bucket comes back full: under memory pressure we err on allowing requests.
        self._buckets: _TTLMap[tuple[float, float]] = _TTLMap(max_buckets, clock)
        self._registry: dict[str, str] = {}

    async def history_set(
        self, owner: str, tokens: Sequence[int], cap: int, ttl_s: int
    ) -> None:
        _check_owner(owner)
        _check_history(cap, ttl_s)
        self._history.set(owner, [int(t) for t in tokens][-cap:], ttl_s)

    async def history_get(self, owner: str, limit: int) -> list[int]:
        _check_owner(owner)
        if limit < 1:
            return []
        return list((self._history.get(owner) or [])[-limit:])

    async def cache_get(self, owner: str, key: str) -> bytes | None:
        _check_owner(owner)
        return self._cache.get(f"{{{owner}}}:{key}")

    async def cache_set(self, owner: str, key: str, value: bytes, ttl_s: int) -> None:
        _check_owner(owner)
        if ttl_s <= 0:
            raise ValueError(f"ttl_s must be > 0, got {ttl_s}")
        self._cache.set(f"{{{owner}}}:{key}", bytes(value), ttl_s)

    async def rate_take(self, owner: str, rate_per_s: float, burst: int) -> tuple[bool, float]:
        _check_owner(owner)
        _check_bucket(rate_per_s, burst)
        now = self._clock()
        tokens, ts = self._buckets.get(owner) or (float(burst), now)
        tokens = min(float(burst), tokens + max(0.0, now - ts) * rate_per_s)
        allowed = tokens >= 1.0
        retry_after = 0.0 if allowed else (1.0 - tokens) / rate_per_s
        if allowed:
            tokens -= 1.0
        self._buckets.set(owner, (tokens, now), _bucket_ttl_s(rate_per_s, burst))
        return allowed, retry_after

    async def registry_load(self) -> dict[str, str]:
        return dict(self._registry)

    async def registry_update(self, fields: dict[str, str], delete: Sequence[str] = (),
                              expect_revision: int | None = None) -> bool:
        if expect_revision is not None and _revision(self._registry) != expect_revision:
            return False
        # Deletes first, then sets, to match Redis's HDEL-then-HSET order in RedisStore.
        for name in delete:
            self._registry.pop(name, None)
        self._registry.update({str(k): str(v) for k, v in fields.items()})
        return True

    async def close(self) -> None:
        return None


# Token bucket on the server's clock (TIME) so every replica refills the same bucket alike.
# Floats go back as strings: Redis truncates Lua numbers to integers in replies.
_BUCKET_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local rate, burst, ttl = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens, ts = tonumber(state[1]), tonumber(state[2])
if tokens == nil or ts == nil then tokens, ts = burst, now end
tokens = math.min(burst, tokens + math.max(0, now - ts) * rate)
local allowed, retry_after = 0, (1 - tokens) / rate
if tokens >= 1 then allowed, retry_after, tokens = 1, 0, tokens - 1 end
redis.call('HSET', KEYS[1], 'tokens', string.format('%.17g', tokens),
           'ts', string.format('%.17g', now))
redis.call('EXPIRE', KEYS[1], ttl)
return {allowed, string.format('%.17g', retry_after)}
"""


# Compare-and-set on the registry hash: apply the deletes and sets only if its revision is still
# the one the caller read (ARGV[1]; "" skips the check). ARGV[2] deletes follow, then field pairs.
_REGISTRY_CAS_LUA = """
local expect = ARGV[1]
if expect ~= '' and (redis.call('HGET', KEYS[1], 'revision') or '0') ~= expect then
  return 0
end
local n = tonumber(ARGV[2])
for i = 3, 2 + n do redis.call('HDEL', KEYS[1], ARGV[i]) end
local pairs = {}
for i = 3 + n, #ARGV do pairs[#pairs + 1] = ARGV[i] end
if #pairs > 0 then redis.call('HSET', KEYS[1], unpack(pairs)) end
return 1
"""


# An owner's session history replaced at once: ARGV[1] is the TTL, the tokens follow (already
# cut to the cap), pushed 1000 at a time to stay clear of Lua's unpack limit.
_HISTORY_LUA = """
redis.call('DEL', KEYS[1])
for i = 2, #ARGV, 1000 do
  redis.call('RPUSH', KEYS[1], unpack(ARGV, i, math.min(i + 999, #ARGV)))
end
redis.call('EXPIRE', KEYS[1], ARGV[1])
return 1
"""


def owner_key(prefix: str, owner: str, kind: str, name: str = "") -> str:
    """The Redis key of an owner's state: `<prefix>{<owner>}:<kind>[:<name>]`.

    The braces make the owner the key's hash tag: Redis Cluster hashes only `<owner>`, so all of
    one device's keys (history, rate bucket, cached responses) live in one hash slot.
    """
    _check_owner(owner)
    return f"{prefix}{{{owner}}}:{kind}:{name}" if name else f"{prefix}{{{owner}}}:{kind}"


def registry_key(prefix: str) -> str:
    """The registry hash: one key, so in a cluster it lives in the one slot its name hashes to."""
    return f"{prefix}registry"


_CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}


def cluster_url(url: str) -> tuple[str, list[tuple[str, int]]] | None:
    """A Redis Cluster URL's plain `redis://` (or `rediss://`) URL and its seed nodes.

    `redis+cluster://[user:password@]host[:port][,host[:port]...][/0][?option=value]` names a
    cluster by one or more seed nodes (port 6379 by default); the client learns the other nodes
    from whichever seed answers. Returns None for any other scheme (a single Redis node).
    """
    parts = urlsplit(url)
    base = _CLUSTER_SCHEMES.get(parts.scheme.lower())
    if base is None:
        return None
    userinfo, at, hosts = parts.netloc.rpartition("@")
    names = [h.strip() for h in hosts.split(",") if h.strip()]
    if not names:
        raise ValueError(f"a {parts.scheme}:// URL needs at least one host[:port]")
    seeds = [_host_port(name) for name in names]
    first = urlunsplit((base, f"{userinfo}{at}{names[0]}", parts.path, parts.query,
                        parts.fragment))
    return first, seeds


def _host_port(name: str) -> tuple[str, int]:
    if name.startswith("["):  # [IPv6]:port
        host, _, rest = name[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    else:
        host, _, port = name.partition(":")
    if not host or not (port or "6379").isdigit():
        raise ValueError(f"bad Redis Cluster seed node {name!r}: expected host[:port]")
    return host, int(port or 6379)


def _redis_client(url: str, socket_timeout_s: float) -> Any:
    """A redis.asyncio client for one node, or a RedisCluster for a `redis+cluster://` URL."""
    # Imported here so the embedded MemoryStore works without the cloud extra installed.
    import redis.asyncio as aioredis
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff

    # One immediate retry replaces a pooled connection that died with a restarted server;
    # redis-py's default (several retries with backoff) would stall requests for seconds.
    opts: dict[str, Any] = dict(socket_timeout=socket_timeout_s,
                                socket_connect_timeout=socket_timeout_s,
                                retry=Retry(NoBackoff(), 1))
    cluster = cluster_url(url)
    if cluster is None:
        return aioredis.Redis.from_url(url, **opts)
    from redis.asyncio.cluster import ClusterNode, RedisCluster

    first, seeds = cluster
    return RedisCluster.from_url(
        first, startup_nodes=[ClusterNode(host, port) for host, port in seeds[1:]], **opts)


class RedisStore:
    """Redis-backed store shared by replicas; connection failures surface as StoreUnavailable.

    `url` is `redis://` or `rediss://` for one node, `redis+cluster://` or `rediss+cluster://`
    for a Redis Cluster (see `cluster_url`). Both run the same single-key commands and scripts.
    """

    def __init__(
        self, url: str, prefix: str = "tandem:", socket_timeout_s: float = 0.25
    ) -> None:
        if "{" in prefix or "}" in prefix:
            raise ValueError(f"the Redis key prefix must hold no braces (each device's id is "
                             f"its keys' hash tag), got {prefix!r}")
        self._prefix = prefix
        self.cluster = cluster_url(url) is not None
        self._client: Any = _redis_client(url, socket_timeout_s)
        # The Script object reloads the Lua source itself when Redis answers NOSCRIPT (on a
        # cluster, SCRIPT LOAD goes to every primary).
        self._bucket = self._client.register_script(_BUCKET_LUA)
        self._registry_cas = self._client.register_script(_REGISTRY_CAS_LUA)
        self._history = self._client.register_script(_HISTORY_LUA)

    def _key(self, owner: str, kind: str, name: str = "") -> str:
        return owner_key(self._prefix, owner, kind, name)

    @contextlib.contextmanager
    def _guard(self, op: str) -> Iterator[None]:
        """Turn "Redis is not there right now" errors into StoreUnavailable."""
        from redis import exceptions as rex

        try:
            yield
        except (
            rex.ConnectionError, rex.TimeoutError, rex.ReadOnlyError, rex.ClusterDownError,
            # The cluster client's own errors: no node reachable, a slot without a node. Every
            # command here names one key, so none of its misuse errors (cross-slot) can occur.
            rex.RedisClusterException,
            OSError,
        ) as e:
            raise StoreUnavailable(f"redis {op} failed: {type(e).__name__}: {e}") from e

    async def history_set(
        self, owner: str, tokens: Sequence[int], cap: int, ttl_s: int
    ) -> None:
        """DEL+RPUSH+EXPIRE in one script, of the last `cap` tokens."""
        _check_history(cap, ttl_s)
        key = self._key(owner, "hist")
        kept = [int(t) for t in tokens][-cap:]
        with self._guard("history_set"):
            await self._history(keys=[key], args=[ttl_s, *kept])

    async def history_get(self, owner: str, limit: int) -> list[int]:
        key = self._key(owner, "hist")
        if limit < 1:
            return []  # LRANGE -0 -1 would return the whole list
        with self._guard("history_get"):
            raw = await self._client.lrange(key, -limit, -1)
        return [int(x) for x in raw]

    async def cache_get(self, owner: str, key: str) -> bytes | None:
        name = self._key(owner, "cache", key)
        with self._guard("cache_get"):
            value = await self._client.get(name)
        return None if value is None else bytes(value)

    async def cache_set(self, owner: str, key: str, value: bytes, ttl_s: int) -> None:
        name = self._key(owner, "cache", key)
        if ttl_s <= 0:
            raise ValueError(f"ttl_s must be > 0, got {ttl_s}")
        with self._guard("cache_set"):
            await self._client.set(name, value, px=max(1, int(ttl_s * 1000)))

    async def rate_take(self, owner: str, rate_per_s: float, burst: int) -> tuple[bool, float]:
        key = self._key(owner, "rate")
        _check_bucket(rate_per_s, burst)
        args: list[str | int] = [repr(float(rate_per_s)), burst, _bucket_ttl_s(rate_per_s, burst)]
        with self._guard("rate_take"):
            allowed, retry_after = await self._bucket(keys=[key], args=args)
        return bool(int(allowed)), float(retry_after)

    async def registry_load(self) -> dict[str, str]:
        with self._guard("registry_load"):
            raw = await self._client.hgetall(registry_key(self._prefix))
        return {k.decode(): v.decode() for k, v in raw.items()}

    async def registry_update(self, fields: dict[str, str], delete: Sequence[str] = (),
                              expect_revision: int | None = None) -> bool:
        if not fields and not delete:
            return True
        sets = [x for k, v in fields.items() for x in (str(k), str(v))]
        expect = "" if expect_revision is None else str(expect_revision)
        with self._guard("registry_update"):
            done = await self._registry_cas(keys=[registry_key(self._prefix)],
                                            args=[expect, len(delete), *delete, *sets])
        return bool(int(done))

    async def close(self) -> None:
        with contextlib.suppress(Exception):  # closing a client whose server is gone is fine
            await self._client.aclose()


_REDIS_ONLY = frozenset({"prefix", "socket_timeout_s"})
_MEMORY_ONLY = frozenset({"max_cache_entries", "max_sessions", "max_buckets", "clock"})


def make_store(redis_url: str | None, **kw: Any) -> Store:
    """RedisStore when a URL is configured (one node or a cluster), else the embedded MemoryStore.

    Options meant for the other kind of store are dropped, so one settings object can always
    pass all of them; unknown options still raise TypeError.
    """
    if redis_url:
        return RedisStore(redis_url, **{k: v for k, v in kw.items() if k not in _MEMORY_ONLY})
    return MemoryStore(**{k: v for k, v in kw.items() if k not in _REDIS_ONLY})
