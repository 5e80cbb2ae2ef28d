"""Two `tandem serve` processes on one real redis-server: shared sessions, hot publish, outage.

This is the docker-compose topology (Redis + two replicas) as local processes.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import pytest

from cloud_service.auth import make_token
from tandem_wire.v1 import recommend_pb2 as pb
from tandem_wire.v1 import recommend_pb2_grpc as pb_grpc
from tests.redis_server import RedisServer

pytestmark = pytest.mark.integration
KEY = {"x-api-key": "device-key"}
SECRET = "token-secret-of-at-least-32-bytes"
BODY = {"device_id": "dev-r", "intent_tokens": [1, 2], "intent_weights": [0.5, 0.5], "k": 10}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


ADMIN = {"x-admin-key": "admin-key"}  # /metrics is behind the admin key


class Replica:
    """One `tandem serve` process with its own ports."""

    def __init__(self, bundle: Path, redis_url: str, log: Path, bundle_root: Path) -> None:
        self.http, self.grpc = free_port(), free_port()
        env = {**os.environ, "TANDEM_CLOUD_DEVICE_API_KEYS": "device-key",
               "TANDEM_CLOUD_ADMIN_API_KEY": "admin-key", "TANDEM_CLOUD_REGISTRY_POLL_S": "0.2",
               "TANDEM_CLOUD_CACHE_TTL_S": "0", "TANDEM_CLOUD_N_RETRIEVE": "40",
               "TANDEM_CLOUD_RATE_BURST": "100000", "TANDEM_CLOUD_KEY_RATE_BURST": "100000",
               "TANDEM_CLOUD_DEVICE_TOKEN_SECRET": SECRET,
               "TANDEM_CLOUD_BUNDLE_ROOT": str(bundle_root)}
        self.log = log
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tandemrec.cli", "serve", "--bundle", str(bundle),
             "--http-port", str(self.http), "--grpc-port", str(self.grpc),
             "--redis-url", redis_url], env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)
        self.url = f"http://127.0.0.1:{self.http}"

    def wait_ready(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"replica exited: {self.log.read_text()[-2000:]}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"replica not ready: {self.log.read_text()[-2000:]}")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()


@pytest.fixture(scope="module")
def cluster(bundle: Path, tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[tuple[RedisServer, list[Replica]]]:
    logs = tmp_path_factory.mktemp("replicas")
    with RedisServer() as redis:
        root = tmp_path_factory.getbasetemp()  # holds bundle_v2, which a test publishes
        replicas = [Replica(bundle, redis.url, logs / f"replica-{i}.log", root)
                    for i in range(2)]
        try:
            for r in replicas:
                r.wait_ready()
            yield redis, replicas
        finally:
            for r in replicas:
                r.stop()


def device(device_id: str) -> dict[str, str]:
    """A device token's headers: only a device token has a stored session history."""
    return {"authorization": f"Bearer {make_token(SECRET, device_id)}"}


def test_a_session_written_through_one_replica_is_used_by_the_other(cluster):
    _, (a, b) = cluster
    first = httpx.post(f"{a.url}/v1/recommend", headers=device("dev-r"),
                       json={**BODY, "coarse_history": [3, 1, 3]}, timeout=30)
    assert first.status_code == 200, first.text
    second = httpx.post(f"{b.url}/v1/recommend", headers=device("dev-r"), json=BODY, timeout=30)
    explicit = httpx.post(f"{b.url}/v1/recommend", headers=KEY,
                          json={**BODY, "device_id": "other", "coarse_history": [3, 1, 3]},
                          timeout=30)
    assert second.json()["item_ids"] == explicit.json()["item_ids"] == first.json()["item_ids"]


def test_publish_switches_both_replicas_within_5s_without_a_failed_request(cluster, bundle_v2):
    _, replicas = cluster
    stubs = [pb_grpc.TandemServiceStub(grpc.insecure_channel(f"127.0.0.1:{r.grpc}"))
             for r in replicas]
    seen: list[tuple[float, int, str]] = []
    failures: list[str] = []
    stop = threading.Event()

    def client() -> None:
        i = 0
        while not stop.is_set():
            try:
                rep = stubs[i % 2].Recommend(pb.RecommendRequest(**BODY),
                                             metadata=tuple(KEY.items()), timeout=10)
                seen.append((time.monotonic(), i % 2, rep.model_version))
            except grpc.RpcError as exc:
                failures.append(f"{exc.code()}: {exc.details()}")
            i += 1

    thread = threading.Thread(target=client)
    thread.start()
    time.sleep(1.0)
    t0 = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "tandemrec.cli", "publish", str(bundle_v2),
                          "--url", replicas[0].url], capture_output=True, text=True,
                         env={**os.environ, "TANDEM_CLOUD_ADMIN_API_KEY": "admin-key"})
    assert out.returncode == 0, out.stdout + out.stderr
    deadline = t0 + 15
    while time.monotonic() < deadline:
        if {rep for t, rep, v in seen if v == "v2-test"} == {0, 1}:
            break
        time.sleep(0.05)
    time.sleep(0.5)
    stop.set()
    thread.join()
    assert not failures
    switched = [min(t for t, rep, v in seen if rep == r and v == "v2-test") for r in (0, 1)]
    assert max(switched) - t0 <= 5.0
    for r in (0, 1):  # once switched, a replica never answers with the old version again
        after = [v for t, rep, v in seen if rep == r and t > switched[r]]
        assert set(after) <= {"v2-test"}


def test_killing_redis_mid_run_keeps_answering_and_recovers(cluster):
    redis, (a, b) = cluster
    redis.stop()
    try:
        for r in (a, b):
            for _ in range(3):
                resp = httpx.post(f"{r.url}/v1/recommend", headers=KEY,
                                  json={**BODY, "coarse_history": [1]}, timeout=30)
                assert resp.status_code == 200, resp.text
            metrics = httpx.get(f"{r.url}/metrics", headers=ADMIN).text
            assert "tandem_store_errors_total" in metrics and "tandem_store_up 0.0" in metrics
    finally:
        redis.start()
    time.sleep(0.5)
    httpx.post(f"{a.url}/v1/recommend", headers=device("after"),
               json={**BODY, "device_id": "after", "coarse_history": [2, 2]}, timeout=30)
    via_b = httpx.post(f"{b.url}/v1/recommend", headers=device("after"),
                       json={**BODY, "device_id": "after"}, timeout=30)
    direct = httpx.post(f"{b.url}/v1/recommend", headers=KEY,
                        json={**BODY, "device_id": "x2", "coarse_history": [2, 2]}, timeout=30)
    assert via_b.json()["item_ids"] == direct.json()["item_ids"]  # history shared again
    assert "tandem_store_up 1.0" in httpx.get(f"{b.url}/metrics", headers=ADMIN).text
