"""Hostile HTTP clients against one real replica: bodies, framing, slow clients, envelopes, docs."""

from __future__ import annotations

import contextlib
import re
import select
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr

from cloud_service.server import Running
from cloud_service.server import replica_in_thread as live_replica
from cloud_service.settings import CloudSettings
from tests.security.http_client import (
    connect,
    error_of,
    head,
    read_response,
    rss_bytes,
    send_chunked_until_answered,
)

pytestmark = [pytest.mark.security, pytest.mark.integration]
KEY = {"x-api-key": "device-key"}
ADMIN = {"x-admin-key": "admin-key"}
BODY = {"device_id": "dev-1", "intent_tokens": [1, 2], "intent_weights": [0.6, 0.4], "k": 5}
LIMIT = 1 << 20
READ_TIMEOUT_S = 2.0


@pytest.fixture(scope="module")
def replica(bundle: Path) -> Iterator[Running]:
    settings = CloudSettings(bundle=str(bundle), http_port=0, grpc_port=0, metrics_port=0,
                             n_retrieve=40, device_api_keys=[SecretStr("device-key")],
                             admin_api_key=SecretStr("admin-key"), rate_burst=100000,
                             http_read_timeout_s=READ_TIMEOUT_S, cache_ttl_s=0)
    with live_replica(settings) as r:
        yield r


@pytest.fixture()
def http(replica: Running) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=f"http://127.0.0.1:{replica.http_port}", timeout=30) as c:
        yield c


# ---- bodies ------------------------------------------------------------------------------

def test_content_length_with_chunked_is_refused(replica):
    with connect(replica.http_port) as s:
        s.sendall(head("/v1/recommend", {**KEY, "content-type": "application/json",
                                         "content-length": "5",
                                         "transfer-encoding": "chunked"}) + b"5\r\n{}{}{\r\n")
        status, _, body = read_response(s)
    assert status == 400 and error_of(body)["code"] == "INVALID_ARGUMENT"


def test_chunked_body_over_the_limit_is_refused_before_it_ends(replica):
    with connect(replica.http_port) as s:
        s.sendall(head("/v1/recommend", {**KEY, "content-type": "application/json",
                                         "transfer-encoding": "chunked"}))
        send_chunked_until_answered(s, 2 * LIMIT)
        # The terminating chunk is never sent: a server that read to the end never answers.
        status, headers, body = read_response(s, timeout=READ_TIMEOUT_S / 2)
    assert status == 413 and error_of(body)["code"] == "RESOURCE_EXHAUSTED"
    assert headers.get("connection") == "close"  # the rest is never read


def test_a_64_mb_chunked_upload_does_not_grow_the_server(replica):
    before = rss_bytes()  # the replica runs in this very process
    with connect(replica.http_port) as s:
        s.sendall(head("/v1/recommend", {**KEY, "content-type": "application/json",
                                         "transfer-encoding": "chunked"}))
        send_chunked_until_answered(s, 64 << 20)
        with contextlib.suppress(OSError):  # a reset is fine: the server stopped reading
            s.settimeout(5)
            while s.recv(65536):
                pass
    assert rss_bytes() - before < 20 << 20


@pytest.mark.parametrize(("path", "headers", "status", "code"), [
    ("/v1/recommend", {}, 401, "UNAUTHENTICATED"),
    ("/v1/recommend", {"x-api-key": "wrong"}, 401, "UNAUTHENTICATED"),
    ("/v1/recommend-full", {}, 401, "UNAUTHENTICATED"),
    ("/v1/admin/publish", {}, 401, "UNAUTHENTICATED"),
    ("/v1/admin/publish", KEY, 403, "PERMISSION_DENIED"),
])
def test_unauthenticated_calls_are_refused_before_validation(http, path, headers, status, code):
    for body in (b"{not json", b'{"k": "ten", "unknown": 1}'):
        r = http.post(path, content=body, headers={**headers, "content-type": "application/json"})
        assert r.status_code == status, r.text
        assert error_of(r.content)["code"] == code


# ---- slow clients ------------------------------------------------------------------------

