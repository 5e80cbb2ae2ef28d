"""HTTP admission control on a real replica allowed one request in flight and none waiting.

A slot is taken only once a request's body is all there: a client that holds back its body
keeps a connection open (until the read timeout), never a slot. A slot is held here by
holding the replica's core in-process; tests/unit/test_admission.py covers the line.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr

from cloud_service.server import Running, replica_in_thread
from cloud_service.settings import CloudSettings
from tests.security.http_client import connect, error_of, head, read_response

pytestmark = pytest.mark.integration
KEY = {"x-api-key": "device-key"}
BODY = json.dumps({"device_id": "dev-1", "intent_tokens": [1, 2], "intent_weights": [0.6, 0.4],
                   "k": 5}).encode()
REQUEST = head("/v1/recommend", {**KEY, "content-type": "application/json",
                                 "content-length": str(len(BODY))}) + BODY


@pytest.fixture(scope="module")
def replica(bundle: Path) -> Iterator[Running]:
    settings = CloudSettings(bundle=str(bundle), http_port=0, grpc_port=0, metrics_port=0,
                             n_retrieve=40, device_api_keys=[SecretStr("device-key")],
                             rate_burst=100000, cache_ttl_s=0, http_max_inflight=1,
                             http_max_queued=0, http_read_timeout_s=300)  # the held body
    with replica_in_thread(settings) as r:
        yield r


def assert_refused(status: int, headers: dict[str, str], body: bytes) -> None:
    assert status == 503 and headers.get("retry-after") == "1", (status, headers, body)
    assert error_of(body)["code"] == "RESOURCE_EXHAUSTED"  # overload, not the drain


def test_a_client_holding_back_its_body_takes_no_slot(replica):
    http = f"http://127.0.0.1:{replica.http_port}"
    with connect(replica.http_port) as holder, connect(replica.http_port) as other:
        holder.sendall(REQUEST[:-len(BODY)])  # headers sent, body held back
        for _ in range(3):  # the one slot stays free for complete requests
            other.sendall(REQUEST)
            status, _, body = read_response(other)
            assert status == 200, body
        assert httpx.get(f"{http}/healthz").status_code == 200
        holder.sendall(BODY)  # the held request completes and is served
        assert read_response(holder)[0] == 200


def test_concurrent_calls_get_an_answer_or_a_polite_refusal(replica):
    answers: list[tuple[int, str | None, bytes]] = []

    def client() -> None:
        with httpx.Client(base_url=f"http://127.0.0.1:{replica.http_port}", timeout=30) as c:
            for _ in range(10):
                r = c.post("/v1/recommend", content=BODY,
                           headers={**KEY, "content-type": "application/json"})
                answers.append((r.status_code, r.headers.get("retry-after"), r.content))

    threads = [threading.Thread(target=client) for _ in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert len(answers) == 120  # no transport errors: refused connections stayed usable
    assert any(status == 200 for status, _, _ in answers)
    for status, retry_after, body in answers:
        if status != 200:
            assert_refused(status, {"retry-after": retry_after or ""}, body)


def test_a_full_replica_refuses_at_once_and_still_answers_health_and_metrics(replica,
                                                                             monkeypatch):
    # The replica runs in this process: its core is held in-process, so the one slot stays
    # taken for as long as the test wants, whatever the machine's speed.
    entered, release = threading.Event(), threading.Event()
    recommend = replica.service.recommend

    async def held(*args: object, **kwargs: object) -> object:
        entered.set()
        await asyncio.to_thread(release.wait, 60)
        return await recommend(*args, **kwargs)

    monkeypatch.setattr(replica.service, "recommend", held)
    http = f"http://127.0.0.1:{replica.http_port}"
    with connect(replica.http_port) as holder, connect(replica.http_port) as other:
        holder.sendall(REQUEST)
        assert entered.wait(60)
        monkeypatch.undo()  # the requests after this one are not held
        other.sendall(REQUEST)
        status, headers, body = read_response(other)
        assert_refused(status, headers, body)
        assert "connection" not in headers  # the body was read: the connection stays usable
        assert httpx.get(f"{http}/healthz").status_code == 200
        assert httpx.get(f"{http}/readyz").status_code == 200
        metrics = httpx.get(f"http://127.0.0.1:{replica.metrics_port}/metrics").text
        refused = [ln for ln in metrics.splitlines() if ln.startswith("tandem_http_refused_total")]
        assert refused and float(refused[0].split()[-1]) >= 1
        release.set()
        assert read_response(holder)[0] == 200
        other.sendall(REQUEST)  # the same connection that was refused on
        assert read_response(other)[0] == 200
