"""Benchmark: cloud throughput and tail latency, gRPC against HTTP, micro-batching on and off.

Starts `tandem serve` on a bundle (once with micro-batching, once without), then drives it
from separate client processes in a closed loop (each in-flight slot sends its next request as
soon as the previous answer arrives) at each concurrency. Requests are collaborative requests
built from real held-out users: the intent tokens of their recent items, never item ids.
Writes bench/results/cloud-load.{json,md}.

    python bench/cloud_load.py [--bundle artifacts/ml-1m/bundle] [--seconds 8]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import socket
import subprocess
import time
from pathlib import Path

import httpx
import numpy as np

from tandemrec.paths import REPO_ROOT, artifacts_dir
from tandemrec.sim.run import start_cloud_process

RESULTS = REPO_ROOT / "bench" / "results"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def build_requests(bundle: Path, dataset: str, n: int = 2000, top_m: int = 8,
                   coarse_len: int = 50) -> list[dict]:
    """Requests as devices would send them: top intents of recent items and a coarse history."""
    from tandem_contract.bundle import pair_dirs
    from tandemrec.data import leave_one_out, load_dataset

    table = pair_dirs(bundle).cloud / "item_table.json"
    intent = np.asarray(json.loads(table.read_text())["intent"])
    split = leave_one_out(load_dataset(dataset))
    out = []
    for u, hist in enumerate(split.test_input[:n]):
        recent = intent[hist[-20:]]
        tokens, counts = np.unique(recent, return_counts=True)
        order = np.argsort(-counts)[:top_m]
        out.append({"device_id": f"bench-{u}", "intent_tokens": tokens[order].tolist(),
                    "intent_weights": (counts[order] / counts[order].sum()).round(4).tolist(),
                    "coarse_history": intent[hist[-coarse_len:]].tolist(), "k": 100})
    return out


async def _grpc_loop(port: int, reqs: list[dict], slots: int, seconds: float) -> tuple:
    import grpc

    from tandem_wire.v1 import recommend_pb2 as pb
    from tandem_wire.v1 import recommend_pb2_grpc as pb_grpc

    msgs = [pb.RecommendRequest(**r) for r in reqs]
    lat: list[float] = []
    errors = 0
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = pb_grpc.TandemServiceStub(channel)
        end = time.perf_counter() + seconds

        async def slot(i: int) -> None:
            nonlocal errors
            while time.perf_counter() < end:
                t = time.perf_counter()
                try:
                    await stub.Recommend(msgs[i % len(msgs)], timeout=10)
                    lat.append(time.perf_counter() - t)
                except grpc.RpcError:
                    errors += 1
                i += slots
        await asyncio.gather(*(slot(i) for i in range(slots)))
    return lat, errors


async def _http_loop(port: int, reqs: list[dict], slots: int, seconds: float) -> tuple:
    lat: list[float] = []
    errors = 0
    limits = httpx.Limits(max_connections=slots, max_keepalive_connections=slots)
    # Headers and body leave in separate writes: without TCP_NODELAY, Nagle's algorithm and
    # the server's delayed ACK add ~40 ms to every request.
    nodelay = httpx.AsyncHTTPTransport(
        limits=limits, socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)])
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", transport=nodelay,
                                 timeout=10) as client:
        end = time.perf_counter() + seconds

        async def slot(i: int) -> None:
            nonlocal errors
            while time.perf_counter() < end:
                t = time.perf_counter()
                try:
                    r = await client.post("/v1/recommend", json=reqs[i % len(reqs)])
                    if r.status_code == 200:
                        lat.append(time.perf_counter() - t)
                    else:
                        errors += 1
                except httpx.HTTPError:
                    errors += 1
                i += slots
        await asyncio.gather(*(slot(i) for i in range(slots)))
    return lat, errors


def _client(args: tuple) -> tuple:
    transport, port, reqs, slots, seconds = args
    loop = _grpc_loop if transport == "grpc" else _http_loop
    return asyncio.run(loop(port, reqs, slots, seconds))


def drive(transport: str, port: int, reqs: list[dict], concurrency: int, seconds: float,
          processes: int) -> dict:
    """Closed loop at `concurrency` in-flight requests spread over client processes."""
    procs = max(1, min(processes, concurrency))
    shares = [concurrency // procs + (i < concurrency % procs) for i in range(procs)]
    jobs = [(transport, port, reqs[i::procs], s, seconds) for i, s in enumerate(shares)]
    with mp.get_context("spawn").Pool(procs) as pool:
        parts = pool.map(_client, jobs)
    lat = np.concatenate([np.asarray(p[0]) for p in parts]) * 1000
    errors = sum(p[1] for p in parts)
    return {"rps": round(len(lat) / seconds, 1),
            "p50_ms": round(float(np.percentile(lat, 50)), 2) if len(lat) else None,
            "p99_ms": round(float(np.percentile(lat, 99)), 2) if len(lat) else None,
            "errors": int(errors), "requests": int(len(lat))}


def start_server(bundle: Path, batching: bool, threads: int) -> tuple[subprocess.Popen, int, int]:
    env = {"TANDEM_CLOUD_BATCHING": str(batching).lower(), "TANDEM_CLOUD_CACHE_TTL_S": "0",
           "TANDEM_CLOUD_RATE_BURST": "100000000", "TANDEM_CLOUD_RATE_PER_S": "100000000",
           "TANDEM_CLOUD_TORCH_THREADS": str(threads)}
    return start_cloud_process(bundle, env, auth=False)


def markdown(report: dict) -> str:
    lines = [f"# Cloud load: {report['bundle_dataset']} bundle {report['bundle_version']}", "",
             f"Machine: {report['machine']['cpu']}, {report['machine']['cores']} cores. "
             f"Closed loop, {report['seconds']} s per cell, clients in "
             f"{report['client_processes']} separate processes on the same machine.", "",
             "| transport | batching | torch threads | concurrency | req/s | p50 ms | p99 ms |"
             " errors | batched/unbatched |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in report["rows"]:
        ratio = r.get("speedup_vs_unbatched")
        lines.append(f"| {r['transport']} | {'on' if r['batching'] else 'off'} | "
                     f"{r['server_threads']} | {r['concurrency']} | {r['rps']} | {r['p50_ms']} | "
                     f"{r['p99_ms']} | {r['errors']} | {f'{ratio:.2f}x' if ratio else ''} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bundle", type=Path, default=artifacts_dir() / "ml-1m" / "bundle")
    p.add_argument("--dataset", default="", help="default: the bundle's dataset")
    p.add_argument("--seconds", type=float, default=8.0)
    p.add_argument("--concurrency", default="1,8,32,64")
    p.add_argument("--transports", default="grpc,http")
    p.add_argument("--client-processes", type=int, default=2)
    p.add_argument("--server-threads", type=int, default=1, help="the server's default")
    p.add_argument("--compare-threads", type=int, default=2,
                   help="also run gRPC, batched, concurrency 32 with this many torch threads "
                        "(0 = skip)")
    p.add_argument("--out", type=Path, default=RESULTS)
    a = p.parse_args()
    from tandem_contract.bundle import read_pair
    from tandemrec.eval.report import machine

    manifest = read_pair(a.bundle)[1]
    reqs = build_requests(a.bundle, a.dataset or manifest["dataset"])
    rows = []
    cells = [(b, a.server_threads, a.transports.split(","), a.concurrency) for b in (True, False)]
    if a.compare_threads:
        cells.append((True, a.compare_threads, ["grpc"], "32"))
    for batching, threads, transports, concurrency in cells:
        proc, http, grpc_port = start_server(a.bundle, batching, threads)
        try:
            for transport in transports:
                port = grpc_port if transport == "grpc" else http
                drive(transport, port, reqs, 4, 2.0, a.client_processes)  # warm-up
                for c in (int(x) for x in concurrency.split(",")):
                    row = {"transport": transport, "batching": batching,
                           "server_threads": threads, "concurrency": c,
                           **drive(transport, port, reqs, c, a.seconds, a.client_processes)}
                    print(json.dumps(row), flush=True)
                    rows.append(row)
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    for r in rows:
        if r["batching"] and r["server_threads"] == a.server_threads:
            base = next(b for b in rows if not b["batching"] and
                        b["transport"] == r["transport"] and b["concurrency"] == r["concurrency"])
            r["speedup_vs_unbatched"] = round(r["rps"] / base["rps"], 2) if base["rps"] else None
    report = {"machine": machine(), "bundle_version": manifest["version"],
              "bundle_dataset": manifest["dataset"], "seconds": a.seconds,
              "client_processes": a.client_processes, "server_torch_threads": a.server_threads,
              "request": "collaborative, 8 intent tokens, 50-token coarse history, k=100",
              "rows": rows}
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "cloud-load.json").write_text(json.dumps(report, indent=2) + "\n")
    (a.out / "cloud-load.md").write_text(markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
