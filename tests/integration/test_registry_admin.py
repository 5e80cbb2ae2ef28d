"""`tandem registry status|promote|retire` against two `tandem serve` replicas on one real Redis.

Each transport (the HTTP admin routes, the gRPC admin methods, and the shared Redis written
directly) takes a canary through both ends of its life: published then promoted, every device
on both replicas is served the canary within the registry poll interval; published then
retired, every device is served the current version again. Device credentials are refused.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import pytest

from cloud_service.auth import make_token
from cloud_service.registry import device_bucket
from tandem_wire.v1 import recommend_pb2 as pb
from tandem_wire.v1 import recommend_pb2_grpc as pb_grpc
from tests.bundles import clone_bundle
from tests.integration.test_replicas import ADMIN, KEY, SECRET, Replica
from tests.redis_server import RedisServer

pytestmark = pytest.mark.integration
POLL_S = 0.2  # TANDEM_CLOUD_REGISTRY_POLL_S of the replicas
SHARE = 0.5
ASK = {"intent_tokens": [1, 2], "intent_weights": [0.5, 0.5], "k": 5}
# Devices on either side of a 50% canary: routing hashes the device id.
CANARY_SIDE = next(f"dev-{i}" for i in range(100) if device_bucket(f"dev-{i}") < SHARE)
CURRENT_SIDE = next(f"dev-{i}" for i in range(100) if device_bucket(f"dev-{i}") >= SHARE)


@pytest.fixture(scope="module")
def cluster(bundle: Path, bundle_v2: Path, tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[tuple[RedisServer, list[Replica], dict[str, Path]]]:
    bundle_v3 = clone_bundle(bundle, tmp_path_factory.mktemp("v3") / "bundle", "v3-test")
    logs = tmp_path_factory.mktemp("registry-replicas")
    root = tmp_path_factory.getbasetemp()  # holds every bundle the tests publish
    with RedisServer() as redis:
        replicas = [Replica(bundle, redis.url, logs / f"replica-{i}.log", root)
                    for i in range(2)]
        try:
            for r in replicas:
                r.wait_ready()
            current = httpx.get(f"{replicas[0].url}/v1/admin/registry", headers=ADMIN).json()
            yield redis, replicas, {current["current"]: bundle, "v2-test": bundle_v2,
                                    "v3-test": bundle_v3}
        finally:
            for r in replicas:
                r.stop()


def tandem(*args: str, admin_key: str = "admin-key") -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tandemrec.cli", "registry", *args],
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "TANDEM_CLOUD_ADMIN_API_KEY": admin_key})


def flat(out: subprocess.CompletedProcess[str]) -> str:
    """Everything the command printed, on one line (the console wraps long messages)."""
    return " ".join((out.stdout + out.stderr).split())


def where(transport: str, redis: RedisServer, replica: Replica) -> list[str]:
    """The CLI options that send a registry command over `transport`."""
    return {"http": ["--url", replica.url], "grpc": ["--grpc", f"127.0.0.1:{replica.grpc}"],
            "redis": ["--redis-url", redis.url]}[transport]


def served(replica: Replica, device_id: str) -> str:
    """The version this replica serves the device, the registry routing it."""
    resp = httpx.post(f"{replica.url}/v1/recommend", json={**ASK, "device_id": device_id},
                      headers={"authorization": f"Bearer {make_token(SECRET, device_id)}"},
                      timeout=30)
    assert resp.status_code == 200, resp.text
    return str(resp.json()["model_version"])


def wait_until(replicas: list[Replica], expected: dict[str, str], timeout: float) -> float:
    """Seconds until every replica serves each device its expected version; fails on timeout."""
    t0 = time.monotonic()
    while True:
        got = {(r.url, d): served(r, d) for r in replicas for d in expected}
        if all(v == expected[d] for (_, d), v in got.items()):
            return time.monotonic() - t0
        if time.monotonic() - t0 > timeout:
            pytest.fail(f"replicas did not switch within {timeout} s: {got}, "
                        f"expected {expected}")
        time.sleep(0.02)


def publish_canary(replicas: list[Replica], bundle: Path) -> None:
    """Publish through one replica, and wait until both have loaded the canary."""
    resp = httpx.post(f"{replicas[0].url}/v1/admin/publish", headers=ADMIN, timeout=120,
                      json={"bundle_dir": str(bundle), "canary_share": SHARE})
    assert resp.status_code == 200, resp.text
    canary = resp.json()["canary"]
    deadline = time.monotonic() + 60
    while any(httpx.get(f"{r.url}/readyz").json()["canary"] != canary for r in replicas):
        assert time.monotonic() < deadline, "a replica never loaded the canary"
        time.sleep(0.05)


@pytest.mark.parametrize("transport", ["http", "grpc", "redis"])
def test_promote_then_retire_switch_both_replicas(cluster, transport):
    redis, replicas, bundles = cluster
    opts = where(transport, redis, replicas[1])  # the other replica learns it from Redis
    status = tandem("status", *opts)
    assert status.returncode == 0, status.stdout + status.stderr
    before = json.loads(status.stdout)
    current = before["current"]
    new = next(v for v in bundles if v not in (current, "v3-test"))

    publish_canary(replicas, bundles[new])
    wait_until(replicas, {CANARY_SIDE: new, CURRENT_SIDE: current}, timeout=5)
    out = tandem("promote", *opts)
    assert out.returncode == 0, out.stdout + out.stderr
    state = json.loads(out.stdout)
    assert (state["current"], state["canary"]) == (new, "")
    assert current in state["versions"]  # the old current stays listed (a rollback target)
    took = wait_until(replicas, {CANARY_SIDE: new, CURRENT_SIDE: new}, timeout=5)
    assert took <= POLL_S + 1.0, took  # one poll, plus a loaded machine's request latency

    publish_canary(replicas, bundles["v3-test"])
    wait_until(replicas, {CANARY_SIDE: "v3-test", CURRENT_SIDE: new}, timeout=5)
    out = tandem("retire", "v3-test", *opts)
    assert out.returncode == 0, out.stdout + out.stderr
    state = json.loads(out.stdout)
    assert (state["current"], state["canary"]) == (new, "")
    assert "v3-test" not in state["versions"]
    took = wait_until(replicas, {CANARY_SIDE: new, CURRENT_SIDE: new}, timeout=5)
    assert took <= POLL_S + 1.0, took

    after = json.loads(tandem("status", *where(transport, redis, replicas[0])).stdout)
    assert (after["current"], after["canary"]) == (new, "")
    assert after["revision"] > before["revision"]


@pytest.mark.parametrize("transport", ["http", "grpc"])
def test_the_cli_reports_refusals_and_changes_nothing(cluster, transport):
    redis, replicas, _ = cluster
    opts = where(transport, redis, replicas[0])
    before = json.loads(tandem("status", *opts).stdout)
    wrong = tandem("promote", *opts, admin_key="not-the-admin-key")
    assert wrong.returncode == 2 and "wrong admin key" in flat(wrong), flat(wrong)
    no_canary = tandem("promote", *opts)
    assert no_canary.returncode == 2 and "no canary to promote" in flat(no_canary)
    current = tandem("retire", before["current"], *opts)
    assert current.returncode == 2 and "cannot retire the current version" in flat(current)
    unknown = tandem("retire", "no-such-version", *opts)
    assert unknown.returncode == 2 and "unknown model version" in flat(unknown)
    assert json.loads(tandem("status", *opts).stdout)["revision"] == before["revision"]


DEVICE = {"authorization": f"Bearer {make_token(SECRET, 'dev-1')}"}
REFUSED = [(DEVICE, 403, "PERMISSION_DENIED"), (KEY, 403, "PERMISSION_DENIED"),
           ({}, 401, "UNAUTHENTICATED"), ({"x-admin-key": "wrong"}, 401, "UNAUTHENTICATED")]


@pytest.mark.parametrize(("headers", "status", "code"), REFUSED,
                         ids=["device-token", "app-key", "none", "wrong-admin-key"])
def test_admin_registry_operations_need_the_admin_key_on_both_transports(
        cluster, headers, status, code):
    _, (a, _b), _ = cluster
    before = httpx.get(f"{a.url}/v1/admin/registry", headers=ADMIN).json()
    calls = [httpx.get(f"{a.url}/v1/admin/registry", headers=headers),
             httpx.post(f"{a.url}/v1/admin/promote", headers=headers),
             httpx.post(f"{a.url}/v1/admin/retire", headers=headers,
                        json={"version": before["current"]})]
    for resp in calls:
        assert resp.status_code == status, resp.text
        assert resp.json()["error"]["code"] == code
    with grpc.insecure_channel(f"127.0.0.1:{a.grpc}") as channel:
        stub = pb_grpc.TandemServiceStub(channel)
        for method, request in [(stub.GetRegistryStatus, pb.GetRegistryStatusRequest()),
                                (stub.Promote, pb.PromoteRequest()),
                                (stub.Retire, pb.RetireRequest(version=before["current"]))]:
            with pytest.raises(grpc.RpcError) as err:
                method(request, metadata=tuple(headers.items()), timeout=30)
            assert err.value.code().name == code, err.value.details()
    assert httpx.get(f"{a.url}/v1/admin/registry", headers=ADMIN).json() == before
