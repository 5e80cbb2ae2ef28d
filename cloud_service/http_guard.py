"""What stands between the connection and the HTTP routes: body limits, early refusals.

Read deadlines are the connection protocol's (http_protocol). `RequestGuard` is a pure ASGI
middleware: it refuses ambiguous framing, counts the body bytes actually received whatever the
framing, refuses unauthenticated calls before anything parses their body (the routes reuse the
principal it authenticated), and counts requests in flight so a draining replica finishes them.

It also puts device requests (`/v1/` but not `/v1/admin/`) through admission control
(`cloud_service.admission`, sized by `http_max_inflight` and `http_max_queued`), each once its
body is all there: a client still sending holds a connection, cut by the read deadline, never a
slot. Refusals are 503 with Retry-After in the error envelope, counted in
`tandem_http_refused_total`. Health, readiness, metrics and admin calls are never refused.
Admitted recommend calls are answered by the hot path (http_hot) when it takes them.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from cloud_service.admission import Admission
from cloud_service.errors import BodyTooLarge, InvalidInput, Overloaded, ServiceError
from cloud_service.http_convert import credentials_from_http
from cloud_service.http_hot import HotRoutes
from cloud_service.service import RecommendationService

log = logging.getLogger("tandem.cloud")
Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
# The operations that take credentials; any other method or path is the router's 404 or 405.
DEVICE_ROUTES = {("POST", "/v1/recommend"), ("POST", "/v1/recommend-full"),
                 ("GET", "/v1/manifest"), ("GET", "/v1/artifacts/")}
ADMIN_ROUTES = {("POST", "/v1/admin/publish"), ("GET", "/v1/admin/registry"),
                ("POST", "/v1/admin/promote"), ("POST", "/v1/admin/retire")}


def json_headers(body: bytes) -> list[tuple[bytes, bytes]]:
    """The headers of a JSON response body."""
    return [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]


def error_body(exc: ServiceError) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    """The envelope `{"error": {"code", "message"}}` and its headers (Retry-After if any)."""
    body = json.dumps({"error": {"code": exc.grpc_code, "message": exc.message}}).encode()
    headers = json_headers(body)
    if (retry := exc.retry_after_header()) is not None:
        headers.append((b"retry-after", retry.encode()))
    return body, headers


class RequestGuard:
    """Pure ASGI middleware in front of the FastAPI app (see the module docstring)."""

    def __init__(self, app: ASGIApp, service: RecommendationService, max_body: int) -> None:
        self.app = app
        self.service = service
        self.hot = HotRoutes(service)
        self.max_body = max_body
        s = service.settings
        self.admission = Admission(s.http_max_inflight, s.http_max_queued,
                                   service.metrics.http_refused)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        path = scope["path"]
        try:
            self._check_framing(headers)
            if not path.startswith("/v1/"):  # health, metrics, docs: not drained, not refused
                await self._forward(scope, receive, send)
                return
        except ServiceError as exc:
            await _reply(send, exc)
            return
        # Operators must reach a loaded replica too: admin routes skip admission.
        await self._serve(scope, receive, send, headers,
                          admit=not path.startswith("/v1/admin/"))

    async def _serve(self, scope: Scope, receive: Receive, send: Send,
                     headers: dict[str, str], admit: bool) -> None:
        """A /v1/ request: counted for the drain, authenticated, then forwarded; device
        requests take an admission slot only once their whole body is here, so clients that
        send slowly hold a connection (cut by the read timeout), never a slot."""
        try:
            with self.service.in_flight():
                self._authenticate(scope, headers)
                if not admit:
                    await self._forward(scope, receive, send)
                    return
                body = await self._read_body(receive)
                if body is not None:  # None: the client went away
                    await self._admitted(scope, body, receive, send)
        except ServiceError as exc:
            await _reply(send, exc)

    async def _admitted(self, scope: Scope, body: bytes, receive: Receive, send: Send) -> None:
        try:
            async with self.admission.slot():
                hot = self.hot.take(scope, body)
                if hot is not None:
                    await _answer(send, hot)
                else:  # the body is read and within max_body: no byte count (_forward)
                    await self.app(scope, _replay(body, receive), send)  # answers its errors
        except Overloaded as exc:
            await _reply(send, exc, close=False)  # the body is read: keep-alive

    async def _read_body(self, receive: Receive) -> bytes | None:
        """The whole request body, at most `max_body` bytes; None if the client went away."""
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                raise BodyTooLarge(f"request body over {self.max_body} bytes")
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    def _check_framing(self, headers: dict[str, str]) -> None:
        size = headers.get("content-length")
        if size is not None and "transfer-encoding" in headers:
            raise InvalidInput("Content-Length and Transfer-Encoding together: send one framing")
        if size is not None and not size.strip().isdigit():
            raise InvalidInput("Content-Length is not a number")
        if size is not None and int(size) > self.max_body:
            raise BodyTooLarge(f"request body over {self.max_body} bytes")

    def _authenticate(self, scope: Scope, headers: dict[str, str]) -> None:
        """Before the body is read: unauthenticated callers learn nothing about validation.

        The principal goes in the request's state, where the routes take it (http_app).
        """
        method, path = scope["method"], scope["path"]
        if path.startswith("/v1/artifacts/"):
            path = "/v1/artifacts/"
        admin = (method, path) in ADMIN_ROUTES
        if not admin and (method, path) not in DEVICE_ROUTES:
            return
        who = self.service.authenticate(credentials_from_http(headers), admin=admin)
        scope["state"] = {**scope.get("state", {}), "principal": who}  # this request's own

    async def _forward(self, scope: Scope, receive: Receive, send: Send) -> None:
        received = 0
        answered = False

        async def counted() -> Message:
            nonlocal received, answered
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body and not answered:
                    answered = True  # answer now; the rest of the body is never read
                    await _reply(send, BodyTooLarge(f"request body over {self.max_body} bytes"))
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: Message) -> None:
            if not answered:  # after our 413 the app's own answer has nowhere to go
                await send(message)

        await self.app(scope, counted, guarded_send)


def _replay(body: bytes, receive: Receive) -> Receive:
    """A receive that hands over the buffered body once, then the connection's own messages."""
    given = False

    async def replay() -> Message:
        nonlocal given
        if not given:
            given = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()
    return replay


def unexpected(exc: Exception) -> ServiceError:
    """An unexpected failure, logged with its traceback; the client learns only that."""
    log.exception("unexpected error", exc_info=exc)
    return ServiceError("internal error: the server logged the details")


async def _answer(send: Send, call: Awaitable[bytes]) -> None:
    """A hot-path request (http_hot): 200 with the core's answer, or its error, kept alive."""
    try:
        body = await call
    except ServiceError as exc:
        await _reply(send, exc, close=False)
        return
    except Exception as exc:  # as FastAPI's last-resort handler answers it (http_app)
        await _reply(send, unexpected(exc), close=False)
        return
    await send({"type": "http.response.start", "status": 200, "headers": json_headers(body)})
    await send({"type": "http.response.body", "body": body})


async def _reply(send: Send, exc: ServiceError, close: bool = True) -> None:
    body, headers = error_body(exc)
    if close:  # whatever is left of the request body is never read
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": exc.http_status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
