"""HTTP admission control: RequestGuard as an ASGI app around a dummy app that holds requests.

The dummy app answers /v1/slow only once the test releases it, so which requests are in the
app, which wait in line and which are refused is decided by the guard alone, never by timing.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

import pytest

from cloud_service.admission import Admission
from cloud_service.http_guard import RequestGuard
from cloud_service.metrics import Metrics
from cloud_service.settings import CloudSettings

pytestmark = pytest.mark.unit
LIMIT_S = 120.0


class SlowApp:
    """Answers 200 naming the path; /v1/ paths other than admin ones wait for `release`."""

    def __init__(self) -> None:
        self.entered: list[str] = []
        self.release = asyncio.Event()

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        self.entered.append(scope["path"])
        if scope["path"].startswith("/v1/slow"):
            await self.release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": scope["path"].encode()})


def guard(app: SlowApp, inflight: int, queued: int) -> RequestGuard:
    service = SimpleNamespace(  # what the guard takes from the service on these paths
        settings=CloudSettings(http_max_inflight=inflight, http_max_queued=queued),
        metrics=Metrics(), in_flight=contextlib.nullcontext,
        authenticate=lambda credentials, admin=False: None)
    return RequestGuard(app, service, max_body=1 << 20)  # type: ignore[arg-type]


async def call(g: RequestGuard, path: str, chunked: bool = False) -> dict:
    """One request through the guard: status, headers and body of its answer."""
    sent: list[dict] = []
    framing = (b"transfer-encoding", b"chunked") if chunked else (b"content-length", b"2")
    scope = {"type": "http", "method": "POST", "path": path, "headers": [framing]}

    async def receive() -> dict:
        return {"type": "http.request", "body": b"{}", "more_body": False}

    async def send(message: dict) -> None:
        sent.append(message)

    await g(scope, receive, send)
    return {"status": sent[0]["status"], "body": sent[1]["body"],
            "headers": {k.decode(): v.decode() for k, v in sent[0]["headers"]}}


async def settle() -> None:
    for _ in range(20):  # let every started request reach the app, the line or its refusal
        await asyncio.sleep(0)


async def start(g: RequestGuard, ids: range) -> list[asyncio.Task]:
    """Requests to /v1/slow/<id>, each now in the app, in line or refused."""
    tasks = [asyncio.create_task(call(g, f"/v1/slow/{i}")) for i in ids]
    await settle()
    return tasks


def run(body: Any) -> Any:
    return asyncio.run(asyncio.wait_for(body(), LIMIT_S))


def test_past_the_limit_and_the_line_requests_are_refused_at_once_with_retry_after():
    async def main() -> None:
        app = SlowApp()
        g = guard(app, inflight=2, queued=1)
        held = await start(g, range(3))
        assert app.entered == ["/v1/slow/0", "/v1/slow/1"]  # the third waits in line
        refused = await call(g, "/v1/slow/3")  # answered while the others are still held
        assert refused["status"] == 503
        assert refused["headers"]["retry-after"] == "1"
        assert "connection" not in refused["headers"]  # a known-length body: kept alive
        error = json.loads(refused["body"])["error"]
        assert error["code"] == "RESOURCE_EXHAUSTED" and "limit of 2" in error["message"]
        app.release.set()
        assert [r["status"] for r in await asyncio.gather(*held)] == [200, 200, 200]
        assert app.entered[2] == "/v1/slow/2"  # its turn came when a slot freed
        registry = g.service.metrics.registry
        assert registry.get_sample_value("tandem_http_refused_total") == 1
        assert (await call(g, "/v1/slow/4"))["status"] == 200  # every slot came back

    run(main)


@contextlib.asynccontextmanager
async def full_replica() -> AsyncIterator[RequestGuard]:
    """A guard allowing one request in flight and none waiting, with that one held."""
    app = SlowApp()
    g = guard(app, inflight=1, queued=0)
    (held,) = await start(g, range(1))
    yield g
    app.release.set()
    assert (await held)["status"] == 200


def test_health_metrics_and_admin_calls_pass_a_full_replica():
    async def main() -> None:
        async with full_replica() as g:
            for path in ("/healthz", "/readyz", "/metrics", "/v1/admin/registry"):
                assert (await call(g, path))["status"] == 200, path
            assert (await call(g, "/v1/recommend"))["status"] == 503

    run(main)


def test_a_chunked_request_is_refused_once_read_and_its_connection_kept():
    async def main() -> None:
        async with full_replica() as g:
            refused = await call(g, "/v1/recommend", chunked=True)
        assert refused["status"] == 503 and "connection" not in refused["headers"]

    run(main)


def test_the_line_is_served_in_order_and_one_that_leaves_gives_up_its_place():
    async def main() -> None:
        app = SlowApp()
        g = guard(app, inflight=1, queued=3)
        first, *line = await start(g, range(4))  # 0 is in the app, the rest in line
        line[0].cancel()  # its client went away while waiting
        app.release.set()
        await asyncio.gather(first, *line[1:])
        assert app.entered == ["/v1/slow/0", "/v1/slow/2", "/v1/slow/3"]
        assert g.admission.active == 0

    run(main)


def test_zero_means_no_limit():
    async def main() -> None:
        app = SlowApp()
        g = guard(app, inflight=0, queued=0)
        held = await start(g, range(100))
        assert len(app.entered) == 100
        app.release.set()
        assert {r["status"] for r in await asyncio.gather(*held)} == {200}

    run(main)


def test_a_waiter_cancelled_and_dropped_from_the_line_before_it_wakes_leaves_quietly():
    async def main() -> None:
        admission = Admission(limit=1, queued=1)
        assert await admission.enter()
        waiter = asyncio.create_task(admission.enter())
        await settle()  # in line
        waiter.cancel()  # its turn is cancelled at once; the task wakes later
        admission.leave()  # drops the cancelled turn before the waiter runs its own cleanup
        with pytest.raises(asyncio.CancelledError):
            await waiter
        assert admission.active == 0 and await admission.enter()

    run(main)
