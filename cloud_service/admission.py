"""Admission control for device requests, one implementation for both transports.

A replica serves at most `limit` device requests at once, lets `queued` more wait their turn
in arrival order, and refuses the rest at once with `Overloaded` (HTTP 503, gRPC
RESOURCE_EXHAUSTED, both with a retry hint), counted in the transport's refusal counter. A
server that queued without bound fell over (HTTP at concurrency 64: 384 req/s, p99 788 ms);
a refusal costs next to nothing and the device falls back on its own ranking. Each transport
decides which calls are device requests and when one takes its slot (http_guard, grpc_server).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator

from prometheus_client import Counter

from cloud_service.errors import Overloaded

RETRY_AFTER_S = 1.0  # what a refusal asks a client to wait before it tries this replica again


class Admission:
    """At most `limit` holders at once (0: no limit), `queued` more waiting in arrival order."""

    def __init__(self, limit: int, queued: int, refused: Counter | None = None) -> None:
        self.limit, self.queued = limit, queued
        self.active = 0
        self.refused = refused
        self._waiters: deque[asyncio.Future[None]] = deque()

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Hold a slot for the block, given back however it ends; refused: `Overloaded`."""
        if not await self.enter():
            if self.refused is not None:
                self.refused.inc()
            raise self.overloaded()
        try:
            yield
        finally:
            self.leave()

    def overloaded(self) -> Overloaded:
        """The refusal: a fresh error each time (a raised one carries its own traceback)."""
        return Overloaded(f"this replica is at its limit of {self.limit} requests in flight "
                          f"and {self.queued} waiting: retry shortly, or on another replica",
                          retry_after_s=RETRY_AFTER_S)

    async def enter(self) -> bool:
        """Take a slot, waiting in line if there is room in it; False: refused, no slot taken."""
        if not self.limit or (self.active < self.limit and not self._waiters):
            self.active += 1
            return True
        if len(self._waiters) >= self.queued:
            return False
        turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(turn)
        try:
            await turn  # `leave` hands its slot over: `active` already counts this one
        except asyncio.CancelledError:
            if turn.done() and not turn.cancelled():
                self.leave()  # handed over just as the caller went away: pass it on
            elif turn in self._waiters:  # `leave` may have dropped it already, cancelled
                self._waiters.remove(turn)
            raise
        return True

    def leave(self) -> None:
        """Give the slot back, or straight to the first in line."""
        while self._waiters:
            turn = self._waiters.popleft()
            if not turn.done():
                turn.set_result(None)
                return
        self.active -= 1
