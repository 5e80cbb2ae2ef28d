"""gRPC admission control on a real replica allowed one device call in flight and one waiting.

A slot is held by holding the replica's batcher in-process (the replica runs in this process),
so which call is served, which waits and which is refused is decided by admission, never by
the machine's speed. tests/unit/test_admission.py covers the line itself (order, leaving it).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from pydantic import SecretStr

from cloud_service.server import Running, replica_in_thread
from cloud_service.settings import CloudSettings
from edge_client.client import EdgeClient, EdgeModel, MemoryDeviceStore
from edge_client.settings import EdgeSettings
from edge_client.transport import GrpcTransport
from tandem_wire.v1 import recommend_pb2 as pb
from tandem_wire.v1 import recommend_pb2_grpc as pb_grpc

pytestmark = pytest.mark.integration
DEVICE = (("x-api-key", "device-key"),)
ADMIN = (("x-admin-key", "admin-key"),)
REQUEST = pb.RecommendRequest(device_id="dev-1", intent_tokens=[1, 2], intent_weights=[0.6, 0.4],
                              k=5)
EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED


@pytest.fixture(scope="module")
def replica(bundle: Path) -> Iterator[Running]:
    settings = CloudSettings(bundle=str(bundle), http_port=0, grpc_port=0, n_retrieve=40,
                             device_api_keys=[SecretStr("device-key")],
                             admin_api_key=SecretStr("admin-key"), rate_burst=100000,
                             cache_ttl_s=0, grpc_max_inflight=1, grpc_max_queued=1)
    with replica_in_thread(settings) as r:
        yield r


@pytest.fixture(scope="module")
def stub(replica: Running) -> Iterator[pb_grpc.TandemServiceStub]:
    with grpc.insecure_channel(f"127.0.0.1:{replica.grpc_port}") as channel:
        yield pb_grpc.TandemServiceStub(channel)


class Hold:
    """The batcher's submit, held until `release`: a call inside it keeps its slot."""

    def __init__(self, submit: Any) -> None:
        self.submit = submit
        self.entered, self.release = threading.Event(), threading.Event()

    async def __call__(self, *args: Any) -> Any:
        self.entered.set()
        while not self.release.is_set():  # polled: a cancelled call leaves no thread behind
            await asyncio.sleep(0.005)
        return await self.submit(*args)


@pytest.fixture
def hold(replica: Running, monkeypatch: pytest.MonkeyPatch) -> Iterator[Hold]:
    h = Hold(replica.service.batcher.submit)
    monkeypatch.setattr(replica.service.batcher, "submit", h)
    yield h
    h.release.set()


def refused_count(replica: Running) -> float:
    return replica.service.metrics.registry.get_sample_value("tandem_grpc_refused_total") or 0.0


def code_of(call: Any) -> grpc.StatusCode:
    """The status of a finished future call, or of a call's exception."""
    try:
        call.result()
    except grpc.RpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


def fill(stub: pb_grpc.TandemServiceStub, hold: Hold) -> tuple[Any, Any]:
    """One call held in the slot and one waiting: the replica is full."""
    first = stub.Recommend.future(REQUEST, metadata=DEVICE, timeout=60)
    assert hold.entered.wait(60)
    return first, stub.Recommend.future(REQUEST, metadata=DEVICE, timeout=60)


def assert_refused(exc: grpc.RpcError) -> None:
    assert exc.code() == EXHAUSTED, exc.details()
    assert dict(exc.trailing_metadata())["retry-after"] == "1.000"
    assert "limit of 1 requests in flight and 1 waiting" in exc.details()


def test_past_the_slot_and_the_line_calls_are_refused_with_a_retry_hint(replica, stub, hold):
    before = refused_count(replica)
    first, second = fill(stub, hold)
    third = stub.Recommend.future(REQUEST, metadata=DEVICE, timeout=60)
    # The second and third race for the one place in line: the loser is refused at once.
    loser = next(_done_first(second, third))
    with pytest.raises(grpc.RpcError) as refused:
        loser.result()
    assert_refused(refused.value)
    assert refused_count(replica) == before + 1
    hold.release.set()
    assert [code_of(c) for c in (first, second, third)].count(grpc.StatusCode.OK) == 2


def _done_first(*calls: Any, limit_s: float = 60) -> Iterator[Any]:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        yield from (c for c in calls if c.done())
        time.sleep(0.01)


