"""`tandem simulate`: the fleet against a cloud (a running one, or one started in-process)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edge_client.client import EdgeModel
from edge_client.settings import EdgeSettings
from edge_client.transport import GrpcTransport, HttpTransport, Transport
from tandemrec.sim.fleet import MODES, Catalog, ModeRun, run_mode
from tandemrec.sim.network import Conditions, FaultyTransport


@dataclass
class SimConfig:
    dataset: str
    bundle: Path
    devices: int = 0  # 0 = every held-out user
    modes: tuple[str, ...] = MODES
    transport: str = "grpc"
    target: str = ""  # host:port (gRPC) or URL (HTTP) of a running cloud; "" = embedded
    api_key: str = ""
    concurrency: int = 16
    rate: float = 0.0  # requests per second across the fleet; 0 = as fast as possible
    conditions: Conditions = field(default_factory=Conditions)
    feature_delay: int = 0
    policy: str = "always"
    deadline_ms: float = 150.0
    steps: int = 1  # requests per device, replaying its last interactions (policy studies)
    in_process: bool = False  # start the cloud on a thread here (the demo), not a process
    edge: dict = field(default_factory=dict)  # more EdgeSettings fields (shift thresholds...)
    seed: int = 0
    data_dir: Path | None = None


@contextlib.contextmanager
def cloud(cfg: SimConfig) -> Iterator[tuple[str, str]]:
    """(transport target, description): a running cloud, or one started here on its bundle.

    The started cloud is a `tandem serve` process of its own (embedded store), so the fleet
    and the cloud do not share an interpreter lock; `in_process=True` (the demo) runs it on a
    thread of this process instead.
    """
    if cfg.target:
        yield cfg.target, cfg.target
        return
    if cfg.in_process:
        from pydantic import SecretStr

        from cloud_service.server import replica_in_thread
        from cloud_service.settings import CloudSettings

        settings = CloudSettings(bundle=str(cfg.bundle), http_port=0, grpc_port=0,
                                 device_api_keys=[SecretStr("simulator")],
                                 key_rate_burst=10**9, key_rate_per_s=10**9, cache_ttl_s=0)
        # gRPC's asyncio poller logs a harmless EAGAIN when a second event loop in the same
        # process (the cloud's thread) uses gRPC too; keep it out of the demo's output.
        quiet = _DropPollerEagain()
        logging.getLogger("asyncio").addFilter(quiet)
        try:
            with replica_in_thread(settings) as r:
                yield (_target(cfg, r.grpc_port, r.http_port),
                       "an in-process cloud (embedded store)")
        finally:
            logging.getLogger("asyncio").removeFilter(quiet)
        return
    proc, http, grpc_port = start_cloud_process(cfg.bundle, env={
        "TANDEM_CLOUD_DEVICE_API_KEYS": "simulator", "TANDEM_CLOUD_CACHE_TTL_S": "0",
        "TANDEM_CLOUD_KEY_RATE_BURST": "1000000000", "TANDEM_CLOUD_KEY_RATE_PER_S": "1000000000"})
    try:
        yield _target(cfg, grpc_port, http), "a tandem serve process (embedded store)"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


class _DropPollerEagain(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not (isinstance(exc, BlockingIOError) and "PollerCompletionQueue" in
                    record.getMessage())


def _target(cfg: SimConfig, grpc_port: int, http_port: int) -> str:
    return (f"127.0.0.1:{grpc_port}" if cfg.transport == "grpc"
            else f"http://127.0.0.1:{http_port}")


def start_cloud_process(bundle: Path, env: dict[str, str], auth: bool = True,
                        timeout_s: float = 180) -> tuple[subprocess.Popen, int, int]:
    """Start `tandem serve` on free ports and wait until /readyz says ready."""
    import httpx

    ports = []
    for _ in range(2):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            ports.append(s.getsockname()[1])
    http, grpc_port = ports
    cmd = [sys.executable, "-m", "tandemrec.cli", "serve", "--bundle", str(bundle),
           "--http-port", str(http), "--grpc-port", str(grpc_port)]
    proc = subprocess.Popen(cmd + ([] if auth else ["--no-auth"]),
                            env={**os.environ, **env}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"tandem serve exited with {proc.returncode}")
        try:
            if httpx.get(f"http://127.0.0.1:{http}/readyz", timeout=1).status_code == 200:
                return proc, http, grpc_port
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    proc.kill()
    raise RuntimeError("tandem serve did not become ready")


def held_out(cfg: SimConfig) -> tuple[list[np.ndarray], np.ndarray]:
    """The test users (history before the test item, the test item), seeded selection."""
    from tandemrec.data import leave_one_out, load_dataset

    split = leave_one_out(load_dataset(cfg.dataset, cfg.data_dir))
    n = len(split.test_input)
    users = np.arange(n)
    if cfg.devices and cfg.devices < n:
        users = np.sort(np.random.default_rng(cfg.seed).choice(n, cfg.devices, replace=False))
    return [split.test_input[u] for u in users], split.test_target[users]


def app_catalog(bundle: Path, model: EdgeModel) -> Catalog:
    """The app's view of its items: the device bundle's table, or, for a semantic-id bundle
    (which has none), the semantic ids and popularity the cloud side of the pair holds."""
    if model.sid is None:
        return Catalog(model.popularity)
    from cloud_service.models import semantic_ids
    from tandem_contract.bundle import pair_dirs

    cloud = pair_dirs(bundle).cloud
    table = json.loads((cloud / "item_table.json").read_text())
    # The cloud's own reader: the ids it sends with its answers, checked against its intents.
    codes = semantic_ids(cloud / "codebook.json", np.asarray(table["intent"], dtype=np.int64))
    return Catalog(np.asarray(table["popularity"], dtype=np.float64), codes)


def _transport(cfg: SimConfig, target: str, key: str) -> Transport:
    if cfg.transport == "grpc":
        return GrpcTransport(target, api_key=key)
    return HttpTransport(target, api_key=key)


def simulate(cfg: SimConfig) -> tuple[dict, list[ModeRun]]:
    """Every requested mode on the same devices; returns the report and the raw runs."""
    histories, targets = held_out(cfg)
    model = EdgeModel.load(cfg.bundle)
    catalog = app_catalog(cfg.bundle, model)
    settings = EdgeSettings(policy=cfg.policy, deadline_ms=cfg.deadline_ms,
                            **cfg.edge)
    runs: list[ModeRun] = []
    with cloud(cfg) as (target, where):
        key = cfg.api_key or ("simulator" if not cfg.target else "")

        async def go() -> None:
            inner = _transport(cfg, target, key)
            try:
                for mode in cfg.modes:
                    start = time.monotonic()
                    net = FaultyTransport(inner, cfg.conditions, seed=cfg.seed, start=start)
                    runs.append(await run_mode(
                        mode, model, histories, targets, net, settings,
                        concurrency=cfg.concurrency, rate=cfg.rate,
                        feature_delay=cfg.feature_delay, start=start,
                        steps=cfg.steps if mode in ("collaborative", "edge-only") else 1,
                        catalog=catalog))
            finally:
                await inner.close()
        asyncio.run(go())
    rows = [r.row() for r in runs]
    report = {"dataset": Path(cfg.dataset).stem if Path(cfg.dataset).suffix else cfg.dataset,
              "bundle_version": model.version, "devices": len(histories),
              "student": "table" if model.sid is None else "sid",
              "transport": cfg.transport, "cloud": where,
              "network": cfg.conditions.describe(),
              "outage": list(cfg.conditions.outage) if cfg.conditions.outage else None,
              "feature_delay": cfg.feature_delay, "policy": cfg.policy,
              "deadline_ms": cfg.deadline_ms, "concurrency": cfg.concurrency,
              "rate": cfg.rate, "steps": cfg.steps, "rows": rows, "notes": notes(rows, cfg)}
    return report, runs


def notes(rows: list[dict], cfg: SimConfig) -> list[str]:
    """Plain-language comparisons the issue asks for, computed from the rows."""
    by = {r["mode"]: r for r in rows}
    out = []
    if "collaborative" in by and "cloud-full" in by:
        c, f = by["collaborative"], by["cloud-full"]
        out.append(f"Collaborative sends {c['bytes_up']:.0f} bytes per request (intent tokens "
                   f"only) against {f['bytes_up']:.0f} for cloud-full (the raw item history) "
                   f"on the same devices, and {c['raw_bytes_same_history']:.0f} for the same "
                   f"last-L history sent as item ids; NDCG@10 {c['ndcg@10']:.4f} against "
                   f"{f['ndcg@10']:.4f}"
                   + (f" with a cloud feature delay of {cfg.feature_delay} interactions."
                      if cfg.feature_delay else "."))
    if cfg.conditions.outage:
        for r in rows:
            out.append(f"{r['mode']} across the outage: {r['fallback_rate']:.1%} of requests "
                       f"served by the on-device fallback, {r['errors']} errors, slowest "
                       f"request {r['max_ms']:.1f} ms against a deadline of "
                       f"{cfg.deadline_ms:.0f} ms.")
    return out
