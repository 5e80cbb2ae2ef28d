"""How the device reaches the cloud: gRPC (default) or HTTP, with a deadline on every call.

Both transports send the same `CollaborativeRequest` and return the same `CloudAnswer`; they
raise `CloudError` with a `retryable` flag so the retry policy and the circuit breaker treat
outages (retry, then fall back) differently from a bad request (the cloud is up: do not retry),
and with the cloud's retry hint when it sent one (a replica at its limit or a rate limit: gRPC
`retry-after` trailing metadata, HTTP `Retry-After`), which the breaker honours.
Whatever goes wrong on the way (a socket, the event loop, an answer that does not parse) comes
out as `CloudError`, never as another exception type.

A transport may be built outside any event loop (as an app does before `asyncio.run`): its
channel or HTTP client is made lazily in the loop that first uses it, and made again when a
later call runs in another loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

from tandem_contract.request import CollaborativeRequest

if TYPE_CHECKING:
    import httpx

RETRYABLE_GRPC = {"UNAVAILABLE", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED", "ABORTED",
                  "INTERNAL", "UNKNOWN"}
# Exceptions that mean the answer itself was garbage (not JSON, wrong shape, wrong types).
MALFORMED = (ValueError, KeyError, TypeError, IndexError)
R = TypeVar("R")


class CloudError(Exception):
    """A failed cloud call; `retryable` is False when retrying cannot help (bad input, auth).

    `retry_after_s`: how long the cloud asked the device to wait before calling again.
    """

    def __init__(self, message: str, *, code: str, retryable: bool,
                 retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.code, self.retryable, self.retry_after_s = code, retryable, retry_after_s


def retry_after(value: object) -> float | None:
    """A retry hint in seconds from a header or metadata value; None when absent or garbled."""
    try:
        seconds = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):  # an HTTP date, or nonsense: no hint
        return None
    return min(seconds, 3600.0) if seconds > 0 else None  # a hostile hint cannot mute the cloud


def transport_failure(exc: BaseException) -> CloudError:
    """Any other exception on the way to the cloud and back, as a retryable `CloudError`."""
    code = "BAD_RESPONSE" if isinstance(exc, MALFORMED) else "UNAVAILABLE"
    return CloudError(f"{code}: {type(exc).__name__}: {str(exc)[:300]}", code=code,
                      retryable=True)


@dataclass(frozen=True)
class CloudAnswer:
    """Candidates with the teacher's scores, best first, and the version that scored them."""

    items: tuple[int, ...]
    scores: tuple[float, ...]  # collaborative: teacher log-probabilities over the catalog
    model_version: str
    intents: tuple[int, ...] = ()  # collaborative: each item's intent token
    catalog_size: int = 0
    codes: tuple[int, ...] = ()  # collaborative: semantic ids, code_levels per item, flattened
    code_levels: int = 0
    new: tuple[bool, ...] = ()  # collaborative: newer than the device model (empty: none is)


class Transport(Protocol):
    """What the edge client needs from the cloud."""

    async def recommend(self, req: CollaborativeRequest, device_id: str,
                        timeout_s: float) -> CloudAnswer: ...

    async def recommend_full(self, history: list[int], k: int, device_id: str,
                             timeout_s: float) -> CloudAnswer: ...

    async def manifest(self, device_id: str, timeout_s: float) -> dict: ...

    def artifact(self, name: str, version: str, device_id: str) -> AsyncIterator[bytes]: ...

    async def close(self) -> None: ...


class LoopBound(Generic[R]):
    """One resource per event loop: made on first use in a loop, made again if the loop changes."""

    def __init__(self, make: Callable[[], R]) -> None:
        self._make = make
        self._loop: asyncio.AbstractEventLoop | None = None
        self._value: R | None = None

    def get(self) -> R:
        """The resource for the running loop (raises RuntimeError outside a running loop)."""
        loop = asyncio.get_running_loop()
        if self._value is None or self._loop is not loop:
            # grpc.aio channels and httpx pools bind futures and sockets to the loop they first
            # ran in; one from an earlier asyncio.run is dead here. It is dropped, not closed:
            # closing needs its own (finished) loop.
            self._value, self._loop = self._make(), loop
        return self._value

    def take(self) -> R | None:
        """Forget the resource; return it if the running loop can close it."""
        value, loop = self._value, self._loop
        self._value = self._loop = None
        return value if value is not None and loop is asyncio.get_running_loop() else None


