"""Closed-loop load clients for bench/cloud_load.py: gRPC, and HTTP over httpx or raw sockets.

Each client process runs `slots` in-flight requests on one event loop; a slot sends its next
request as soon as the previous answer arrives. Besides the answered latencies, refusals and
errors, a process reports the CPU seconds it spent, so a run can say whether the server or the
load generator bound a cell. The raw HTTP/1.1 client (one keep-alive connection per slot,
bodies encoded once) costs a fraction of httpx's CPU per request: with httpx on the same two
cores as the server, the clients took more CPU than the server they measured.
"""

from __future__ import annotations

import asyncio
import gc
import json
import multiprocessing as mp
import os
import socket
import time

import httpx
import numpy as np


class Tally:
    """One client process's outcomes: latencies of answered requests, refusals, errors.

    Only requests sent once `begin` has passed count: the warm-up before it opens the
    connections and lets the first refusals' pauses spread, so a cell measures the steady
    state rather than every slot connecting at once. `handled` counts every answer and refusal,
    warm-up included, for the CPU spent per request.
    """

    def __init__(self, begin: float, end: float, honour: bool) -> None:
        self.lat: list[float] = []
        self.refused = self.errors = self.handled = 0
        self.begin, self.end, self.honour = begin, end, honour

    def answered(self, started: float) -> None:
        """One answer to a request sent at `started` (perf_counter seconds)."""
        self.handled += 1
        if started >= self.begin:
            self.lat.append(time.perf_counter() - started)

    def error(self, started: float) -> None:
        """One request that failed otherwise than by a refusal."""
        self.errors += started >= self.begin

    async def http(self, status: int, retry_after: str | None, started: float) -> None:
        """One HTTP answer: 200 answered, 429/503 refused (with its hint), else an error."""
        if status == 200:
            self.answered(started)
        elif status in (429, 503):
            await self.refusal(retry_after, started)
        else:
            self.error(started)

    async def refusal(self, retry_after: str | None, started: float) -> None:
        """Count it; a client honouring Retry-After (or a device that fell back) pauses."""
        self.handled += 1
        self.refused += started >= self.begin
        if self.honour:
            pause = float(retry_after) if retry_after else 1.0
            await asyncio.sleep(max(0.0, min(pause, self.end - time.perf_counter())))


async def _grpc_loop(port: int, reqs: list[dict], slots: int, tally: Tally) -> None:
    import grpc

    from tandem_wire.v1 import recommend_pb2 as pb
    from tandem_wire.v1 import recommend_pb2_grpc as pb_grpc

    msgs = [pb.RecommendRequest(**r) for r in reqs]
    refusals = (grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAVAILABLE)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = pb_grpc.TandemServiceStub(channel)

        async def slot(i: int) -> None:
            while time.perf_counter() < tally.end:
                t = time.perf_counter()
                try:
                    await stub.Recommend(msgs[i % len(msgs)], timeout=10)
                    tally.answered(t)
                except grpc.aio.AioRpcError as exc:
                    # Pairs: dict() of grpc.aio's Metadata raises (it iterates as pairs).
                    trailers = exc.trailing_metadata() or ()
                    hint = next((v for k, v in trailers if k == "retry-after"), None)
                    if exc.code() in refusals and hint is not None:  # the server's own
                        await tally.refusal(str(hint), t)
                    else:
                        tally.error(t)
                i += slots
        await asyncio.gather(*(slot(i) for i in range(slots)))


async def _httpx_loop(port: int, reqs: list[dict], slots: int, tally: Tally) -> None:
    limits = httpx.Limits(max_connections=slots, max_keepalive_connections=slots)
    # Headers and body leave in separate writes: without TCP_NODELAY, Nagle's algorithm and
    # the server's delayed ACK add ~40 ms to every request.
    nodelay = httpx.AsyncHTTPTransport(
        limits=limits, socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)])
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", transport=nodelay,
                                 timeout=10) as client:

        async def slot(i: int) -> None:
            while time.perf_counter() < tally.end:
                t = time.perf_counter()
                try:
                    r = await client.post("/v1/recommend", json=reqs[i % len(reqs)])
                    await tally.http(r.status_code, r.headers.get("retry-after"), t)
                except httpx.HTTPError:
                    tally.error(t)
                i += slots
        await asyncio.gather(*(slot(i) for i in range(slots)))


