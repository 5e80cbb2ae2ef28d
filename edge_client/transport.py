"""How the device reaches the cloud: gRPC (default) or HTTP, with a deadline on every call.

Both transports send the same `CollaborativeRequest` and return the same `CloudAnswer`; they
raise `CloudError` with a `retryable` flag so the retry policy and the circuit breaker treat
outages (retry, then fall back) differently from a bad request (the cloud is up: do not retry).
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol

from edge_client.request import CollaborativeRequest

RETRYABLE_GRPC = {"UNAVAILABLE", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED", "ABORTED",
                  "INTERNAL", "UNKNOWN"}


class CloudError(Exception):
    """A failed cloud call; `retryable` is False when retrying cannot help (bad input, auth)."""

    def __init__(self, message: str, *, code: str, retryable: bool) -> None:
        super().__init__(message)
        self.code, self.retryable = code, retryable


@dataclass(frozen=True)
class CloudAnswer:
    """Candidates with the teacher's scores, best first, and the version that scored them."""

    items: tuple[int, ...]
    scores: tuple[float, ...]  # collaborative: teacher log-probabilities over the catalog
    model_version: str
    intents: tuple[int, ...] = ()  # collaborative: each item's intent token
    catalog_size: int = 0


class Transport(Protocol):
    """What the edge client needs from the cloud."""

    async def recommend(self, req: CollaborativeRequest, device_id: str,
                        timeout_s: float) -> CloudAnswer: ...

    async def recommend_full(self, history: list[int], k: int, device_id: str,
                             timeout_s: float) -> CloudAnswer: ...

    async def manifest(self, device_id: str, timeout_s: float) -> dict: ...

    def artifact(self, name: str, version: str, device_id: str) -> AsyncIterator[bytes]: ...

    async def close(self) -> None: ...


class GrpcTransport:
    """gRPC over one long-lived channel; credentials go in the call metadata."""

    def __init__(self, target: str, api_key: str = "", device_token: str = "") -> None:
        import grpc

        from tandem_wire.v1 import recommend_pb2_grpc

        self._grpc = grpc
        self.channel = grpc.aio.insecure_channel(target)
        self.stub = recommend_pb2_grpc.TandemServiceStub(self.channel)
        md = []
        if api_key:
            md.append(("x-api-key", api_key))
        if device_token:
            md.append(("authorization", f"Bearer {device_token}"))
        self.metadata = tuple(md)

    def _error(self, exc: Exception) -> CloudError:
        code = exc.code().name if hasattr(exc, "code") else "UNAVAILABLE"
        details = exc.details() if hasattr(exc, "details") else str(exc)
        return CloudError(f"{code}: {details}", code=code, retryable=code in RETRYABLE_GRPC)

    async def recommend(self, req: CollaborativeRequest, device_id: str,
                        timeout_s: float) -> CloudAnswer:
        from tandem_wire.v1 import recommend_pb2 as pb

        msg = pb.RecommendRequest(device_id=device_id, intent_tokens=req.intent_tokens,
                                  intent_weights=req.intent_weights,
                                  coarse_history=req.coarse_history, k=req.k,
                                  model_version=req.model_version)
        try:
            rep = await self.stub.Recommend(msg, timeout=timeout_s, metadata=self.metadata)
        except self._grpc.RpcError as exc:
            raise self._error(exc) from exc
        return CloudAnswer(tuple(rep.item_ids), tuple(rep.scores), rep.model_version,
                           tuple(rep.item_intents), rep.catalog_size)

    async def recommend_full(self, history: list[int], k: int, device_id: str,
                             timeout_s: float) -> CloudAnswer:
        from tandem_wire.v1 import recommend_pb2 as pb

        msg = pb.RecommendFullRequest(device_id=device_id, item_history=history, k=k)
        try:
            rep = await self.stub.RecommendFull(msg, timeout=timeout_s, metadata=self.metadata)
        except self._grpc.RpcError as exc:
            raise self._error(exc) from exc
        return CloudAnswer(tuple(rep.item_ids), tuple(rep.scores), rep.model_version)

    async def manifest(self, device_id: str, timeout_s: float) -> dict:
        import json

        from tandem_wire.v1 import recommend_pb2 as pb

        try:
            rep = await self.stub.GetManifest(pb.GetManifestRequest(device_id=device_id),
                                              timeout=timeout_s, metadata=self.metadata)
        except self._grpc.RpcError as exc:
            raise self._error(exc) from exc
        return dict(json.loads(rep.manifest_json))

    async def artifact(self, name: str, version: str, device_id: str) -> AsyncIterator[bytes]:
        from tandem_wire.v1 import recommend_pb2 as pb

        req = pb.DownloadArtifactRequest(model_version=version, name=name, device_id=device_id)
        try:
            async for chunk in self.stub.DownloadArtifact(req, metadata=self.metadata):
                yield chunk.data
        except self._grpc.RpcError as exc:
            raise self._error(exc) from exc

    async def close(self) -> None:
        await self.channel.close()


