"""Replay held-out users as devices against a running cloud, one serving mode at a time.

Each device holds its user's history (everything before the test item) and asks once for k
recommendations; the answer is scored against the true next item, as in offline evaluation.
Devices run concurrently (a bounded number in flight) and may be paced to a request rate so
that an outage window falls in the middle of the run.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from cloud_service.settings import CloudSettings
from edge_client.client import EdgeClient, EdgeModel, MemoryDeviceStore
from edge_client.settings import EdgeSettings
from edge_client.transport import CloudError, Transport
from tandemrec.eval.metrics import MISS_RANK, metrics_from_ranks

MODES = ("collaborative", "cloud-full", "edge-only", "popularity")


CLOUD_MAX_K = CloudSettings.model_fields["max_k"].default  # the largest k a cloud serves


@dataclass(frozen=True)
class Catalog:
    """What the app knows of its items beside the device bundle: popularity, semantic ids.

    A table student's bundle carries its own item table, so `codes` is None. A semantic-id
    bundle carries none (its size does not grow with the catalog): the app's catalog gives each
    history event its semantic id, as a real app's does from what the cloud publishes.
    """

    popularity: np.ndarray  # (N+1,) for the popularity baseline
    codes: np.ndarray | None = None  # (N+1, L) every item's semantic id; None: table bundle

    def store(self, items: np.ndarray) -> MemoryDeviceStore:
        """A device store holding `items`, with their semantic ids for a semantic-id bundle."""
        sids = None if self.codes is None else [tuple(c) for c in self.codes[items].tolist()]
        return MemoryDeviceStore(items.tolist(), sids)

    def semantic_id(self, item: int) -> tuple[int, ...] | None:
        return None if self.codes is None else tuple(self.codes[item].tolist())


@dataclass
class Outcome:
    """One device's request."""

    t: float  # when the request was asked, in seconds since the run started
    rank: int  # 0-based position of the true next item in the k shown, MISS_RANK if absent
    latency_ms: float
    served_by: str
    bytes_up: int
    error: bool = False
    device_ms: float = 0.0
    raw_bytes_same_len: int = 0  # the same last-L history sent as item ids (cloud-full form)


@dataclass
class ModeRun:
    mode: str
    outcomes: list[Outcome] = field(default_factory=list)
    seconds: float = 0.0

    def row(self) -> dict:
        o = self.outcomes
        ranks = np.array([x.rank for x in o])
        lat = np.array([x.latency_ms for x in o])
        m = metrics_from_ranks(ranks, (10,))
        asked = [x for x in o if x.served_by != "local"]
        return {"mode": self.mode, "devices": len(o), "hr@10": m["hr@10"],
                "ndcg@10": m["ndcg@10"], "mrr@10": m["mrr@10"],
                "bytes_up": float(np.mean([x.bytes_up for x in o])) if o else 0.0,
                "raw_bytes_same_history": float(np.mean([x.raw_bytes_same_len for x in o]))
                if o else 0.0,
                "p50_ms": float(np.percentile(lat, 50)) if o else 0.0,
                "p99_ms": float(np.percentile(lat, 99)) if o else 0.0,
                "max_ms": float(lat.max()) if o else 0.0,
                "fallback_rate": (sum(x.served_by == "fallback" for x in asked) / len(asked)
                                  if asked else 0.0),
                "cache_rate": sum(x.served_by == "cache" for x in o) / max(1, len(o)),
                "errors": sum(x.error for x in o),
                "device_p50_ms": float(np.percentile([x.device_ms for x in o], 50))
                if o else 0.0, "seconds": self.seconds}


def rank_of(items: tuple[int, ...], target: int) -> int:
    hit = [i for i, x in enumerate(items) if x == target]
    return hit[0] if hit else MISS_RANK


async def _paced(n: int, fn: Callable[[int], object], concurrency: int, rate: float) -> None:
    """Run fn(0..n-1) with at most `concurrency` in flight, started at `rate` per second."""
    sem = asyncio.Semaphore(concurrency)
    start = time.monotonic()

    async def one(i: int) -> None:
        async with sem:
            await fn(i)  # type: ignore[misc]

    tasks = []
    for i in range(n):
        if rate > 0:
            wait = start + i / rate - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
        tasks.append(asyncio.create_task(one(i)))
    await asyncio.gather(*tasks)


