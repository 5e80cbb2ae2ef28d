"""Pure pieces of the cloud core: tokens, validation messages, micro-batching, settings."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time

import jwt
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


TOKEN_SECRET = "s3cret-of-at-least-32-bytes-for-hs256"  # RFC 7518: HS256 keys of 32+ bytes


def test_tokens_are_hs256_jwts_that_bind_a_device_and_expire():
    tok = make_token(TOKEN_SECRET, "device:7", ttl_s=60)
    assert jwt.get_unverified_header(tok)["alg"] == "HS256"
    claims = jwt.decode(tok, TOKEN_SECRET, algorithms=["HS256"])
    assert claims["sub"] == "device:7" and claims["exp"] - claims["iat"] == 60
    assert token_device(TOKEN_SECRET, tok) == "device:7"
    # What an app backend mints with its own JWT library is accepted as well.
    theirs = jwt.encode({"sub": "device:9", "exp": int(time.time()) + 60}, TOKEN_SECRET,
                        algorithm="HS256")
    assert token_device(TOKEN_SECRET, theirs) == "device:9"
    with pytest.raises(Unauthenticated, match="expired: ask the app backend for a new one"):
        token_device(TOKEN_SECRET, make_token(TOKEN_SECRET, "device:7", ttl_s=60, now=1000))
    with pytest.raises(Unauthenticated, match="signature does not match"):
        token_device("another-secret-of-at-least-32-bytes", tok)
    header, _, signature = tok.split(".")
    body = base64.urlsafe_b64encode(json.dumps(
        {"sub": "device:8", "exp": claims["exp"]}).encode()).decode().rstrip("=")
    with pytest.raises(Unauthenticated, match="signature does not match"):
        token_device(TOKEN_SECRET, f"{header}.{body}.{signature}")  # another device, old sig
    unsigned = jwt.encode({"sub": "device:7", "exp": claims["exp"]}, None, algorithm="none")
    with pytest.raises(Unauthenticated, match="malformed"):
        token_device(TOKEN_SECRET, unsigned)
    for claim in ("sub", "exp"):
        partial = {k: v for k, v in claims.items() if k != claim}
        with pytest.raises(Unauthenticated, match=f"lacks the '{claim}' claim"):
            token_device(TOKEN_SECRET, jwt.encode(partial, TOKEN_SECRET, algorithm="HS256"))
    with pytest.raises(Unauthenticated, match="malformed"):
        token_device(TOKEN_SECRET, "abc")


def test_the_old_token_format_is_refused_with_a_clear_message():
    # v1.<device id, base64url>.<expiry>.<hex HMAC-SHA256>, correctly signed and unexpired.
    dev = base64.urlsafe_b64encode(b"device:7").decode().rstrip("=")
    body = f"v1.{dev}.{int(time.time()) + 3600}"
    sig = hmac.new(TOKEN_SECRET.encode(), body.encode(), hashlib.sha256).hexdigest()
    with pytest.raises(Unauthenticated,
                       match="^old token format: ask the app backend for a new JWT$"):
        token_device(TOKEN_SECRET, f"{body}.{sig}")


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


def test_teacher_threads_default_to_the_cpus_the_process_may_use(monkeypatch):
    import os

    assert CloudSettings(torch_threads=3).teacher_threads() == 3
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 5}, raising=False)
    assert CloudSettings().torch_threads == 0
    assert CloudSettings().teacher_threads() == 2
    monkeypatch.delattr(os, "sched_getaffinity")  # other platforms: every CPU
    monkeypatch.setattr(os, "cpu_count", lambda: 6)
    assert CloudSettings().teacher_threads() == 6