class HttpTransport:
    """HTTP/JSON against the same operations under /v1."""

    def __init__(self, base_url: str, api_key: str = "", device_token: str = "") -> None:
        import httpx

        headers = {}
        if api_key:
            headers["x-api-key"] = api_key
        if device_token:
            headers["authorization"] = f"Bearer {device_token}"
        self._httpx = httpx
        # Without TCP_NODELAY, Nagle's algorithm and delayed ACKs add ~40 ms per request.
        nodelay = httpx.AsyncHTTPTransport(
            socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)])
        self.client = httpx.AsyncClient(base_url=base_url.rstrip("/"), headers=headers,
                                        transport=nodelay)

    def _error(self, status: int, text: str) -> CloudError:
        retryable = status >= 500 or status == 429
        return CloudError(f"HTTP {status}: {text[:300]}", code=str(status), retryable=retryable)

    async def _post(self, path: str, body: dict, timeout_s: float) -> dict:
        try:
            resp = await self.client.post(path, json=body, timeout=timeout_s)
        except self._httpx.HTTPError as exc:
            raise CloudError(f"{type(exc).__name__}: {exc}", code="UNAVAILABLE",
                             retryable=True) from exc
        if resp.status_code != 200:
            raise self._error(resp.status_code, resp.text)
        return dict(resp.json())

    async def recommend(self, req: CollaborativeRequest, device_id: str,
                        timeout_s: float) -> CloudAnswer:
        body = {"device_id": device_id, "intent_tokens": list(req.intent_tokens),
                "intent_weights": list(req.intent_weights),
                "coarse_history": list(req.coarse_history), "k": req.k,
                "model_version": req.model_version}
        out = await self._post("/v1/recommend", body, timeout_s)
        return CloudAnswer(tuple(out["item_ids"]), tuple(out["scores"]), out["model_version"],
                           tuple(out.get("item_intents", ())), int(out.get("catalog_size", 0)))

    async def recommend_full(self, history: list[int], k: int, device_id: str,
                             timeout_s: float) -> CloudAnswer:
        out = await self._post("/v1/recommend-full",
                               {"device_id": device_id, "item_history": history, "k": k},
                               timeout_s)
        return CloudAnswer(tuple(out["item_ids"]), tuple(out["scores"]), out["model_version"])

    async def manifest(self, device_id: str, timeout_s: float) -> dict:
        import json

        try:
            resp = await self.client.get("/v1/manifest", params={"device_id": device_id},
                                         timeout=timeout_s)
        except self._httpx.HTTPError as exc:
            raise CloudError(str(exc), code="UNAVAILABLE", retryable=True) from exc
        if resp.status_code != 200:
            raise self._error(resp.status_code, resp.text)
        return dict(json.loads(resp.json()["manifest_json"]))

    async def artifact(self, name: str, version: str, device_id: str) -> AsyncIterator[bytes]:
        params = {"device_id": device_id, "model_version": version}
        try:
            async with self.client.stream("GET", f"/v1/artifacts/{name}", params=params,
                                          timeout=60) as resp:
                if resp.status_code != 200:
                    raise self._error(resp.status_code, (await resp.aread()).decode()[:300])
                async for chunk in resp.aiter_bytes():
                    yield chunk
        except self._httpx.HTTPError as exc:
            raise CloudError(str(exc), code="UNAVAILABLE", retryable=True) from exc

    async def close(self) -> None:
        await self.client.aclose()
