"""Real misbehaving endpoints on ephemeral ports, for the edge SDK's fallback tests."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import grpc

GARBAGE = bytes(range(256)) * 64  # no HTTP status line, no HTTP/2 frame header either


def closed_port() -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def tcp_server(on_connect: Callable[[socket.socket], None]) -> Iterator[int]:
    """A TCP server that hands each accepted connection to `on_connect`; yields its port."""
    listener = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:  # the listener was closed: shut down
                return
            held.append(conn)  # kept open until teardown, whatever on_connect does
            threading.Thread(target=on_connect, args=(conn,), daemon=True).start()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield int(listener.getsockname()[1])
    finally:
        stop.set()
        listener.close()
        for conn in held:
            conn.close()
        thread.join(timeout=5)


def never_answer(conn: socket.socket) -> None:
    """Accept, read nothing, say nothing: the connection just hangs."""


def answer_garbage(conn: socket.socket) -> None:
    """Send bytes that are neither HTTP/1.1 nor HTTP/2, then keep the connection open."""
    with contextlib.suppress(OSError):
        conn.sendall(GARBAGE)


@contextlib.contextmanager
def http_200(body: bytes, content_type: str = "application/json") -> Iterator[str]:
    """An HTTP server that answers every request 200 with `body`; yields its base URL."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("content-length") or 0))
            self.send_response(200)
            self.send_header("content-type", content_type)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST

        def log_message(self, *args: object) -> None:  # quiet in test output
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@contextlib.contextmanager
def grpc_ok(reply: bytes) -> Iterator[str]:
    """A gRPC server whose Recommend answers OK with the raw bytes `reply`; yields its target."""

    def recommend(request: bytes, context: grpc.ServicerContext) -> bytes:
        return reply

    handler = grpc.method_handlers_generic_handler(
        "tandem.v1.TandemService", {"Recommend": grpc.unary_unary_rpc_method_handler(recommend)})
    server = grpc.server(ThreadPoolExecutor(max_workers=4), handlers=[handler])
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.stop(grace=None)