def test_half_sent_requests_are_cut_off_and_others_still_served(replica, http):
    half = [connect(replica.http_port) for _ in range(200)]
    for i, s in enumerate(half):
        if i % 2:  # headers never finished
            s.sendall(b"POST /v1/recommend HTTP/1.1\r\nHost: x\r\nx-api-key: device-key\r\n")
        else:  # headers done, fewer body bytes than Content-Length
            s.sendall(head("/v1/recommend", {**KEY, "content-type": "application/json",
                                             "content-length": "100"}) + b'{"device_id"')
    started = time.monotonic()
    assert http.post("/v1/recommend", json=BODY, headers=KEY).status_code == 200
    open_ = set(half)
    while open_ and time.monotonic() - started < READ_TIMEOUT_S + 3:
        for s in select.select(list(open_), [], [], 0.2)[0]:
            with contextlib.suppress(OSError):  # b"" or a reset: the server let go
                s.recv(65536)
            open_.discard(s)
    elapsed = time.monotonic() - started
    for s in half:
        s.close()
    assert not open_, f"{len(open_)} of 200 half-sent requests still open after {elapsed:.1f} s"
    assert elapsed < READ_TIMEOUT_S + 3


def test_headers_past_16_kib_are_refused_in_the_envelope(replica):
    with connect(replica.http_port) as s:
        s.sendall(b"POST /v1/recommend HTTP/1.1\r\nHost: x\r\n" + b"x-pad: a\r\n" * 1500)
        time.sleep(0.3)  # the server holds those 15,038 bytes; what follows crosses the limit
        s.sendall(b"x-pad: a\r\n" * 200)
        status, headers, body = read_response(s)
    assert status == 400 and error_of(body)["code"] == "INVALID_ARGUMENT"
    assert headers.get("connection") == "close"


def test_a_silent_connection_is_closed(replica):
    with connect(replica.http_port) as s:
        s.settimeout(READ_TIMEOUT_S + 3)
        assert s.recv(1) == b""


# ---- strict inputs, one envelope ----------------------------------------------------------

@pytest.mark.parametrize("change", [{"k": True}, {"intent_tokens": ["1", "2"]}, {"k": 5.0}])
def test_booleans_and_strings_are_not_numbers(http, change):
    r = http.post("/v1/recommend", json={**BODY, **change}, headers=KEY)
    assert r.status_code == 400 and error_of(r.content)["code"] == "INVALID_ARGUMENT"


@pytest.mark.parametrize("body", [
    b'{"device_id": "\xff\xfe", "intent_tokens": [1], "intent_weights": [1.0]}',
    b"[" * 100_000 + b"]" * 100_000,
    b'{"device_id": "d", "intent_tokens": [1], "intent_weights": [1.0], "k": '
    + b"7" * 5000 + b"}",
])
def test_parse_errors_use_the_error_envelope(http, body):
    r = http.post("/v1/recommend", content=body,
                  headers={**KEY, "content-type": "application/json"})
    assert r.status_code == 400 and error_of(r.content)["code"] == "INVALID_ARGUMENT"


def test_router_errors_use_the_error_envelope(http):
    r = http.get("/v1/no-such-route", headers=KEY)
    assert r.status_code == 404 and error_of(r.content)["code"] == "NOT_FOUND"
    r = http.get("/v1/recommend", headers=KEY)
    assert r.status_code == 405 and error_of(r.content)["code"] == "UNIMPLEMENTED"
    assert "POST" in r.headers["allow"]


def test_an_encoded_slash_reaches_the_service(http):
    r = http.get("/v1/artifacts/a%2Fb", params={"device_id": "dev-1"}, headers=KEY)
    assert r.status_code == 404
    assert "'a/b' is not in bundle" in error_of(r.content)["message"]  # the service's answer


# ---- endpoints ---------------------------------------------------------------------------

def test_metrics_live_on_their_own_port_only(replica, http):
    assert replica.metrics_port
    r = http.get("/metrics", headers=ADMIN)
    assert r.status_code == 404 and error_of(r.content)["code"] == "NOT_FOUND"
    text = httpx.get(f"http://127.0.0.1:{replica.metrics_port}/metrics").text
    assert "tandem_request_seconds_bucket" in text


def test_docs_and_their_assets_come_from_the_server(http):
    page = http.get("/docs")
    assert page.status_code == 200
    assets = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert any(a.endswith(".js") for a in assets) and any(a.endswith(".css") for a in assets)
    for url in assets:
        assert url.startswith("/"), f"{url} is not served by the replica itself"
        r = http.get(url)
        assert r.status_code == 200 and len(r.content) > 100, url
    assert http.get("/openapi.json").json()["paths"]