@contextlib.contextmanager
def translated(known: type[BaseException] | tuple[type[BaseException], ...],
               convert: Callable[[Any], CloudError]) -> Iterator[None]:
    """Re-raise `known` errors through `convert`, and any other exception as a failure."""
    try:
        yield
    except CloudError:
        raise
    except known as exc:
        raise convert(exc) from exc
    except Exception as exc:  # cancellation (a BaseException) passes through untouched
        raise transport_failure(exc) from exc


def _ints(value: object, what: str) -> tuple[int, ...]:
    if not isinstance(value, list) or not all(type(v) is int for v in value):
        raise ValueError(f"{what} must be a list of integers")
    return tuple(value)


def _floats(value: object, what: str) -> tuple[float, ...]:
    if not isinstance(value, list) or not all(type(v) in (int, float) for v in value):
        raise ValueError(f"{what} must be a list of numbers")
    return tuple(float(v) for v in value)


def _bools(value: object, what: str) -> tuple[bool, ...]:
    if not isinstance(value, list) or not all(type(v) is bool for v in value):
        raise ValueError(f"{what} must be a list of booleans")
    return tuple(value)


def answer_from_json(out: object) -> CloudAnswer:
    """A recommend answer from its JSON body; ValueError when it has the wrong shape."""
    if not isinstance(out, dict):
        raise ValueError(f"answer is a JSON {type(out).__name__}, not an object")
    version, catalog = out.get("model_version"), out.get("catalog_size", 0)
    levels = out.get("code_levels", 0)
    if not isinstance(version, str) or type(catalog) is not int or type(levels) is not int:
        raise ValueError("model_version must be a string, catalog_size and code_levels "
                         "integers")
    return CloudAnswer(_ints(out.get("item_ids"), "item_ids"),
                       _floats(out.get("scores"), "scores"), version,
                       _ints(out.get("item_intents", []), "item_intents"), catalog,
                       _ints(out.get("item_codes", []), "item_codes"), levels,
                       _bools(out.get("item_new", []), "item_new"))


class GrpcTransport:
    """gRPC over one long-lived channel per event loop; credentials go in the call metadata."""

    def __init__(self, target: str, api_key: str = "", device_token: str = "") -> None:
        import grpc

        self._grpc = grpc
        self.target = target
        self._conn: LoopBound[tuple[Any, Any]] = LoopBound(self._connect)
        md = []
        if api_key:
            md.append(("x-api-key", api_key))
        if device_token:
            md.append(("authorization", f"Bearer {device_token}"))
        self.metadata = tuple(md)

    def _connect(self) -> tuple[Any, Any]:
        from tandem_wire.v1 import recommend_pb2_grpc

        channel = self._grpc.aio.insecure_channel(self.target)
        return channel, recommend_pb2_grpc.TandemServiceStub(channel)

    @property
    def channel(self) -> Any:
        """The running loop's channel."""
        return self._conn.get()[0]

    @property
    def stub(self) -> Any:
        """The running loop's stub."""
        return self._conn.get()[1]

    def _error(self, exc: Exception) -> CloudError:
        code = exc.code().name if hasattr(exc, "code") else "UNAVAILABLE"
        details = exc.details() if hasattr(exc, "details") else str(exc)
        # Pairs, not dict(): grpc.aio's Metadata is a mapping whose iteration yields pairs.
        trailers = exc.trailing_metadata() if hasattr(exc, "trailing_metadata") else None
        hint = next((v for k, v in trailers or () if k == "retry-after"), None)
        return CloudError(f"{code}: {details}", code=code, retryable=code in RETRYABLE_GRPC,
                          retry_after_s=retry_after(hint))

    def _translated(self) -> contextlib.AbstractContextManager[None]:
        return translated(self._grpc.RpcError, self._error)

    async def recommend(self, req: CollaborativeRequest, device_id: str,
                        timeout_s: float) -> CloudAnswer:
        from tandem_wire.v1 import recommend_pb2 as pb

        with self._translated():
            msg = pb.RecommendRequest(device_id=device_id, intent_tokens=req.intent_tokens,
                                      intent_weights=req.intent_weights,
                                      coarse_history=req.coarse_history, k=req.k,
                                      model_version=req.model_version)
            rep = await self.stub.Recommend(msg, timeout=timeout_s, metadata=self.metadata)
            return CloudAnswer(tuple(rep.item_ids), tuple(rep.scores), rep.model_version,
                               tuple(rep.item_intents), rep.catalog_size,
                               tuple(rep.item_codes), rep.code_levels, tuple(rep.item_new))

    async def recommend_full(self, history: list[int], k: int, device_id: str,
                             timeout_s: float) -> CloudAnswer:
        from tandem_wire.v1 import recommend_pb2 as pb

        with self._translated():
            msg = pb.RecommendFullRequest(device_id=device_id, item_history=history, k=k)
            rep = await self.stub.RecommendFull(msg, timeout=timeout_s, metadata=self.metadata)
            return CloudAnswer(tuple(rep.item_ids), tuple(rep.scores), rep.model_version)

    async def manifest(self, device_id: str, timeout_s: float) -> dict:
        import json

        from tandem_wire.v1 import recommend_pb2 as pb

        with self._translated():
            rep = await self.stub.GetManifest(pb.GetManifestRequest(device_id=device_id),
                                              timeout=timeout_s, metadata=self.metadata)
            return dict(json.loads(rep.manifest_json))

    async def artifact(self, name: str, version: str, device_id: str) -> AsyncIterator[bytes]:
        from tandem_wire.v1 import recommend_pb2 as pb

        req = pb.DownloadArtifactRequest(model_version=version, name=name, device_id=device_id)
        with self._translated():
            async for chunk in self.stub.DownloadArtifact(req, metadata=self.metadata):
                yield chunk.data

    async def close(self) -> None:
        conn = self._conn.take()
        if conn is not None:
            await conn[0].close()


