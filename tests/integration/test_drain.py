"""Graceful shutdown of a `tandem serve` process: requests in flight at SIGTERM still succeed."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

import grpc
import pytest

from tandem_wire.v1 import recommend_pb2 as pb
from tandem_wire.v1 import recommend_pb2_grpc as pb_grpc
from tandemrec.sim.run import start_cloud_process

pytestmark = pytest.mark.integration


def test_sigterm_drains_in_flight_requests_then_exits_cleanly(bundle: Path) -> None:
    # A long fixed batching wait holds every request in the server for ~1 s: SIGTERM lands
    # mid-flight (adaptive batching would send a lone request at once).
    env = {"TANDEM_CLOUD_BATCH_MAX_WAIT_MS": "1000", "TANDEM_CLOUD_BATCH_MAX_SIZE": "64",
           "TANDEM_CLOUD_BATCH_ADAPTIVE": "false",
           "TANDEM_CLOUD_N_RETRIEVE": "40", "TANDEM_CLOUD_CACHE_TTL_S": "0",
           "TANDEM_CLOUD_RATE_BURST": "100000", "TANDEM_CLOUD_SHUTDOWN_GRACE_S": "10"}
    proc, _, port = start_cloud_process(bundle, env, auth=False)
    results: list[object] = []
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb_grpc.TandemServiceStub(channel)
            grpc.channel_ready_future(channel).result(timeout=10)

            def call(i: int) -> None:
                req = pb.RecommendRequest(device_id=f"drain-{i}", intent_tokens=[1, 2],
                                          intent_weights=[0.5, 0.5], k=5)
                try:
                    results.append(stub.Recommend(req, timeout=20))
                except grpc.RpcError as exc:
                    results.append(exc)

            threads = [threading.Thread(target=call, args=(i,)) for i in range(8)]
            for t in threads:
                t.start()
            time.sleep(0.4)  # the requests are now waiting in the batcher
            proc.send_signal(signal.SIGTERM)
            for t in threads:
                t.join(timeout=30)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert len(results) == 8
    failed = [r for r in results if isinstance(r, grpc.RpcError)]
    assert not failed, [f.details() for f in failed]  # type: ignore[attr-defined]
    assert all(len(r.item_ids) == 5 for r in results)  # type: ignore[attr-defined]
