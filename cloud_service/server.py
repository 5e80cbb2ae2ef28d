"""Run one replica: the core once, gRPC and HTTP on one event loop, graceful shutdown.

On SIGTERM/SIGINT the replica first reports NOT_SERVING (gRPC health) and not ready (/readyz)
while still serving for `drain_delay_s`, so load balancers stop routing here; then it refuses
new requests (UNAVAILABLE / 503 with Retry-After), lets the ones that arrived finish within the
grace period, and stops. HTTP is uvicorn with read deadlines (http_protocol). The loop is
uvloop's where it is installed (not on Windows): both transports share it, and it costs less
per request than asyncio's.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import socket
import threading
from collections.abc import AsyncIterator, Generator, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field

import uvicorn
from grpc_health.v1 import health_pb2

from cloud_service.grpc_server import SERVICE, start_grpc
from cloud_service.http_app import create_app, metrics_app
from cloud_service.http_protocol import timed_httptools
from cloud_service.service import RecommendationService
from cloud_service.settings import CloudSettings
from cloud_service.store import Store

log = logging.getLogger("tandem.cloud")


@dataclass
class Running:
    """A started replica: its core and the ports it actually bound (0 in settings = any)."""

    service: RecommendationService
    http_port: int
    grpc_port: int
    metrics_port: int | None = None  # set when /metrics has a port of its own
    health: object = field(default=None, repr=False)  # the gRPC health servicer


class _HttpServer(uvicorn.Server):
    """uvicorn without its own signal handling: the replica shuts both transports down."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


def _bind(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # Accepted connections inherit it: without, a response written in two parts waits for
    # the client's delayed ACK, ~40 ms per request on a kept-alive connection.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind((host, port))
    return sock


async def _start_http(app: object, sock: socket.socket, settings: CloudSettings) -> tuple[
        _HttpServer, asyncio.Task]:
    """uvicorn on a bound socket, with read deadlines and bounded header size.

    No proxy-headers middleware: nothing reads the client's address, and it is a hop per request.
    """
    config = uvicorn.Config(app, log_level="warning", lifespan="off",  # type: ignore[arg-type]
                            http=timed_httptools(settings.http_read_timeout_s, 16 * 1024),
                            proxy_headers=False,
                            timeout_graceful_shutdown=int(settings.shutdown_grace_s))
    server = _HttpServer(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        if task.done():  # startup failed: surface its error
            await task
            raise RuntimeError("the HTTP server stopped during start-up")
        await asyncio.sleep(0.01)
    return server, task


async def set_health(r: Running, serving: bool) -> None:
    """gRPC health of the replica and of TandemService."""
    status = health_pb2.HealthCheckResponse.SERVING if serving else \
        health_pb2.HealthCheckResponse.NOT_SERVING
    for name in ("", SERVICE):
        await r.health.set(name, status)  # type: ignore[attr-defined]


@contextlib.asynccontextmanager
async def running(settings: CloudSettings, store: Store | None = None) -> AsyncIterator[Running]:
    """Start the core and both transports; on exit drain and stop them (tests use this too)."""
    service = RecommendationService(settings, store)
    await service.start()
    # The model and the libraries are long-lived: moving them out of the collector's view
    # keeps full collections (pauses of several ms under load) from scanning them.
    gc.collect()
    gc.freeze()
    grpc_server, grpc_port, health = await start_grpc(service, settings.host, settings.grpc_port)
    socks = [_bind(settings.host, settings.http_port)]
    servers = [await _start_http(create_app(service), socks[0], settings)]
    if settings.metrics_port is not None:
        socks.append(_bind(settings.host, settings.metrics_port))
        servers.append(await _start_http(metrics_app(service), socks[1], settings))
    r = Running(service, socks[0].getsockname()[1], grpc_port, health=health,
                metrics_port=socks[1].getsockname()[1] if len(socks) > 1 else None)
    log.info("serving gRPC on %s:%d and HTTP on %s:%d", settings.host, grpc_port,
             settings.host, r.http_port)
    try:
        yield r
    finally:
        service.begin_drain()
        await set_health(r, serving=False)
        await service.stop()  # refuses new requests and waits for in-flight ones
        for http, task in servers:
            http.should_exit = True
            await task
        await grpc_server.stop(settings.shutdown_grace_s)
        for sock in socks:
            sock.close()


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop's event loop if installed, else asyncio's."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def serve_until_stopped(settings: CloudSettings) -> None:
    """`serve` on a loop of its own (`tandem serve`)."""
    loop = new_event_loop()
    try:
        loop.run_until_complete(serve(settings))
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()


async def serve(settings: CloudSettings) -> None:
    """Serve until SIGINT or SIGTERM."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with running(settings) as r:
        print(f"tandem cloud: gRPC {settings.host}:{r.grpc_port}, HTTP "
              f"http://{settings.host}:{r.http_port} (docs at /docs), serving "
              f"{r.service.pool.state.current}", flush=True)
        await stop.wait()
        log.info("shutting down: not ready, serving %.1f s more, then draining",
                 settings.drain_delay_s)
        r.service.begin_drain()
        await set_health(r, serving=False)
        await asyncio.sleep(settings.drain_delay_s)  # load balancers notice readiness first


@contextlib.contextmanager
def replica_in_thread(settings: CloudSettings, store: Store | None = None) -> Iterator[Running]:
    """A replica on its own event-loop thread (the simulator's embedded cloud, and tests)."""
    started: Future[Running] = Future()
    loop = new_event_loop()
    stop = asyncio.Event()

    async def main() -> None:
        try:
            async with running(settings, store) as r:
                started.set_result(r)
                await stop.wait()
        except BaseException as exc:  # start-up failure: hand it to the caller's thread
            if not started.done():
                started.set_exception(exc)
            raise

    thread = threading.Thread(target=lambda: loop.run_until_complete(main()), daemon=True,
                              name="tandem-cloud")
    thread.start()
    try:
        yield started.result(timeout=300)
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(timeout=30)
        loop.close()