class HttpTransport:
    """HTTP/JSON against the same operations under /v1, one client per event loop."""

    def __init__(self, base_url: str, api_key: str = "", device_token: str = "") -> None:
        import httpx

        headers = {}
        if api_key:
            headers["x-api-key"] = api_key
        if device_token:
            headers["authorization"] = f"Bearer {device_token}"
        self._httpx = httpx
        self.base_url, self.headers = base_url.rstrip("/"), headers
        self._client: LoopBound[httpx.AsyncClient] = LoopBound(self._connect)

    def _connect(self) -> httpx.AsyncClient:
        # Without TCP_NODELAY, Nagle's algorithm and delayed ACKs add ~40 ms per request.
        nodelay = self._httpx.AsyncHTTPTransport(
            socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)])
        return self._httpx.AsyncClient(base_url=self.base_url, headers=self.headers,
                                       transport=nodelay)

    @property
    def client(self) -> httpx.AsyncClient:
        """The running loop's client."""
        return self._client.get()

    def _error(self, resp: httpx.Response, text: str) -> CloudError:
        status = resp.status_code
        return CloudError(f"HTTP {status}: {text[:300]}", code=str(status),
                          retryable=status >= 500 or status == 429,
                          retry_after_s=retry_after(resp.headers.get("retry-after")))

    def _translated(self) -> contextlib.AbstractContextManager[None]:
        return translated(self._httpx.HTTPError, lambda exc: CloudError(
            f"{type(exc).__name__}: {exc}", code="UNAVAILABLE", retryable=True))

    async def _get_json(self, method: str, path: str, timeout_s: float, **kw: Any) -> object:
        """The JSON body of a 200 answer; CloudError for anything else."""
        with self._translated():
            resp = await self.client.request(method, path, timeout=timeout_s, **kw)
            if resp.status_code != 200:
                raise self._error(resp, resp.text)
            return resp.json()

    async def recommend(self, req: CollaborativeRequest, device_id: str,
                        timeout_s: float) -> CloudAnswer:
        body = {"device_id": device_id, "intent_tokens": list(req.intent_tokens),
                "intent_weights": list(req.intent_weights),
                "coarse_history": list(req.coarse_history), "k": req.k,
                "model_version": req.model_version}
        out = await self._get_json("POST", "/v1/recommend", timeout_s, json=body)
        with self._translated():
            return answer_from_json(out)

    async def recommend_full(self, history: list[int], k: int, device_id: str,
                             timeout_s: float) -> CloudAnswer:
        body = {"device_id": device_id, "item_history": history, "k": k}
        out = await self._get_json("POST", "/v1/recommend-full", timeout_s, json=body)
        with self._translated():
            a = answer_from_json(out)
            return CloudAnswer(a.items, a.scores, a.model_version)

    async def manifest(self, device_id: str, timeout_s: float) -> dict:
        import json

        out = await self._get_json("GET", "/v1/manifest", timeout_s,
                                   params={"device_id": device_id})
        with self._translated():
            return dict(json.loads(out["manifest_json"]))  # type: ignore[index]

    async def artifact(self, name: str, version: str, device_id: str) -> AsyncIterator[bytes]:
        params = {"device_id": device_id, "model_version": version}
        with self._translated():
            async with self.client.stream("GET", f"/v1/artifacts/{name}", params=params,
                                          timeout=60) as resp:
                if resp.status_code != 200:
                    raise self._error(resp, (await resp.aread()).decode()[:300])
                async for chunk in resp.aiter_bytes():
                    yield chunk

    async def close(self) -> None:
        client = self._client.take()
        if client is not None:
            await client.aclose()
