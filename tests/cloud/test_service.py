"""The service core on a real bundle, against the in-process store and a real redis-server."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import numpy as np
import pytest
from pydantic import SecretStr

from cloud_service.auth import key_id, make_token
from cloud_service.domain import (
    Credentials,
    ManifestRequest,
    Principal,
    PublishRequest,
    RecommendFullRequest,
    RecommendRequest,
)
from cloud_service.errors import (
    InvalidInput,
    NotFound,
    PermissionDenied,
    RateLimited,
    Unauthenticated,
)
from cloud_service.service import RecommendationService
from cloud_service.settings import CloudSettings
from tests.bundles import item_intents

pytestmark = pytest.mark.core
TOKEN_SECRET = "token-secret-of-at-least-32-bytes"  # HS256 keys of 32+ bytes (RFC 7518)
# The principals the transports authenticate an x-api-key, a device token, the admin key as.
KEY = Principal("app", key_id=key_id("device-key"))
DEV1 = Principal("device", device_id="dev-1")  # stored history needs a device token
ADMIN = Principal("admin")


def settings(bundle: Path, **kw: object) -> CloudSettings:
    base = dict(bundle=str(bundle), device_api_keys=[SecretStr("device-key")],
                device_token_secret=SecretStr(TOKEN_SECRET),
                admin_api_key=SecretStr("admin-key"), registry_poll_s=0.05, n_retrieve=40,
                rate_burst=1000, batch_max_wait_ms=5.0)
    base.update(kw)
    return CloudSettings(**base)  # type: ignore[arg-type]


def request(**kw: object) -> RecommendRequest:
    base = dict(device_id="dev-1", intent_tokens=(1, 2), intent_weights=(0.7, 0.3),
                coarse_history=(1, 2, 2, 1), k=10, request_id="r1")
    base.update(kw)
    return RecommendRequest(**base)  # type: ignore[arg-type]


def run(store, body, bundle: Path, **kw: object):  # noqa: ANN001, ANN201
    """Start a service on `store`, run `body(service)`, stop it."""
    async def main():  # noqa: ANN202
        svc = RecommendationService(settings(bundle, **kw), store)
        await svc.start()
        try:
            return await body(svc)
        finally:
            await svc.stop()
    return asyncio.run(main())


def test_collaborative_returns_the_teachers_top_k_of_the_intent_candidates(store, bundle):
    intents = np.array(item_intents(bundle))

    async def body(svc: RecommendationService):  # noqa: ANN202
        rec = await svc.recommend(request(), KEY)
        model = svc.pool.current()
        assert model is not None
        pool = model.index.candidates(np.array([1, 2]), np.array([0.7, 0.3]), 40, 0.1)
        row = model.score([np.array([1, 2, 2, 1])], True)[0]
        expected = pool[np.argsort(-row[pool], kind="stable")[:10]]
        assert list(rec.item_ids) == expected.tolist()
        # Scores are the teacher's log-probabilities over the whole catalog.
        logp = row[expected] - np.log(np.exp(row[1:].astype(np.float64)).sum())
        assert list(rec.scores) == pytest.approx(logp.tolist(), rel=1e-5)
        assert list(rec.item_intents) == intents[expected].tolist()
        assert rec.catalog_size == model.n_items
        assert rec.model_version == model.version and rec.request_id == "r1"
        # Most candidates come from the requested intents (the rest are popular items).
        assert np.isin(intents[list(rec.item_ids)], [1, 2]).mean() >= 0.5
        again = await svc.recommend(request(request_id="r2"), KEY)
        assert again.cached and again.item_ids == rec.item_ids and again.request_id == "r2"
    run(store, body, bundle)


def test_session_history_is_kept_and_used_when_the_device_sends_none(store, bundle):
    async def body(svc: RecommendationService):  # noqa: ANN202
        with_history = await svc.recommend(request(coarse_history=(3, 3, 1)), DEV1)
        assert await svc.store.history_get("dev:dev-1", 50) == [3, 3, 1]
        reused = await svc.recommend(request(coarse_history=()), DEV1)
        assert reused.item_ids == with_history.item_ids
    run(store, body, bundle, cache_ttl_s=0)


def test_cloud_full_excludes_the_history_and_ranks_the_catalog(store, bundle):
    async def body(svc: RecommendationService):  # noqa: ANN202
        hist = (3, 5, 8, 13)
        rec = await svc.recommend_full(RecommendFullRequest("dev-1", hist, k=20), KEY)
        assert len(rec.item_ids) == 20 and not set(hist) & set(rec.item_ids)
        assert list(rec.scores) == sorted(rec.scores, reverse=True)
    run(store, body, bundle)


BAD = [
    (dict(intent_tokens=(999,), intent_weights=(1.0,)), "unknown intent tokens"),
    (dict(intent_tokens=tuple(range(1, 70)), intent_weights=(0.1,) * 69), "too many"),
    (dict(intent_tokens=(), intent_weights=()), "intent_tokens is empty"),
    (dict(intent_weights=(1.0,)), "one weight per token"),
    (dict(intent_weights=(float("nan"), 1.0)), "finite"),
    (dict(k=0), "k must be between"),
    (dict(k=100_000), "k must be between"),
    (dict(coarse_history=(1,) * 500), "at most"),
    (dict(device_id="no spaces allowed"), "device_id"),
]


@pytest.mark.parametrize(("change", "message"), BAD)
def test_bad_requests_are_invalid_input_with_a_message(bundle, change, message):
    from cloud_service.store import MemoryStore

    async def body(svc: RecommendationService):  # noqa: ANN202
        with pytest.raises(InvalidInput, match=message):
            await svc.recommend(request(**change), KEY)
    run(MemoryStore(), body, bundle)


def test_auth_rate_limit_and_versions(bundle, bundle_v2):
    from cloud_service.store import MemoryStore

    async def body(svc: RecommendationService):  # noqa: ANN202
        def device(creds: Credentials) -> Principal:
            return svc.authenticate(creds, admin=False)

        with pytest.raises(Unauthenticated, match="missing credentials"):
            device(Credentials())
        with pytest.raises(Unauthenticated, match="unknown device API key"):
            device(Credentials(api_key="nope"))
        assert device(Credentials(api_key="device-key")) == KEY
        token = device(Credentials(device_token=make_token(TOKEN_SECRET, "dev-1")))
        assert token == DEV1 and (await svc.recommend(request(), token)).item_ids
        with pytest.raises(PermissionDenied, match="minted for"):
            await svc.recommend(request(device_id="dev-2"), token)
        expired = make_token(TOKEN_SECRET, "dev-1", ttl_s=-10)
        with pytest.raises(Unauthenticated, match="expired"):
            device(Credentials(device_token=expired))
        with pytest.raises(PermissionDenied):
            svc.authenticate(Credentials(api_key="device-key"), admin=True)
        with pytest.raises(PermissionDenied):
            await svc.publish(PublishRequest(str(bundle_v2)), KEY)
        with pytest.raises(PermissionDenied, match="acts for no device"):
            await svc.recommend(request(), svc.authenticate(Credentials(admin_key="admin-key"),
                                                             admin=True))
        with pytest.raises(NotFound, match="not served"):
            await svc.recommend(request(model_version="v0-unknown"), KEY)
        busy = device(Credentials(device_token=make_token(TOKEN_SECRET, "busy")))
        for _ in range(3):
            await svc.recommend(request(device_id="busy"), busy)
        with pytest.raises(RateLimited) as err:
            await svc.recommend(request(device_id="busy"), busy)
        assert err.value.retry_after_s and err.value.retry_after_s > 0
    run(MemoryStore(), body, bundle, rate_burst=3, rate_per_s=0.5)


def test_publish_switches_versions_and_keeps_the_old_one_for_pinned_devices(store, bundle,
                                                                           bundle_v2):
    async def body(svc: RecommendationService):  # noqa: ANN202
        old = svc.pool.state.current
        state = await svc.publish(PublishRequest(str(bundle_v2)), ADMIN)
        assert state.current == "v2-test"
        assert (await svc.recommend(request(), KEY)).model_version == "v2-test"
        pinned = await svc.recommend(request(model_version=old), KEY)
        assert pinned.model_version == old
        manifest = await svc.get_manifest(ManifestRequest("dev-1"), KEY)
        assert manifest.version == "v2-test"
        assert json.loads(manifest.manifest_json)["version"] == "v2-test"
        with pytest.raises(InvalidInput, match="refused"):
            await svc.publish(PublishRequest(str(bundle_v2.parent)), ADMIN)  # not a bundle
    run(store, body, bundle, bundle_root=str(bundle_v2.parent))


def test_concurrent_requests_share_teacher_calls(bundle):
    from cloud_service.store import MemoryStore

    async def body(svc: RecommendationService):  # noqa: ANN202
        reqs = [request(device_id=f"d{i}", intent_tokens=(1 + i % 3,), intent_weights=(1.0,))
                for i in range(32)]
        recs = await asyncio.gather(*(svc.recommend(r, KEY) for r in reqs))
        assert all(len(r.item_ids) == 10 for r in recs)
        hist = svc.metrics.batch_size
        count = hist.collect()[0].samples
        n_batches = next(s.value for s in count if s.name.endswith("_count"))
        assert n_batches < 32  # some requests shared a call
    run(MemoryStore(), body, bundle, cache_ttl_s=0, batch_max_wait_ms=20.0)


def test_the_service_answers_without_redis_and_counts_the_outage(redis_server, bundle):
    from cloud_service.store import RedisStore

    async def body(svc: RecommendationService):  # noqa: ANN202
        assert (await svc.recommend(request(), KEY)).item_ids
        redis_server.stop()
        try:
            rec = await svc.recommend(request(coarse_history=(2, 1)), DEV1)
            assert len(rec.item_ids) == 10
            text = svc.metrics.exposition().decode()
            assert 'tandem_store_errors_total{op="history"}' in text
            assert "tandem_store_up 0.0" in text
        finally:
            redis_server.start()
        await asyncio.sleep(0.1)
        await svc.recommend(request(coarse_history=(3,)), DEV1)
        assert await svc.store.history_get("dev:dev-1", 10) == [3]
        assert "tandem_store_up 1.0" in svc.metrics.exposition().decode()
    run(RedisStore(redis_server.url, prefix="outage:"), body, bundle)
