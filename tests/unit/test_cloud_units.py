"""Pure pieces of the cloud core: tokens, validation messages, micro-batching, settings."""

from __future__ import annotations

import asyncio
import base64

import numpy as np
import pytest
from pydantic import SecretStr

from cloud_service.auth import check_admin, check_device, make_token, token_device
from cloud_service.batcher import MicroBatcher
from cloud_service.domain import Credentials, RecommendFullRequest
from cloud_service.errors import ERRORS, InvalidInput, PermissionDenied, Unauthenticated
from cloud_service.settings import CloudSettings, get_settings
from cloud_service.validation import check_recommend_full

pytestmark = pytest.mark.unit


def test_tokens_bind_a_device_and_expire():
    tok = make_token("s3cret", "device:7", ttl_s=60, now=1000)
    assert token_device("s3cret", tok, now=1030) == "device:7"
    with pytest.raises(Unauthenticated, match="expired"):
        token_device("s3cret", tok, now=2000)
    with pytest.raises(Unauthenticated, match="signature"):
        token_device("other", tok, now=1030)
    parts = tok.split(".")
    parts[1] = base64.urlsafe_b64encode(b"device:8").decode().rstrip("=")
    forged = ".".join(parts)  # another device id under the old signature
    with pytest.raises(Unauthenticated):
        token_device("s3cret", forged, now=1030)
    with pytest.raises(Unauthenticated, match="malformed"):
        token_device("s3cret", "abc", now=1030)


def test_device_and_admin_checks():
    s = CloudSettings(device_api_keys=[SecretStr("k1")], admin_api_key=SecretStr("adm"))
    check_device(Credentials(api_key="k1"), "d", s)
    with pytest.raises(Unauthenticated):
        check_device(Credentials(api_key="k2"), "d", s)
    check_admin(Credentials(admin_key="adm"), s)
    with pytest.raises(PermissionDenied):
        check_admin(Credentials(api_key="k1"), s)
    with pytest.raises(Unauthenticated):
        check_admin(Credentials(admin_key="wrong"), s)
    open_settings = CloudSettings(auth_required=False)
    check_device(Credentials(), "d", open_settings)


def test_every_error_has_a_distinct_http_status_and_grpc_code():
    assert len({e.http_status for e in ERRORS}) == len(ERRORS)
    assert len({e.grpc_code for e in ERRORS}) == len(ERRORS)
    assert all(400 <= e.http_status < 600 for e in ERRORS)


def test_full_request_validation_names_the_problem():
    s = CloudSettings(max_history=5)
    with pytest.raises(InvalidInput, match="at most 5"):
        check_recommend_full(RecommendFullRequest("d", tuple(range(1, 8))), 100, s)
    with pytest.raises(InvalidInput, match=r"unknown item ids \[101\]"):
        check_recommend_full(RecommendFullRequest("d", (1, 101)), 100, s)
    with pytest.raises(InvalidInput, match="empty"):
        check_recommend_full(RecommendFullRequest("d", ()), 100, s)


def test_micro_batcher_groups_concurrent_rows_and_keeps_their_order():
    calls: list[int] = []

    def fn(key: str, rows: list[np.ndarray]) -> np.ndarray:
        calls.append(len(rows))
        return np.stack([r * 10 for r in rows])

    async def main() -> list[np.ndarray]:
        b: MicroBatcher[str] = MicroBatcher(fn, max_size=8, max_wait_s=0.05)
        out = await asyncio.gather(*(b.submit("m", np.array([i])) for i in range(20)))
        await b.close()
        return out

    out = asyncio.run(main())
    assert [int(o[0]) for o in out] == [10 * i for i in range(20)]
    assert max(calls) == 8 and sum(calls) == 20 and len(calls) <= 4


def test_settings_read_the_environment_once(monkeypatch):
    monkeypatch.setenv("TANDEM_CLOUD_DEVICE_API_KEYS", "a, b")
    monkeypatch.setenv("TANDEM_CLOUD_BATCH_MAX_SIZE", "16")
    get_settings.cache_clear()
    s = get_settings()
    assert [k.get_secret_value() for k in s.device_api_keys] == ["a", "b"]
    assert s.batch_max_size == 16 and get_settings() is s
    get_settings.cache_clear()
