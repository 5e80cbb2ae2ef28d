"""The cloud core: `RecommendationService`, built once at start-up, shared by both transports.

It works on domain types only (no fastapi, no grpc), and takes the `Principal` a transport
authenticated. Request path for collaborative mode: the principal acts for the named device
-> rate limit -> model version -> validation -> session history -> cache -> intent
retrieval -> teacher in coarse mode (micro-batched) -> top k. The store (Redis or in-process)
is optional at run time: when it fails, requests are served without history and cache, the
rate limit falls back to a bucket per replica, and the failure is logged and counted.

Every per-device key (history, cache, rate bucket, canary side) comes from the authenticated
`Principal`, never from the device id a caller typed.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import time
from collections.abc import Awaitable, Iterator
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from cloud_service import response_cache
from cloud_service.admin import RegistryAdmin
from cloud_service.auth import acting_for, authenticate
from cloud_service.batcher import MicroBatcher
from cloud_service.domain import (
    Credentials,
    Principal,
    Recommendation,
    RecommendFullRequest,
    RecommendRequest,
)
from cloud_service.errors import NotFound, RateLimited, Unavailable
from cloud_service.metrics import Metrics
from cloud_service.model_pool import ModelPool
from cloud_service.models import LoadedModel, load_model
from cloud_service.registry import ModelRegistry
from cloud_service.settings import CloudSettings
from cloud_service.store import MemoryStore, Store, StoreUnavailable, make_store
from cloud_service.validation import (
    check_device_id,
    check_recommend,
    check_recommend_full,
)
from tandemrec.paths import artifacts_dir
from tandemrec.retrieval import answer

log = logging.getLogger("tandem.cloud")
T = TypeVar("T")


class RecommendationService(RegistryAdmin):
    """Collaborative and cloud-full recommendation, bundles for devices, and the registry."""

    def __init__(self, settings: CloudSettings, store: Store | None = None) -> None:
        self.settings = settings
        self.store = store or make_store(settings.redis_url or None, prefix=settings.redis_prefix)
        self.metrics = Metrics()
        self.registry = ModelRegistry(self.store)
        size = settings.batch_max_size if settings.batching else 1
        self.batcher: MicroBatcher[tuple[LoadedModel, bool]] = MicroBatcher(
            lambda key, rows: key[0].score(rows, key[1]), max_size=size,
            max_wait_s=settings.batch_max_wait_ms / 1000, on_batch=self.metrics.batch_size.observe,
            adaptive=settings.batch_adaptive)
        self.pool = ModelPool(self.registry, self.metrics, keep=settings.keep_versions,
                              safe=self._safe, on_evict=self._evicted,
                              loader=partial(load_model, runtime=settings.teacher_runtime,
                                             threads=settings.teacher_threads(),
                                             spin=settings.teacher_spin))
        self._inflight = 0
        self._draining = False  # readiness is false: load balancers stop routing here
        self._closed = False  # new requests are refused; those in flight finish
        self._stopped = False  # in-flight requests are done (or the grace ran out)
        self._poller: asyncio.Task | None = None
        self._last_store_warning = 0.0
        # Holds the rate limit on this replica while the shared store is away (bounded, LRU).
        self._local_buckets = MemoryStore(max_cache_entries=1, max_sessions=1)
        self.bundle_root = Path(os.path.realpath(settings.bundle_root or artifacts_dir()))

    # ---- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Publish the configured bundle if the registry is empty, load, warm up, then poll."""
        s = self.settings
        import torch  # deferred: the core imports torch only through the model modules

        torch.set_num_threads(s.teacher_threads())
        state = await self._safe("registry", self.registry.state(), None)
        if (state is None or not state.current) and s.bundle:
            await self.pool.publish_local(s.bundle)
        await self.pool.refresh()
        if not self.pool.current():
            raise Unavailable("no model version to serve: set TANDEM_CLOUD_BUNDLE to a bundle "
                              "directory (tandem pipeline writes one) or publish one")
        await self._warm_up()
        self._poller = asyncio.create_task(self._poll())

    async def _warm_up(self) -> None:
        for model in self.pool.models():
            await asyncio.to_thread(model.score, [np.array([1])], True)
            await asyncio.to_thread(model.score, [np.array([1])], False)
        self.pool.ready = True

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.settings.registry_poll_s)
            try:
                await self.pool.refresh()
            except Exception:  # a bad bundle must not kill the poller; the old version stays
                log.exception("registry refresh failed; serving the versions already loaded")

    def begin_drain(self) -> None:
        """Readiness turns false first; requests are still served until `stop`."""
        self._draining = True

    async def stop(self) -> None:
        """Refuse new requests, let in-flight ones finish (up to the grace period), close."""
        self._draining = self._closed = True
        deadline = time.monotonic() + self.settings.shutdown_grace_s
        while self._inflight and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        self._stopped = True
        if self._poller:
            self._poller.cancel()
        await self.batcher.close()
        await self.store.close()

    @property
    def ready(self) -> bool:
        return self.pool.ready and not self._draining

    @contextlib.contextmanager
    def in_flight(self) -> Iterator[None]:
        """A transport's request, counted from its arrival so the drain waits for it."""
        if self._closed:
            raise _shutting_down()
        self._inflight += 1
        try:
            yield
        finally:
            self._inflight -= 1

    def authenticate(self, creds: Credentials, admin: bool) -> Principal:
        """The principal every operation takes; transports call it before parsing the request."""
        return authenticate(creds, self.settings, admin)

    # ---- helpers ---------------------------------------------------------------------------

    async def _safe(self, op: str, coro: Awaitable[T], default: T) -> T:
        """Await a store call; on a store outage count it, log it (at most every 5 s), go on."""
        try:
            out = await coro
        except StoreUnavailable as exc:
            self._store_down(op, exc)
            return default
        self.metrics.store_up.set(1)
        return out

    def _store_down(self, op: str, exc: StoreUnavailable) -> None:
        """Count a store failure and log it, at most every 5 s."""
        self.metrics.store_failed(op)
        now = time.monotonic()
        if now - self._last_store_warning > 5:
            self._last_store_warning = now
            log.warning("store unavailable (%s): serving without it: %s", op, exc)

    def _evicted(self, model: LoadedModel) -> None:
        for coarse in (True, False):
            self.batcher.drop((model, coarse),
                              Unavailable(f"model version {model.version} was unloaded: retry"))

    async def _admit(self, device_id: str, who: Principal) -> Principal:
        """Authorize for the device (before any validation), validate the id, take a token."""
        if self._stopped:  # requests that arrived before the drain closed the doors still pass
            raise _shutting_down()
        if not self.pool.ready:
            raise Unavailable("no model loaded yet: retry shortly")
        who = acting_for(who, device_id)
        check_device_id(device_id)
        await self._rate_limit(who)
        return who

    async def _rate_limit(self, who: Principal) -> None:
        """One bucket per principal; a replica-local bucket while the store is away."""
        s = self.settings
        rate, burst, per = ((s.key_rate_per_s, s.key_rate_burst, "API key") if who.kind == "app"
                            else (s.rate_per_s, s.rate_burst, "device"))
        try:
            allowed, retry = await self.store.rate_take(who.scope, rate, burst)
            self.metrics.store_up.set(1)
        except StoreUnavailable as exc:  # degrade to this replica's bucket, never fail open
            self._store_down("rate_limit", exc)
            allowed, retry = await self._local_buckets.rate_take(who.scope, rate, burst)
        if not allowed:
            raise RateLimited(f"rate limit of {rate:g} requests/s per {per} exceeded: "
                              f"retry in {retry:.2f} s", retry_after_s=retry)

    def _model(self, version: str, who: Principal) -> LoadedModel:
        model = self.pool.resolve(version, who.route_id)
        if model is None:
            raise NotFound(f"model version {version!r} is not served (live: "
                           f"{', '.join(self.pool.versions())}): fetch the current manifest")
        return model

    async def _cached(self, who: Principal, key: str) -> Recommendation | None:
        if not self.settings.cache_ttl_s:
            return None
        raw = await self._safe("cache", self.store.cache_get(who.scope, key), None)
        self.metrics.cache.labels("hit" if raw else "miss").inc()
        return response_cache.decode(raw) if raw else None

    async def _cache(self, who: Principal, key: str, rec: Recommendation) -> None:
        if self.settings.cache_ttl_s:
            await self._safe("cache", self.store.cache_set(
                who.scope, key, response_cache.encode(rec), self.settings.cache_ttl_s), None)

    # ---- operations ------------------------------------------------------------------------

    async def recommend(self, req: RecommendRequest, who: Principal) -> Recommendation:
        """Collaborative: intent tokens in, the teacher's top k of the retrieved candidates out."""
        with self.metrics.track("recommend"):
            self._inflight += 1
            try:
                return await self._recommend(req, who)
            finally:
                self._inflight -= 1

    async def _recommend(self, req: RecommendRequest, who: Principal) -> Recommendation:
        s = self.settings
        who = await self._admit(req.device_id, who)
        model = self._model(req.model_version, who)
        check_recommend(req, model.n_intents, s)
        n_retrieve, share, hist_len = retrieval_settings(s, model)
        history = await self._history(who, req.coarse_history, hist_len)
        # The principal is part of the key: a hit never tells one device what another asked.
        key = response_cache.cache_key("c", model.version, who.scope, req.intent_tokens,
                                       req.intent_weights, history, req.k) if s.cache_ttl_s else ""
        hit = await self._cached(who, key)
        if hit:
            return _with_id(hit, req.request_id)
        tokens = np.asarray(req.intent_tokens, dtype=np.int64)
        weights = np.asarray(req.intent_weights, dtype=np.float64)
        pool = model.index.candidates(tokens, weights, max(n_retrieve, req.k), share)
        # Without a history the teacher reads the requested intents, strongest last.
        context = np.asarray(history, dtype=np.int64) if history else tokens[np.argsort(weights)]
        row = await self.batcher.submit((model, True), context)
        top, logp, intents = answer(row, pool, req.k, model.item_intent)
        rec = Recommendation(tuple(top.tolist()), tuple(logp.tolist()), model.version,
                             req.request_id, item_intents=tuple(intents.tolist()),
                             catalog_size=model.n_items, **model.semantic_fields(top))
        await self._cache(who, key, rec)
        return rec

    async def _history(self, who: Principal, sent: tuple[int, ...], limit: int) -> list[int]:
        """The history to read: the one sent (stored for a device), else the device's stored one.

        An app API key proves no device, so it neither reads nor writes a stored history.
        """
        if sent:
            history = list(sent[-limit:])
            if who.stateful:
                s = self.settings
                await self._safe("history", self.store.history_set(
                    who.scope, history, s.history_cap, s.history_ttl_s), None)
            return history
        if not who.stateful:
            return []
        # The device may rely on the history it sent earlier, to any replica.
        return await self._safe("history", self.store.history_get(who.scope, limit), [])

    async def recommend_full(self, req: RecommendFullRequest, who: Principal) -> Recommendation:
        """Cloud-full baseline: the raw history in, the teacher's ranking of the catalog out."""
        with self.metrics.track("recommend_full"):
            self._inflight += 1
            try:
                who = await self._admit(req.device_id, who)
                model = self._model(req.model_version, who)
                check_recommend_full(req, model.n_items, self.settings)
                hist = np.asarray(req.item_history, dtype=np.int64)
                row = (await self.batcher.submit((model, False), hist)).copy()
                row[0] = -np.inf
                row[hist] = -np.inf  # items already consumed are not recommended again
                k = min(req.k, model.n_items - len(np.unique(hist)))
                top = np.argpartition(-row, k)[:k] if k < len(row) else np.arange(len(row))
                top = top[np.argsort(-row[top], kind="stable")]
                return Recommendation(tuple(top.tolist()),
                                      tuple(row[top].astype(np.float64).tolist()),
                                      model.version, req.request_id)
            finally:
                self._inflight -= 1

    def health(self) -> dict[str, Any]:
        return {"ready": self.ready, "current": self.pool.state.current,
                "canary": self.pool.state.canary, "loaded": self.pool.versions()}


def retrieval_settings(s: CloudSettings, model: LoadedModel) -> tuple[int, float, int]:
    """(candidates retrieved, popular share, history read): settings first, then the bundle's."""
    sv = model.serving
    n = s.n_retrieve if s.n_retrieve is not None else int(sv.get("n_retrieve", 600))
    share = s.popular_share if s.popular_share is not None else float(
        sv.get("popular_share", 0.1))
    hist = s.coarse_history if s.coarse_history is not None else int(
        sv.get("coarse_history", 50))
    return n, share, hist


def _shutting_down() -> Unavailable:
    return Unavailable("the service is shutting down: retry on another replica",
                       retry_after_s=1.0)


def _with_id(rec: Recommendation, request_id: str) -> Recommendation:
    return dataclasses.replace(rec, request_id=request_id)
