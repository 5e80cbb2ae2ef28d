"""The edge SDK never raises on the network: it falls back to the device within the deadline.

Clients are built the way an app builds them: outside any event loop, then driven with
`asyncio.run`, as the README's device snippet does (that snippet runs here as written).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from pydantic import SecretStr

from cloud_service.server import Running, replica_in_thread
from cloud_service.settings import CloudSettings
from edge_client.client import EdgeClient, EdgeModel, EdgeResult, MemoryDeviceStore
from edge_client.settings import EdgeSettings
from edge_client.transport import CloudAnswer, GrpcTransport, HttpTransport, Transport
from tandem_wire.v1 import recommend_pb2 as pb
from tandemrec.paths import REPO_ROOT
from tests.security import misbehaving as mb

pytestmark = pytest.mark.security
MARK = "<!-- device-snippet:"
README_TARGET, README_KEY = '"cloud:50051"', "dev-key-1"
DEADLINE_MS = 300.0
SLACK_S = 0.25  # event-loop and fallback compute on a loaded 2-core machine


def readme_snippet() -> str:
    """The python block after the device-snippet marker in README.md, verbatim."""
    text = (REPO_ROOT / "README.md").read_text()
    assert text.count(MARK) == 1, "README.md must mark the device snippet exactly once"
    after = text[text.index(MARK):].split("\n", 1)[1]
    assert after.startswith("```python\n"), "the marker must sit right above the code block"
    return after[len("```python\n"):].split("\n```", 1)[0]


def run_readme(workdir: Path, bundle: Path, target: str | None) -> dict[str, Any]:
    """Run the snippet in `workdir` (bundle/ is the test bundle); `target` replaces its address."""
    code = readme_snippet()
    assert code.count(README_TARGET) == 1 and README_KEY in code, "the snippet changed shape"
    if target is not None:
        code = code.replace(README_TARGET, f'"{target}"')
    (workdir / "bundle").symlink_to(bundle, target_is_directory=True)
    namespace: dict[str, Any] = {"__name__": "readme_snippet"}
    with contextlib.chdir(workdir):
        exec(compile(code, "README.md:device-snippet", "exec"), namespace)  # noqa: S102
    return namespace


def check_answer(result: EdgeResult, k: int = 10) -> None:
    """A usable answer: k distinct items with finite scores."""
    assert len(result.items) == k == len(set(result.items)), result
    assert all(math.isfinite(s) for s in result.scores), result


@pytest.fixture(scope="module")
def cloud(bundle: Path) -> Iterator[Running]:
    """A real replica that accepts the README's API key."""
    s = CloudSettings(bundle=str(bundle), http_port=0, grpc_port=0, cache_ttl_s=0,
                      device_api_keys=[SecretStr(README_KEY)], rate_burst=10**6,
                      rate_per_s=10**6)
    with replica_in_thread(s) as r:
        yield r


@pytest.fixture(scope="module")
def model(bundle: Path) -> EdgeModel:
    return EdgeModel.load(bundle)


def test_readme_snippet_runs_against_a_real_cloud(tmp_path, bundle, cloud):
    ns = run_readme(tmp_path, bundle, f"127.0.0.1:{cloud.grpc_port}")
    check_answer(ns["result"])  # 150 ms on a loaded machine may be cloud or fallback
    client: EdgeClient = ns["client"]
    client.s = EdgeSettings(deadline_ms=10_000)  # now the cloud must answer
    for _ in range(2):  # each asyncio.run is a new loop: the channel follows it
        result = asyncio.run(client.recommend(k=10))
        assert result.served_by == "cloud", result.reason
        check_answer(result)


def test_readme_snippet_without_a_server_falls_back(tmp_path, bundle):
    result = run_readme(tmp_path, bundle, f"127.0.0.1:{mb.closed_port()}")["result"]
    assert result.served_by == "fallback", result
    check_answer(result)
    assert result.latency_ms <= 150 + SLACK_S * 1000, result  # the snippet's deadline: 150 ms


def test_readme_snippet_as_is_never_raises(tmp_path, bundle):
    # "cloud:50051" as written: no such host here (or, if one resolves, any answer will do).
    check_answer(run_readme(tmp_path, bundle, None)["result"])


def recommend_timed(client: EdgeClient) -> tuple[EdgeResult, float]:
    """One `asyncio.run(client.recommend(10))`, timed inside the loop."""
    async def timed() -> tuple[EdgeResult, float]:
        t0 = time.perf_counter()
        result = await client.recommend(10)
        return result, time.perf_counter() - t0
    return asyncio.run(timed())