async def run_mode(mode: str, model: EdgeModel, histories: list[np.ndarray],
                   targets: np.ndarray, transport: Transport | None, settings: EdgeSettings,
                   k: int = 10, concurrency: int = 64, rate: float = 0.0,
                   feature_delay: int = 0, start: float | None = None,
                   steps: int = 1, catalog: Catalog | None = None) -> ModeRun:
    """All devices in one mode; `feature_delay` hides the last n items from cloud-full;
    `steps` > 1 replays each device's last interactions one request at a time; `catalog`: the
    app's items (default: the table bundle's own)."""
    run = ModeRun(mode)
    t_start = time.monotonic() if start is None else start
    catalog = catalog or Catalog(model.popularity)
    pop = catalog.popularity.astype(np.float64).copy()
    pop[0] = -np.inf
    pop_order = np.argsort(-pop, kind="stable")

    async def device(u: int) -> None:
        hist, target = histories[u], int(targets[u])
        t0 = time.perf_counter()
        rel = time.monotonic() - t_start
        if mode == "popularity":
            seen = set(hist.tolist())
            items = tuple(int(i) for i in pop_order[: k + len(seen)] if i not in seen)[:k]
            run.outcomes.append(Outcome(rel, rank_of(items, target),
                                        (time.perf_counter() - t0) * 1000, "local", 0))
            return
        if mode == "cloud-full":
            await _cloud_full(run, u, hist, target, transport, settings, k, feature_delay,
                              rel, t0)
            return
        # With steps > 1 the device replays its last interactions: ask, show, record, ask...
        seq = np.append(hist, target)
        if mode == "edge-only" and model.sid is not None:
            client = await _primed(model, catalog, seq[:-steps], u, transport, settings, k)
        else:
            client = EdgeClient(model, catalog.store(seq[:-steps]), f"sim-{u}",
                                transport if mode == "collaborative" else None, settings, seed=u)
        for j in range(steps, 0, -1):
            asked = time.monotonic() - t_start
            res = await client.recommend(k)
            raw = raw_bytes(f"sim-{u}", seq[:-j], client) if mode == "collaborative" else 0
            run.outcomes.append(Outcome(asked,
                                        rank_of(res.items, int(seq[-j])), res.latency_ms,
                                        res.served_by if mode == "collaborative" else "local",
                                        res.bytes_up, device_ms=res.device_ms,
                                        raw_bytes_same_len=raw))
            client.record(int(seq[-j]), catalog.semantic_id(int(seq[-j])))

    t = time.monotonic()
    await _paced(len(histories), device, concurrency, rate)
    run.outcomes.sort(key=lambda o: o.t)
    run.seconds = time.monotonic() - t
    return run


async def _primed(model: EdgeModel, catalog: Catalog, history: np.ndarray, u: int,
                  transport: Transport | None, settings: EdgeSettings, k: int) -> EdgeClient:
    """A semantic-id device gone offline: it ranks the pool of its last answer, so it asks
    the cloud once, one interaction earlier, then records that interaction (the offline
    sid-edge-only mode's pool). Without a transport, or if that call fails, it has none."""
    store = catalog.store(history[:-1])
    if transport is not None and len(history):
        await EdgeClient(model, store, f"sim-{u}", transport, settings, seed=u).recommend(k)
    client = EdgeClient(model, store, f"sim-{u}", None, settings, seed=u)
    if len(history):
        client.record(int(history[-1]), catalog.semantic_id(int(history[-1])))
    return client


def raw_bytes(device_id: str, history: np.ndarray, client: EdgeClient) -> int:
    """Size of a cloud-full request carrying the same last L items the device summarises as
    intent tokens: the privacy and bandwidth cost at equal history length."""
    from tandem_wire.v1 import recommend_pb2 as pb

    last = int(client.knob("coarse_history", 50))
    items = history[-last:].tolist() if last else []
    return len(pb.RecommendFullRequest(device_id=device_id, item_history=items,
                                       k=int(client.knob("n_candidates", 600)))
               .SerializeToString())


async def _cloud_full(run: ModeRun, u: int, hist: np.ndarray, target: int,
                      transport: Transport | None, settings: EdgeSettings, k: int,
                      delay: int, rel: float, t0: float) -> None:
    """The baseline: the raw history goes up (minus the last `delay` items the logs lack)."""
    from tandem_wire.v1 import recommend_pb2 as pb

    sent = hist[:-delay] if delay and len(hist) > delay else hist
    sent = sent[-1000:]
    # The device drops items it has already seen but did not send, so it asks for more; at
    # most the cloud's default max_k (a 2,000-item history would otherwise ask for k > 1,000).
    want = min(k + len(hist) - len(sent), CLOUD_MAX_K)
    size = len(pb.RecommendFullRequest(device_id=f"sim-{u}", item_history=sent.tolist(),
                                       k=want).SerializeToString())
    assert transport is not None
    try:
        ans = await transport.recommend_full(sent.tolist(), want, f"sim-{u}",
                                             settings.deadline_ms / 1000 * 4)
        seen = set(hist.tolist())
        items = tuple(i for i in ans.items if i not in seen)[:k]
        run.outcomes.append(Outcome(rel, rank_of(items, target),
                                    (time.perf_counter() - t0) * 1000, "cloud", size))
    except CloudError:
        run.outcomes.append(Outcome(rel, MISS_RANK, (time.perf_counter() - t0) * 1000,
                                    "cloud", size, error=True))
