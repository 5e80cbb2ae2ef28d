"""SIGTERM under load on a real `tandem serve`: readiness first, no in-flight request lost."""

from __future__ import annotations

import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
import pytest

from tandem_wire.v1 import recommend_pb2 as pb
from tandem_wire.v1 import recommend_pb2_grpc as pb_grpc
from tandemrec.sim.run import start_cloud_process

pytestmark = [pytest.mark.security, pytest.mark.integration]
BODY = {"intent_tokens": [1, 2], "intent_weights": [0.5, 0.5], "k": 5}
DRAIN_DELAY_S = 1.5


@dataclass
class Outcome:
    started: float
    ok: bool
    refusal: str = ""  # "" for a success; else the status, code or exception that came back
    retry_after: bool = False
    polite: bool = False  # refused by the draining server itself, not by a closed socket


class Load:
    """Closed-loop clients over both transports, recording when each request started."""

    def __init__(self, http_port: int, grpc_port: int) -> None:
        self.http_port, self.grpc_port = http_port, grpc_port
        self.outcomes: list[Outcome] = []
        self.stop = threading.Event()

    def http_client(self, i: int) -> None:
        with httpx.Client(base_url=f"http://127.0.0.1:{self.http_port}", timeout=20) as c:
            while not self.stop.is_set():
                t = time.monotonic()
                try:
                    r = c.post("/v1/recommend", json={**BODY, "device_id": f"h{i}"})
                except httpx.TransportError as exc:  # the server has gone: a new request
                    self.outcomes.append(Outcome(t, False, f"http {type(exc).__name__}"))
                    return
                self.outcomes.append(Outcome(t, r.status_code == 200, str(r.status_code),
                                             "retry-after" in r.headers, r.status_code == 503))

    def grpc_client(self, i: int) -> None:
        with grpc.insecure_channel(f"127.0.0.1:{self.grpc_port}") as channel:
            stub = pb_grpc.TandemServiceStub(channel)
            while not self.stop.is_set():
                t = time.monotonic()
                req = pb.RecommendRequest(device_id=f"g{i}", **BODY)
                try:
                    stub.Recommend(req, timeout=20)
                    self.outcomes.append(Outcome(t, True))
                except grpc.RpcError as exc:
                    trailers = dict(exc.trailing_metadata() or ())  # type: ignore[attr-defined]
                    polite = "shutting down" in (exc.details() or "")  # type: ignore
                    self.outcomes.append(Outcome(t, False, exc.code().name,  # type: ignore
                                                 "retry-after" in trailers, polite))
                    if exc.code() is not grpc.StatusCode.UNAVAILABLE:  # type: ignore
                        return


def _watch_readiness(port: int, stop: threading.Event, seen: list[float]) -> None:
    while not stop.is_set() and not seen:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 503:
                seen.append(time.monotonic())
        except httpx.HTTPError:
            return
        time.sleep(0.02)


def test_sigterm_under_load_loses_no_request_and_refuses_new_ones_politely(bundle: Path):
    # Requests wait 300 ms in the batcher (a fixed window): some are always in flight, so
    # closing the doors refuses new ones for a while before the last in-flight one is answered.
    env = {"TANDEM_CLOUD_BATCH_MAX_WAIT_MS": "300", "TANDEM_CLOUD_BATCH_ADAPTIVE": "false",
           "TANDEM_CLOUD_N_RETRIEVE": "40",
           "TANDEM_CLOUD_CACHE_TTL_S": "0", "TANDEM_CLOUD_RATE_BURST": "100000000",
           "TANDEM_CLOUD_RATE_PER_S": "100000000", "TANDEM_CLOUD_SHUTDOWN_GRACE_S": "10",
           "TANDEM_CLOUD_DRAIN_DELAY_S": str(DRAIN_DELAY_S)}
    proc, http_port, grpc_port = start_cloud_process(bundle, env, auth=False)
    load = Load(http_port, grpc_port)
    threads = [threading.Thread(target=load.http_client, args=(i,)) for i in range(8)]
    threads += [threading.Thread(target=load.grpc_client, args=(i,)) for i in range(8)]
    not_ready: list[float] = []
    try:
        for t in threads:
            t.start()
        time.sleep(2.0)  # steady load
        sigterm = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        watcher = threading.Thread(target=_watch_readiness,
                                   args=(http_port, load.stop, not_ready))
        watcher.start()
        time.sleep(DRAIN_DELAY_S + 1.5)  # through the delay and into the refusals
        load.stop.set()
        for t in [*threads, watcher]:
            t.join(timeout=30)
        assert proc.wait(timeout=30) == 0
    finally:
        load.stop.set()
        if proc.poll() is None:
            proc.kill()
    before = [o for o in load.outcomes if o.started < sigterm]
    after = [o for o in load.outcomes if o.started >= sigterm]
    lost = [o.refusal for o in before if not o.ok]
    assert len(before) > 50 and not lost, f"{len(lost)} of {len(before)} in flight: {lost}"
    # Readiness turned false while requests were still being served.
    assert not_ready and not_ready[0] - sigterm < DRAIN_DELAY_S
    assert any(o.ok and o.started > not_ready[0] for o in after)
    # New requests, once the doors closed: 503 / UNAVAILABLE with Retry-After, or no server.
    polite = [o for o in after if o.polite]
    assert polite, [o.refusal for o in after if not o.ok]
    assert all(o.retry_after and o.refusal in ("503", "UNAVAILABLE") for o in polite), polite
    # Racing the listeners' close at the very end: a reset, or gRPC's own UNAVAILABLE/CANCELLED.
    others = [o.refusal for o in after if not o.ok and not o.polite]
    assert all(r.startswith("http ") or r in ("UNAVAILABLE", "CANCELLED") for r in others), others
