"""The HTTP/1.1 connection protocol: uvicorn's httptools (llhttp, in C) with read deadlines.

uvicorn alone waits forever for a half-sent request. Here a request's headers, counted from its
first byte, then its body, counted from the end of the headers, must each arrive within
`read_timeout_s`, or the connection is closed; so is a connection that never sends a byte.
Between requests on a kept-alive connection uvicorn's keep-alive timeout applies. A head still
incomplete past `max_head_bytes` is refused (llhttp itself buffers headers without bound), and
every request the parser rejects is answered in the service's error envelope.
"""

from __future__ import annotations

import asyncio

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from cloud_service.errors import InvalidInput
from cloud_service.http_guard import error_body

_HEAD, _BODY = "head", "body"  # which part of a request the running deadline is for


def timed_httptools(read_timeout_s: float, max_head_bytes: int) -> type[HttpToolsProtocol]:
    """uvicorn's httptools protocol, closing connections whose requests arrive too slowly."""

    class TimedHttpToolsProtocol(HttpToolsProtocol):
        _timer: asyncio.TimerHandle | None = None
        _phase: str | None = None
        _head_bytes = 0

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm(_HEAD)  # a connection that never sends a byte is cut off too

        def data_received(self, data: bytes) -> None:
            super().data_received(data)  # the parser's callbacks below move the deadline
            if self._phase is _HEAD and self.parser is not None:
                self._head_bytes += len(data)  # what the parser holds of an unfinished head
                if self._head_bytes > max_head_bytes:
                    self.send_400_response(f"request headers over {max_head_bytes} bytes")

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._head_bytes = 0
            self._arm(_HEAD)  # from the request's first byte, kept-alive or pipelined

        def on_headers_complete(self) -> None:
            super().on_headers_complete()
            self._arm(_BODY)  # the body gets its own deadline

        def on_message_complete(self) -> None:
            super().on_message_complete()
            self._disarm()  # all here: the app's time is not the client's

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def send_400_response(self, msg: str) -> None:
            """A request the parser rejects: the error envelope, then close (as uvicorn does)."""
            self._disarm()
            body, headers = error_body(InvalidInput(msg))
            head = [b"HTTP/1.1 400 Bad Request\r\n", *(b"%s: %s\r\n" % h for h in headers),
                    b"connection: close\r\n\r\n"]
            self.transport.write(b"".join(head) + body)
            self.transport.close()

        def _arm(self, phase: str) -> None:
            if self._timer is not None:
                self._timer.cancel()
            self._phase = phase
            self._timer = self.loop.call_later(read_timeout_s, self._expired)

        def _disarm(self) -> None:
            if self._timer is not None:
                self._timer.cancel()
            self._timer = self._phase = None

        def _expired(self) -> None:
            self._timer = self._phase = None
            if not self.transport.is_closing():
                self.transport.close()

    return TimedHttpToolsProtocol