def assert_falls_back(model: EdgeModel, transports: dict[str, Transport]) -> None:
    """Each transport (built outside any loop) ends in the fallback, within the deadline."""
    for name, transport in transports.items():
        client = EdgeClient(model, MemoryDeviceStore([1, 2, 3]), "dev-sec", transport,
                            EdgeSettings(deadline_ms=DEADLINE_MS))
        for _ in range(2):  # a second asyncio.run: a new loop, the same transport
            result, elapsed = recommend_timed(client)
            assert result.served_by == "fallback", (name, result)
            check_answer(result)
            assert elapsed <= DEADLINE_MS / 1000 + SLACK_S, (name, elapsed, result.reason)


def both(port: int) -> dict[str, Transport]:
    return {"grpc": GrpcTransport(f"127.0.0.1:{port}", api_key="k"),
            "http": HttpTransport(f"http://127.0.0.1:{port}", api_key="k")}


def test_a_closed_port_falls_back(model):
    assert_falls_back(model, both(mb.closed_port()))


def test_a_server_that_accepts_and_never_answers_falls_back_at_the_deadline(model):
    with mb.tcp_server(mb.never_answer) as port:
        assert_falls_back(model, both(port))


def test_a_server_that_answers_garbage_bytes_falls_back(model):
    with mb.tcp_server(mb.answer_garbage) as port:
        assert_falls_back(model, both(port))


HTTP_BODIES = {
    "not json": b"<html>surprise</html>",
    "a json list": b"[]",
    "missing fields": b'{"model_version": "v"}',
    "wrong types": b'{"item_ids": "1,2", "scores": [0.1], "model_version": "v"}',
    "lengths differ": b'{"item_ids": [1, 2, 3], "scores": [-1.0], "model_version": "v"}',
    "outside the catalog": b'{"item_ids": [999999], "scores": [-1.0], "model_version": "v"}',
    "nan scores": b'{"item_ids": [1, 2], "scores": [NaN, -1.0], "model_version": "v"}',
}


@pytest.mark.parametrize("body", HTTP_BODIES.values(), ids=list(HTTP_BODIES))
def test_an_http_200_with_a_wrong_body_falls_back(model, body):
    with mb.http_200(body) as url:
        assert_falls_back(model, {"http": HttpTransport(url, api_key="k")})


GRPC_REPLIES = {
    "not a RecommendResponse": b"\xff\xff\xff\xff",
    "outside the catalog": pb.RecommendResponse(item_ids=[999999], scores=[-1.0],
                                             model_version="v").SerializeToString(),
    "lengths differ": pb.RecommendResponse(item_ids=[1, 2, 3], scores=[-1.0],
                                        model_version="v").SerializeToString(),
    "nan scores": pb.RecommendResponse(item_ids=[1, 2], scores=[math.nan, -1.0],
                                    model_version="v").SerializeToString(),
}


@pytest.mark.parametrize("reply", GRPC_REPLIES.values(), ids=list(GRPC_REPLIES))
def test_a_grpc_ok_with_a_wrong_reply_falls_back(model, reply):
    with mb.grpc_ok(reply) as target:
        assert_falls_back(model, {"grpc": GrpcTransport(target, api_key="k")})


class Raising:
    """A transport whose every call fails with one exception."""

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc

    async def recommend(self, req: Any, device_id: str, timeout_s: float) -> CloudAnswer:
        raise self.exc


RAISED = [OSError("network is unreachable"), RuntimeError("attached to a different loop"),
          TimeoutError(), ValueError("bad"), KeyError("item_ids"),
          ConnectionResetError(), grpc.RpcError()]


@pytest.mark.parametrize("exc", RAISED, ids=lambda e: type(e).__name__)
def test_any_exception_from_a_transport_falls_back(model, exc):
    assert_falls_back(model, {"raising": Raising(exc)})  # type: ignore[dict-item]


def test_a_bad_k_is_the_callers_error(model):
    client = EdgeClient(model, MemoryDeviceStore([1, 2, 3]), "dev-sec")
    for k, error in ((0, ValueError), (-3, ValueError), ("10", TypeError), (True, TypeError),
                     (2.5, TypeError)):
        with pytest.raises(error, match="k must"):
            asyncio.run(client.recommend(k))  # type: ignore[arg-type]


def test_a_history_with_items_newer_than_the_bundle_never_raises(model, cloud):
    """Items the cloud sent after the bundle was built (ids past its catalog) are history too."""
    beyond = len(model.known) + 7
    transports: dict[str, Transport | None] = {
        "offline": None, "grpc": GrpcTransport(f"127.0.0.1:{cloud.grpc_port}", api_key=README_KEY)}
    for name, transport in transports.items():
        client = EdgeClient(model, MemoryDeviceStore([1, 2, beyond]), "dev-new", transport,
                            EdgeSettings(deadline_ms=5000))
        result, _ = recommend_timed(client)
        check_answer(result)
        assert beyond not in result.items, name
        assert result.served_by == ("fallback" if transport is None else "cloud"), result
