"""Adaptive micro-batching: concurrent requests share one teacher call, a lone one never waits.

A teacher call costs about the same for 1 row as for 32 on a CPU (it is bound by the catalog
product and Python overhead), so under load batching multiplies throughput. Each key (model
version and mode) has one worker that runs one batch at a time in a worker thread: the event
loop keeps the other core, and rows that arrive while a batch runs form the next one. The
policy, per key:

- The model is idle when a row arrives: the row is dispatched at once, with whatever else is
  queued. A lone request never waits for company (a fixed timer halved throughput at
  concurrency 1: every request waited it out).
- A batch is in flight: rows collect while it runs. When it ends the worker expects the rows
  queued then plus as many as the batch held (in a closed loop its callers come straight back
  with their next request) and waits for that company while it keeps coming: it dispatches as
  soon as the expected rows (or a full batch) are there, or once the bound has passed with no
  new row, and at the latest one service time plus the bound after the batch ended. With one
  caller the expectation is one row, so it never waits; a row that arrives after the wait, at
  a model idle since, goes at once.
- The bound is `max_wait_s` capped at `WAIT_SHARE` of the observed batch service time (an
  EWMA): waiting longer than a fraction of one teacher call costs more than running another
  call. Before any batch has been timed the bound is 0.

The bound counts from the newest row, not from the end of the batch, because a batch's callers
come back in a burst that starts late: the event loop first writes every answer of the batch,
then reads the next requests. With 32 rows on two cores the first of them arrived 3 to 5 ms
after the batch ended and the last about 2 ms after the first. Counted from the batch's end,
the bound (2 ms) dispatched each batch one row short, and that row waited a whole extra batch:
3% of HTTP requests at concurrency 32 took 22 ms against 12.6 for the rest.

Triton counts its max queue delay from each row's arrival instead. Measured with closed-loop
clients (bench/cloud_load.py), counting from arrival dispatched the rows that had queued during
a batch at once, without the callers of that batch, so batches stayed small at concurrency 8
to 32 and throughput fell below the fixed window's (docs/performance.md).

`adaptive=False` keeps the fixed window of earlier releases: every batch waits `max_wait_s`
from when the worker takes its first row unless it fills (an operator's fallback; tests use it
to hold requests).

A caller that gives up (cancelled) is left out of its batch; an error in a batch goes to every
caller of it; `drop` (the model was unloaded) and `close` fail queued and in-flight callers.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import numpy as np

K = TypeVar("K")  # what a batch is grouped by (model version and mode)
WAIT_SHARE = 0.5  # the wait for company is at most this share of one batch's service time
EWMA_ALPHA = 0.2  # weight of the newest batch in the service-time average


@dataclass
class _Row:
    row: np.ndarray
    fut: asyncio.Future
    arrived: float


@dataclass
class _Lane:
    """One key's queue, its worker and what the worker has learnt about the model's speed."""

    rows: deque[_Row] = field(default_factory=deque)
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    need: int = 1  # the worker is woken once this many rows are queued
    idle_since: float = 0.0  # when the last batch ended: rows older than this waited for it
    expect: int = 1  # rows the next batch waits for: those queued and those of the last batch
    service_s: float = 0.0  # EWMA of a batch's service time; 0 until one has been timed
    task: asyncio.Task | None = None
    error: Exception | None = None  # what queued callers get when the lane is dropped


class MicroBatcher(Generic[K]):
    """Groups submitted rows by key and runs `fn(key, rows)` -> (B, ...) once per batch."""

    def __init__(self, fn: Callable[[K, list[np.ndarray]], np.ndarray], *, max_size: int,
                 max_wait_s: float, on_batch: Callable[[int], None] | None = None,
                 adaptive: bool = True) -> None:
        self.fn, self.max_size, self.max_wait_s = fn, max_size, max_wait_s
        self.adaptive = adaptive
        self.on_batch = on_batch
        self._lanes: dict[K, _Lane] = {}

    async def submit(self, key: K, row: np.ndarray) -> np.ndarray:
        """Score one row; returns its output row once its batch has run."""
        if self.max_size <= 1:
            out = await asyncio.to_thread(self.fn, key, [row])
            if self.on_batch:
                self.on_batch(1)
            return out[0]
        loop = asyncio.get_running_loop()
        lane = self._lanes.get(key)
        if lane is None:
            lane = self._lanes[key] = _Lane()
            lane.task = asyncio.create_task(self._run(key, lane))
        fut: asyncio.Future = loop.create_future()
        lane.rows.append(_Row(row, fut, loop.time()))
        if len(lane.rows) >= lane.need:
            lane.ready.set()
        return await fut

    def wait_bound(self, key: K) -> float:
        """Seconds a row may wait for company under this key now (see the module docstring)."""
        if not self.adaptive:
            return self.max_wait_s
        lane = self._lanes.get(key)
        return min(self.max_wait_s, WAIT_SHARE * lane.service_s) if lane else 0.0

    async def _run(self, key: K, lane: _Lane) -> None:
        loop = asyncio.get_running_loop()
        batch: list[_Row] = []
        try:
            while True:
                await self._wait_rows(lane, 1, None)
                await self._gather(key, lane)
                take = min(self.max_size, len(lane.rows))
                batch = [r for r in (lane.rows.popleft() for _ in range(take)) if not r.fut.done()]
                if batch:  # empty when every caller of it gave up
                    await self._dispatch(key, lane, batch)
                lane.idle_since = loop.time()
                lane.expect = max(1, len(batch) + len(lane.rows))
                batch = []
        except asyncio.CancelledError:
            _fail(batch, lane.error or RuntimeError("batcher closed"))
            raise

    async def _gather(self, key: K, lane: _Lane) -> None:
        """Wait for the next batch's company as the policy says (see the module docstring)."""
        loop = asyncio.get_running_loop()
        if not self.adaptive:  # the fixed window: from taking the first row, until full
            deadline = max(lane.rows[0].arrived, lane.idle_since) + self.max_wait_s
            if deadline > loop.time():
                await self._wait_rows(lane, self.max_size, deadline)
            return
        want, bound = min(self.max_size, lane.expect), self.wait_bound(key)
        latest = lane.idle_since + lane.service_s + bound
        while lane.rows and len(lane.rows) < want:  # `drop` may empty the lane meanwhile
            deadline = min(max(lane.idle_since, lane.rows[-1].arrived) + bound, latest)
            if deadline <= loop.time():
                return
            await self._wait_rows(lane, len(lane.rows) + 1, deadline)

    async def _wait_rows(self, lane: _Lane, need: int, deadline: float | None) -> None:
        """Until `need` rows are queued or `deadline` (loop time) passes: one timer, no task."""
        if len(lane.rows) >= need:
            return
        lane.need = need
        lane.ready.clear()
        timer = (asyncio.get_running_loop().call_at(deadline, lane.ready.set)
                 if deadline is not None else None)
        try:
            await lane.ready.wait()
        finally:
            lane.need = 1
            if timer:
                timer.cancel()

    async def _dispatch(self, key: K, lane: _Lane, batch: list[_Row]) -> None:
        start = time.perf_counter()
        try:
            out = await asyncio.to_thread(self.fn, key, [r.row for r in batch])
        except Exception as exc:  # every caller of the batch gets the error
            _fail(batch, exc)
            return
        took = time.perf_counter() - start
        lane.service_s = took if not lane.service_s else (
            EWMA_ALPHA * took + (1 - EWMA_ALPHA) * lane.service_s)
        if self.on_batch:
            self.on_batch(len(batch))
        for i, r in enumerate(batch):
            if not r.fut.done():
                r.fut.set_result(out[i])

    def drop(self, key: K, error: Exception | None = None) -> None:
        """Stop the worker of a key (its model was unloaded); its callers get `error`."""
        lane = self._lanes.pop(key, None)
        if lane is None:
            return
        lane.error = error or RuntimeError("batcher closed")
        _fail(lane.rows, lane.error)  # now: a worker not yet started never runs its handler
        lane.rows.clear()
        if lane.task:
            lane.task.cancel()  # the worker fails its in-flight batch as it stops

    async def close(self) -> None:
        """Stop every worker; their callers get an error."""
        tasks = [lane.task for lane in self._lanes.values() if lane.task]
        for key in list(self._lanes):
            self.drop(key)
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t


def _fail(rows: list[_Row] | deque[_Row], error: Exception) -> None:
    for r in rows:
        if not r.fut.done():
            r.fut.set_exception(error)