def test_health_reflection_and_admin_calls_pass_a_full_replica(replica, stub, hold):
    first, second = fill(stub, hold)
    with grpc.insecure_channel(f"127.0.0.1:{replica.grpc_port}") as channel:
        check = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
        assert check.status == health_pb2.HealthCheckResponse.SERVING
        replies = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
        assert any(r.list_services_response.service for r in replies)
    assert stub.GetRegistryStatus(pb.GetRegistryStatusRequest(), metadata=ADMIN).current
    for device_call in (  # every device call takes a slot: the manifest and downloads too
            lambda: stub.Recommend(REQUEST, metadata=DEVICE, timeout=60),
            lambda: stub.GetManifest(pb.GetManifestRequest(device_id="dev-1"),
                                     metadata=DEVICE, timeout=60),
            lambda: list(stub.DownloadArtifact(pb.DownloadArtifactRequest(
                name="model.onnx", device_id="dev-1"), metadata=DEVICE, timeout=60))):
        with pytest.raises(grpc.RpcError) as refused:
            device_call()
        assert_refused(refused.value)
    hold.release.set()
    assert code_of(first) == code_of(second) == grpc.StatusCode.OK


def test_slots_come_back_after_errors_and_cancellation(replica, stub, hold):
    unknown = pb.RecommendRequest(device_id="dev-1", intent_tokens=[1], intent_weights=[1.0],
                                  k=5, model_version="no-such-version")
    for _ in range(3):  # failing inside the slot; two leaked slots would fill slot and line
        with pytest.raises(grpc.RpcError) as failed:
            stub.Recommend(unknown, metadata=DEVICE, timeout=60)
        assert failed.value.code() == grpc.StatusCode.NOT_FOUND
    # Clients that give up, one in the slot and one in line (it gives up first): the server
    # cancels both calls.
    in_slot = stub.Recommend.future(REQUEST, metadata=DEVICE, timeout=2.0)
    assert hold.entered.wait(60)
    in_line = stub.Recommend.future(REQUEST, metadata=DEVICE, timeout=0.3)
    assert code_of(in_line) == code_of(in_slot) == grpc.StatusCode.DEADLINE_EXCEEDED
    hold.entered.clear()
    _settle(stub)
    first, second = fill(stub, hold)  # the whole capacity is back: one served, one waiting
    with pytest.raises(grpc.RpcError) as refused:
        stub.Recommend(REQUEST, metadata=DEVICE, timeout=60)
    assert_refused(refused.value)
    hold.release.set()
    assert code_of(first) == code_of(second) == grpc.StatusCode.OK


def _settle(stub: pb_grpc.TandemServiceStub, limit_s: float = 30) -> None:
    """Wait until the server has cancelled the calls its clients gave up on (no slot held)."""
    deadline = time.monotonic() + limit_s
    while True:
        call = stub.GetManifest.future(pb.GetManifestRequest(device_id="dev-1"),
                                       metadata=DEVICE, timeout=limit_s)
        if code_of(call) == grpc.StatusCode.OK or time.monotonic() > deadline:
            assert code_of(call) == grpc.StatusCode.OK
            return
        time.sleep(0.05)


def test_the_sdk_falls_back_on_a_refusal_and_waits_out_the_hint(replica, stub, hold, bundle):
    first, second = fill(stub, hold)
    before = refused_count(replica)
    transport = GrpcTransport(f"127.0.0.1:{replica.grpc_port}", api_key="device-key")
    device = EdgeClient(EdgeModel.load(bundle), MemoryDeviceStore([1, 2, 3]), "dev-1",
                        transport, EdgeSettings(deadline_ms=5000, retries=3))

    async def twice() -> list[Any]:
        try:
            return [await device.recommend(k=5), await device.recommend(k=5)]
        finally:
            await transport.close()

    refused, held_off = asyncio.run(twice())
    assert refused.served_by == "fallback" and len(refused.items) == 5
    assert "no call in the next 1.000s" in refused.reason  # not retried, deadline or not
    assert held_off.served_by == "fallback" and "breaker is open" in held_off.reason
    assert refused_count(replica) == before + 1  # the second never reached the replica
    hold.release.set()
    assert code_of(first) == code_of(second) == grpc.StatusCode.OK
