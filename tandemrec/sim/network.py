"""Network conditions on the device side of the wire: latency, loss, outages, slow replies.

`FaultyTransport` wraps a real transport, so every simulated request still reaches the real
cloud over gRPC or HTTP unless the condition drops it first.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from edge_client.transport import CloudAnswer, CloudError, Transport
from tandem_contract.request import CollaborativeRequest


@dataclass(frozen=True)
class Conditions:
    """Per run. Times are seconds since the run started."""

    latency_ms: float = 0.0  # added to every call (both directions together)
    jitter_ms: float = 0.0  # uniform +- around the added latency
    loss: float = 0.0  # share of calls that fail as if the packet were lost
    outage: tuple[float, float] | None = None  # [start, end): the cloud is unreachable
    slow_share: float = 0.0  # share of calls that take `slow_ms` more
    slow_ms: float = 0.0

    def describe(self) -> str:
        parts = []
        if self.latency_ms or self.jitter_ms:
            parts.append(f"+{self.latency_ms:g}±{self.jitter_ms:g} ms")
        if self.loss:
            parts.append(f"{self.loss:.0%} loss")
        if self.outage:
            parts.append(f"outage {self.outage[0]:g}-{self.outage[1]:g} s")
        if self.slow_share:
            parts.append(f"{self.slow_share:.0%} slow by {self.slow_ms:g} ms")
        return ", ".join(parts) or "clean network"


class FaultyTransport:
    """A transport seen through `Conditions`; the run clock starts at construction."""

    def __init__(self, inner: Transport, cond: Conditions, seed: int = 0,
                 start: float | None = None) -> None:
        self.inner, self.cond = inner, cond
        self.rng = random.Random(seed)
        self.start = time.monotonic() if start is None else start

    async def _before(self, timeout_s: float) -> float:
        """Apply the conditions; returns the time left for the real call."""
        c, t = self.cond, time.monotonic() - self.start
        if c.outage and c.outage[0] <= t < c.outage[1]:
            raise CloudError("UNAVAILABLE: connection refused (simulated outage)",
                             code="UNAVAILABLE", retryable=True)
        delay = c.latency_ms + (self.rng.uniform(-c.jitter_ms, c.jitter_ms) if c.jitter_ms
                                else 0.0)
        if c.slow_share and self.rng.random() < c.slow_share:
            delay += c.slow_ms
        delay = max(0.0, delay) / 1000
        if delay >= timeout_s:
            await asyncio.sleep(timeout_s)
            raise CloudError("DEADLINE_EXCEEDED: simulated slow network",
                             code="DEADLINE_EXCEEDED", retryable=True)
        await asyncio.sleep(delay)
        if c.loss and self.rng.random() < c.loss:
            raise CloudError("UNAVAILABLE: simulated packet loss", code="UNAVAILABLE",
                             retryable=True)
        return timeout_s - delay

    async def recommend(self, req: CollaborativeRequest, device_id: str,
                        timeout_s: float) -> CloudAnswer:
        left = await self._before(timeout_s)
        return await self.inner.recommend(req, device_id, left)

    async def recommend_full(self, history: list[int], k: int, device_id: str,
                             timeout_s: float) -> CloudAnswer:
        left = await self._before(timeout_s)
        return await self.inner.recommend_full(history, k, device_id, left)

    async def manifest(self, device_id: str, timeout_s: float) -> dict:
        left = await self._before(timeout_s)
        return await self.inner.manifest(device_id, left)

    def artifact(self, name: str, version: str, device_id: str) -> AsyncIterator[bytes]:
        return self.inner.artifact(name, version, device_id)

    async def close(self) -> None:
        await self.inner.close()