def http_request(port: int, body: dict) -> bytes:
    """One POST /v1/recommend as bytes on the wire (HTTP/1.1, keep-alive)."""
    data = json.dumps(body, separators=(",", ":")).encode()
    return (f"POST /v1/recommend HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\ncontent-type: "
            f"application/json\r\ncontent-length: {len(data)}\r\n\r\n").encode() + data


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    """(status, lower-cased headers, body) of one HTTP/1.1 response with a content-length."""
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
    status = int(head[0].split(" ", 2)[1])
    headers = dict((k.strip().lower(), v.strip()) for k, _, v in
                   (line.partition(":") for line in head[1:] if line))
    if "content-length" not in headers:  # the server answers every route with a length
        raise ValueError(f"response {status} without content-length: {headers}")
    return status, headers, await reader.readexactly(int(headers["content-length"]))


async def _raw_http_loop(port: int, reqs: list[dict], slots: int, tally: Tally) -> None:
    wire = [http_request(port, r) for r in reqs]

    async def slot(i: int) -> None:
        conn: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        while time.perf_counter() < tally.end:
            t = time.perf_counter()
            try:
                if conn is None:
                    conn = await asyncio.open_connection("127.0.0.1", port)
                    conn[1].get_extra_info("socket").setsockopt(
                        socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                reader, writer = conn
                writer.write(wire[i % len(wire)])
                status, headers, _ = await asyncio.wait_for(read_response(reader), 10)
                if headers.get("connection") == "close":
                    writer.close()
                    conn = None
                await tally.http(status, headers.get("retry-after"), t)
            except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError, ValueError):
                tally.error(t)
                if conn is not None:
                    conn[1].close()
                conn = None
            i += slots
        if conn is not None:
            conn[1].close()
    await asyncio.gather(*(slot(i) for i in range(slots)))


LOOPS = {"grpc": _grpc_loop, "http": _raw_http_loop, "httpx": _httpx_loop}


def _client(args: tuple) -> tuple:
    client, port, reqs, slots, seconds, warmup, honour = args
    # What this process holds now lives to its end: a full collection over it would stall
    # every slot at once, and that pause would be counted as the server's latency.
    gc.freeze()
    begin = time.perf_counter() + warmup
    tally = Tally(begin, begin + seconds, honour)
    cpu = time.process_time()
    asyncio.run(LOOPS[client](port, reqs, slots, tally))
    return (tally.lat, tally.refused, tally.errors, time.process_time() - cpu,
            tally.handled)


def drive(client: str, port: int, reqs: list[dict], concurrency: int, seconds: float,
          processes: int, honour: bool = True, warmup: float = 0.0) -> dict:
    """Closed loop at `concurrency` in-flight requests spread over client processes.

    `client`: grpc, http (raw sockets) or httpx. The loop runs `warmup` seconds unmeasured,
    then `seconds` measured. Returns req/s, p50 and p99 of answered requests, refusals and
    errors (all of the measured part), `handled` (answers and refusals, warm-up included) and
    the clients' CPU seconds over the whole loop.
    """
    procs = max(1, min(processes, concurrency))
    shares = [concurrency // procs + (i < concurrency % procs) for i in range(procs)]
    jobs = [(client, port, reqs[i::procs], s, seconds, warmup, honour)
            for i, s in enumerate(shares)]
    with mp.get_context("spawn").Pool(procs) as pool:
        parts = pool.map(_client, jobs)
    lat = np.concatenate([np.asarray(p[0]) for p in parts]) * 1000
    return {"rps": round(len(lat) / seconds, 1),
            "p50_ms": round(float(np.percentile(lat, 50)), 2) if len(lat) else None,
            "p99_ms": round(float(np.percentile(lat, 99)), 2) if len(lat) else None,
            "refused": int(sum(p[1] for p in parts)), "errors": int(sum(p[2] for p in parts)),
            "requests": int(len(lat)), "handled": int(sum(p[4] for p in parts)),
            "client_cpu_s": round(sum(p[3] for p in parts), 3)}


def process_cpu_s(pid: int) -> float | None:
    """CPU seconds (user + system) a process has used so far; None off Linux."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()  # the name may hold spaces
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
