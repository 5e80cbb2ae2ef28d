"""Run one replica: the core once, gRPC and HTTP on one event loop, graceful shutdown.

On SIGTERM/SIGINT the replica reports NOT_SERVING (gRPC health) and not ready (/readyz),
refuses new requests, lets in-flight ones finish within the grace period, then stops.
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
from dataclasses import dataclass

import uvicorn
from grpc_health.v1 import health_pb2

from cloud_service.grpc_server import SERVICE, start_grpc
from cloud_service.http_app import create_app
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
    sock = _bind(settings.host, settings.http_port)
    http = _HttpServer(uvicorn.Config(create_app(service), log_level="warning", lifespan="off",
                                      timeout_graceful_shutdown=int(settings.shutdown_grace_s)))
    http_task = asyncio.create_task(http.serve(sockets=[sock]))
    while not http.started:
        if http_task.done():  # startup failed: surface its error
            await http_task
            raise RuntimeError("the HTTP server stopped during start-up")
        await asyncio.sleep(0.01)
    http_port = sock.getsockname()[1]
    log.info("serving gRPC on %s:%d and HTTP on %s:%d", settings.host, grpc_port,
             settings.host, http_port)
    try:
        yield Running(service, http_port, grpc_port)
    finally:
        for name in ("", SERVICE):
            await health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        await service.stop()  # refuses new requests and waits for in-flight ones
        http.should_exit = True
        await http_task
        await grpc_server.stop(settings.shutdown_grace_s)
        sock.close()


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
        log.info("shutting down: draining in-flight requests")


@contextlib.contextmanager
def replica_in_thread(settings: CloudSettings, store: Store | None = None) -> Iterator[Running]:
    """A replica on its own event-loop thread (the simulator's embedded cloud, and tests)."""
    started: Future[Running] = Future()
    loop = asyncio.new_event_loop()
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
