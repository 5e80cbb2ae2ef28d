"""Benchmark: cloud throughput and tail latency, gRPC against HTTP, micro-batching on and off.

Starts `tandem serve` on a bundle (one with micro-batching, one without), then drives them
from separate client processes in a closed loop (each in-flight slot sends its next request as
soon as the previous answer arrives) at each concurrency. Requests are collaborative requests
built from real held-out users: the intent tokens of their recent items, never item ids.
Refusals (HTTP 503/429, gRPC RESOURCE_EXHAUSTED/UNAVAILABLE with a retry hint) are counted
apart from errors; req/s, p50 and p99 are those of answered requests. Each cell also records
the CPU time the server process and the client processes spent per request (the clients run on
the same cores: a cell whose clients cost as much as the server measures both). HTTP is driven
by a raw HTTP/1.1 client by default (bench/load_clients.py; --http-client httpx for the client
of earlier runs). Writes
bench/results/cloud-load.{json,md} (--out to write them elsewhere).

With --baseline REV the same cells are also served by REV's code: a `git worktree add
--detach` of REV under a temporary directory (removed at the end), its `tandem serve` started
from there with PYTHONPATH set to it and this venv. Both servers run side by side, idle but
for the one being measured, and within each cell the two take turns going first, so machine
noise hits both alike; rows carry "code": "baseline" or "current" and the table gives
current/baseline per cell. The batched and unbatched servers likewise run side by side.

    python bench/cloud_load.py [--bundle artifacts/ml-1m/bundle] [--seconds 8] [--repeats 3]
    python bench/cloud_load.py --baseline cb9ae40 --concurrency 1 32 --transports grpc
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from load_clients import drive, process_cpu_s

from tandemrec.paths import REPO_ROOT, artifacts_dir
from tandemrec.sim.run import start_cloud_process

RESULTS = REPO_ROOT / "bench" / "results"


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


def start_server(bundle: Path, batching: bool, threads: int, code: Path,
                 extra_env: dict[str, str]) -> tuple[subprocess.Popen, int, int]:
    """`tandem serve` from the code in `code` (this checkout or the baseline's worktree)."""
    env = {"TANDEM_CLOUD_BATCHING": str(batching).lower(), "TANDEM_CLOUD_CACHE_TTL_S": "0",
           "TANDEM_CLOUD_RATE_BURST": "100000000", "TANDEM_CLOUD_RATE_PER_S": "100000000",
           **({"TANDEM_CLOUD_TORCH_THREADS": str(threads)} if threads else {}), **extra_env,
           "PYTHONPATH": str(code)}
    with in_directory(code):  # `python -m` puts the working directory first on sys.path
        return start_cloud_process(bundle, env, auth=False)


@contextlib.contextmanager
def in_directory(path: Path) -> Iterator[None]:
    before = Path.cwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(before)


def imports_from(code: Path) -> str:
    """Where a server started from `code` imports the cloud service from (a sanity check)."""
    with in_directory(code):
        out = subprocess.run([sys.executable, "-c", "import cloud_service; print("
                              "cloud_service.__file__)"], env={**os.environ, "PYTHONPATH":
                             str(code)}, capture_output=True, text=True, check=True)
    return str(Path(out.stdout.strip()).parent.parent)


@contextlib.contextmanager
def worktree(rev: str) -> Iterator[tuple[Path, str]]:
    """A detached git worktree of `rev` under a temporary directory, removed afterwards."""
    tmp = Path(tempfile.mkdtemp(prefix="tandem-baseline-"))
    path = tmp / "src"
    git = ["git", "-C", str(REPO_ROOT)]
    subprocess.run([*git, "worktree", "add", "--detach", str(path), rev], check=True,
                   capture_output=True)
    try:
        yield path, git_commit(path)
    finally:
        subprocess.run([*git, "worktree", "remove", "--force", str(path)], check=False,
                       capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)


def git_commit(path: Path) -> str:
    out = subprocess.run(["git", "-C", str(path), "rev-parse", "HEAD"], check=True,
                         capture_output=True, text=True)
    dirty = subprocess.run(["git", "-C", str(path), "status", "--porcelain",
                            "--untracked-files=no"], capture_output=True, text=True).stdout
    return out.stdout.strip() + ("+uncommitted changes" if dirty.strip() else "")


def markdown(report: dict) -> str:
    head = [f"# Cloud load: {report['bundle_dataset']} bundle {report['bundle_version']}", "",
            f"Machine: {report['machine']['cpu']}, {report['machine']['cores']} cores. "
            f"Closed loop, {report['seconds']} s per cell"
            + (f" after {report['warmup']} s unmeasured" if report.get("warmup") else "")
            + (f", the median of {report['repeats']} runs" if report.get("repeats", 1) > 1
               else "") + ", clients in "
            f"{report['client_processes']} separate processes on the same machine; refused "
            f"requests (503, RESOURCE_EXHAUSTED) {report['on_refusal']}. Latencies are those "
            f"of answered requests. HTTP client: {_client_name(report)}. CPU "
            "ms/req: CPU time of the server process and of the client processes over the "
            "cell, per answered or refused request. Teacher threads \"default\": each code's "
            "own (1 up to cb9ae40, one per CPU since; torch before 1c5bd67, ONNX Runtime "
            "from it).", ""]
    rows = report["rows"]
    if "baseline" not in report:
        head += ["| transport | batching | teacher threads | concurrency | req/s | p50 ms |"
                 " p99 ms | refused | errors | batched/unbatched | CPU ms/req server / clients |",
                 "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for r in rows:
            ratio = r.get("speedup_vs_unbatched")
            head.append(f"| {_cell(r)} | {r['rps']} | {r['p50_ms']} | {r['p99_ms']} | "
                        f"{r['refused']} | {r['errors']} | {_ratio(ratio)} | "
                        f"{_cpu(r)} |")
        return "\n".join(head + _overload(rows, report["server_torch_threads"])) + "\n"
    b = report["baseline"]
    head += [f"Baseline: {b['rev']} ({_short(b['commit'])}), current: "
             f"{_short(report['current']['commit'])}; each cell ran on both, the two taking "
             "turns going first.",
             "", "| transport | batching | teacher threads | concurrency | req/s current | req/s "
             "baseline | current/baseline | p50 ms cur / base | p99 ms cur / base | refused "
             "cur / base | errors cur / base | server CPU ms/req cur / base | batched/unbatched "
             "cur |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: "
             "| ---: |"]
    for cur in (r for r in rows if r["code"] == "current"):
        base = _twin(rows, cur, code="baseline")
        ratio = f"{cur['rps'] / base['rps']:.2f}x" if base["rps"] else ""
        head.append(f"| {_cell(cur)} | {cur['rps']} | {base['rps']} | {ratio} | "
                    + " | ".join(f"{cur.get(k)} / {base.get(k)}" for k in
                                 ("p50_ms", "p99_ms", "refused", "errors",
                                  "server_cpu_ms_per_req"))
                    + f" | {_ratio(cur.get('speedup_vs_unbatched'))} |")
    return "\n".join(head + _overload(rows, report["server_torch_threads"])) + "\n"


def _overload(rows: list[dict], threads: int) -> list[str]:
    """Under overload, per transport (this code, batched): tail spread and share of the best."""
    out = ["", "Overload, this code, batched: p99 over p50, and req/s over the best "
           "concurrency's.", "", "| transport | concurrency | p99 / p50 | req/s / best | "
           "p99 current / baseline |", "| --- | ---: | ---: | ---: | ---: |"]
    for transport in ("grpc", "http"):
        mine = [r for r in rows if r["transport"] == transport and r["batching"]
                and r["code"] == "current" and r["server_threads"] == threads and r["rps"]]
        if not mine:
            continue
        best = max(r["rps"] for r in mine)
        for r in (r for r in mine if r["concurrency"] >= 64):
            base = _twin(rows, r, code="baseline", missing_ok=True)
            vs = f"{r['p99_ms'] / base['p99_ms']:.2f}x" if base and base["p99_ms"] else ""
            out.append(f"| {transport} | {r['concurrency']} | {r['p99_ms'] / r['p50_ms']:.2f}x | "
                       f"{r['rps'] / best:.2f} | {vs} |")
    return out


def _client_name(report: dict) -> str:
    client = report.get("http_client", "httpx")
    return "raw HTTP/1.1, a keep-alive socket per slot" if client == "http" else client


def _ratio(x: float | None) -> str:
    return f"{x:.2f}x" if x else ""


def _cpu(r: dict) -> str:
    return f"{r.get('server_cpu_ms_per_req')} / {r.get('client_cpu_ms_per_req')}"


def _short(commit: str) -> str:
    sha, _, rest = commit.partition("+")
    return sha[:12] + (f" with {rest}" if rest else "")


def _cell(r: dict) -> str:
    threads = r["server_threads"] or "default"
    return (f"{r['transport']} | {'on' if r['batching'] else 'off'} | {threads} | "
            f"{r['concurrency']}")


def _twin(rows: list[dict], row: dict, missing_ok: bool = False, **change: object) -> dict:
    """The row of the same cell with `change` applied (the other code, or unbatched); with
    `missing_ok`, {} when the run has no such row (no baseline)."""
    want = {**{k: row[k] for k in ("transport", "batching", "server_threads", "concurrency",
                                   "code")}, **change}
    found = (r for r in rows if all(r[k] == v for k, v in want.items()))
    return next(found, {}) if missing_ok else next(found)


def cell(client: str, pid: int, port: int, reqs: list[dict], concurrency: int,
         a: argparse.Namespace) -> dict:
    """One closed-loop run, with the CPU the server and the clients spent per answered request."""
    before = process_cpu_s(pid)
    out = drive(client, port, reqs, concurrency, a.seconds, a.client_processes,
                a.on_refusal == "pause", a.warmup)
    after = process_cpu_s(pid)
    n = max(1, out.pop("handled"))
    out["server_cpu_ms_per_req"] = (round(1000 * (after - before) / n, 3)
                                    if before is not None and after is not None else None)
    out["client_cpu_ms_per_req"] = round(1000 * out.pop("client_cpu_s") / n, 3)
    return out


def median_cell(runs: list[dict]) -> dict:
    """One row from a cell's repeats: the median of each figure (a single run: itself), and
    with several, every run's req/s and p99 (`rps_runs`, `p99_runs`) for the spread."""
    if len(runs) == 1:
        return runs[0]
    out: dict = {}
    for key in runs[0]:
        values = [r[key] for r in runs if r[key] is not None]
        out[key] = round(float(np.median(values)), 3) if values else None
    for key in ("refused", "errors", "requests"):
        out[key] = int(sum(r[key] for r in runs))  # counts: over all repeats
    out["rps_runs"] = [r["rps"] for r in runs]
    out["p99_runs"] = [r["p99_ms"] for r in runs]
    return out


def measure(a: argparse.Namespace, reqs: list[dict], codes: list[tuple[str, Path]]) -> list[dict]:
    """Every cell on every server; within a cell the servers take turns going first.

    The batched and the unbatched server of each code run side by side like the two codes, so
    batched/unbatched is measured in the same minute too, not a configuration apart.
    """
    groups = [(a.server_threads, a.transports, a.concurrency,
               [(name, code, b == "on") for b in a.batching for name, code in codes])]
    if a.compare_threads:
        groups.append((a.compare_threads, a.transports, [32], [(n, c, True) for n, c in codes]))
    rows: list[dict] = []
    for threads, transports, concurrency, servers in groups:
        rows += _group(a, reqs, threads, transports, concurrency, servers)
    for r in rows:
        if r["batching"] and r["server_threads"] == a.server_threads and "off" in a.batching:
            base = _twin(rows, r, batching=False)
            r["speedup_vs_unbatched"] = round(r["rps"] / base["rps"], 2) if base["rps"] else None
        if r["code"] == "current" and len(codes) > 1:
            base = _twin(rows, r, code="baseline")
            r["vs_baseline_rps"] = round(r["rps"] / base["rps"], 2) if base["rps"] else None
    return rows


def _group(a: argparse.Namespace, reqs: list[dict], threads: int, transports: list[str],
           concurrency: list[int], wanted: list[tuple[str, Path, bool]]) -> list[dict]:
    """Start the servers of `wanted` (code name, checkout, batching) and run their cells."""
    extra_env = dict(kv.split("=", 1) for kv in a.server_env)
    servers: dict[tuple[str, bool], tuple[subprocess.Popen, int, int]] = {}
    rows = []
    try:
        for name, code, batching in wanted:
            servers[name, batching] = start_server(a.bundle, batching, threads, code, extra_env)
        for transport in transports:
            client = "grpc" if transport == "grpc" else a.http_client
            port = {k: srv[2 if transport == "grpc" else 1] for k, srv in servers.items()}
            for k in servers:
                drive(client, port[k], reqs, 4, 2.0, a.client_processes)  # warm-up
            for turn, c in enumerate(concurrency):
                keys = list(servers)
                runs: dict[tuple[str, bool], list[dict]] = {k: [] for k in keys}
                for rep in range(a.repeats):  # each repeat starts from the next server
                    first = (turn + rep) % len(keys)
                    for k in keys[first:] + keys[:first]:
                        runs[k].append(cell(client, servers[k][0].pid, port[k], reqs, c, a))
                        print(json.dumps({"server": list(k), "transport": transport,
                                          "concurrency": c,
                                          **runs[k][-1]}), flush=True)
                for (name, batching), done in runs.items():
                    rows.append({"code": name, "transport": transport, "batching": batching,
                                 "server_threads": threads, "concurrency": c,
                                 **median_cell(done)})
    finally:
        for proc, _, _ in servers.values():
            proc.terminate()
            proc.wait(timeout=30)
    return rows


def _words(values: list[str]) -> list[str]:
    return [w for v in values for w in v.split(",") if w]  # "1 8" and the older "1,8" alike


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--bundle", type=Path, default=artifacts_dir() / "ml-1m" / "bundle",
                   help="bundle pair directory (default: artifacts/ml-1m/bundle)")
    p.add_argument("--dataset", default="", help="default: the bundle's dataset")
    p.add_argument("--seconds", type=float, default=8.0, help="closed loop per cell, measured")
    p.add_argument("--warmup", type=float, default=1.0,
                   help="seconds each cell runs before it is measured: connections open and "
                        "the first refusals' pauses spread (CPU per request counts them)")
    p.add_argument("--repeats", type=int, default=1,
                   help="runs of each cell per server, taking turns; rows give the median "
                        "(a 5 s cell's p99 moves with a single stall of the machine)")
    p.add_argument("--concurrency", nargs="+", default=["1", "8", "32", "64", "128"], metavar="N",
                   help="requests in flight per cell (default: 1 8 32 64 128)")
    p.add_argument("--transports", nargs="+", default=["grpc", "http"], metavar="T",
                   help="grpc, http or both (default: both)")
    p.add_argument("--batching", nargs="+", default=["on", "off"], metavar="ON_OFF",
                   help="micro-batching on, off or both (default: both)")
    p.add_argument("--http-client", choices=["http", "httpx"], default="http",
                   help="http: raw HTTP/1.1 over one keep-alive socket per slot (the default: "
                        "it leaves the cores to the server); httpx: the httpx client of "
                        "earlier runs")
    p.add_argument("--client-processes", type=int, default=2,
                   help="processes the load is driven from (default: 2)")
    p.add_argument("--server-threads", type=int, default=0,
                   help="the servers' teacher threads (default 0: each code's own default; "
                        "cb9ae40 and earlier: 1, now one per CPU)")
    p.add_argument("--compare-threads", type=int, default=1,
                   help="also run gRPC and HTTP, batched, concurrency 32 with this many teacher "
                        "threads (0 = skip)")
    p.add_argument("--baseline", metavar="REV", default="",
                   help="also serve every cell from a git worktree of REV (a commit, tag or "
                        "branch) and compare: current/baseline per cell")
    p.add_argument("--on-refusal", choices=["pause", "retry"], default="pause",
                   help="pause: a refused slot waits out Retry-After, as a client honouring it "
                        "or a device that fell back would; retry: it asks again at once")
    p.add_argument("--server-env", nargs="*", default=[], metavar="KEY=VALUE",
                   help="extra environment for both servers, e.g. "
                        "TANDEM_CLOUD_HTTP_MAX_INFLIGHT=64 (a baseline ignores unknown ones)")
    p.add_argument("--out", type=Path, default=RESULTS, help="default: bench/results")
    a = p.parse_args()
    if a.repeats < 1:
        p.error("--repeats must be at least 1")
    a.concurrency = [int(c) for c in _words(a.concurrency)]
    a.transports, a.batching = _words(a.transports), _words(a.batching)
    if not set(a.transports) <= {"grpc", "http"} or not set(a.batching) <= {"on", "off"}:
        p.error("--transports takes grpc and/or http; --batching on and/or off")
    a.bundle = a.bundle.resolve()  # the servers run from other directories
    a.out = a.out.resolve()
    return a


def main() -> None:
    a = parse_args()
    from tandem_contract.bundle import read_pair
    from tandemrec.eval.report import machine

    manifest = read_pair(a.bundle)[1]
    reqs = build_requests(a.bundle, a.dataset or manifest["dataset"])
    report: dict = {"machine": machine(), "bundle_version": manifest["version"],
                    "bundle_dataset": manifest["dataset"], "seconds": a.seconds,
                    "warmup": a.warmup, "client_processes": a.client_processes,
                    "http_client": a.http_client,
                    "repeats": a.repeats,
                    "server_torch_threads": a.server_threads, "server_env": a.server_env,
                    "on_refusal": ("paused for their Retry-After" if a.on_refusal == "pause"
                                   else "retried at once"),
                    "request": "collaborative, 8 intent tokens, 50-token coarse history, k=100",
                    "current": {"commit": git_commit(REPO_ROOT),
                                "imports_from": imports_from(REPO_ROOT)}}
    with contextlib.ExitStack() as stack:
        codes = [("current", REPO_ROOT)]
        if a.baseline:
            path, commit = stack.enter_context(worktree(a.baseline))
            report["baseline"] = {"rev": a.baseline, "commit": commit,
                                  "imports_from": imports_from(path)}
            codes.insert(0, ("baseline", path))
        report["rows"] = measure(a, reqs, codes)
    a.out.mkdir(parents=True, exist_ok=True)
    name = "cloud-load"
    (a.out / f"{name}.json").write_text(json.dumps(report, indent=2) + "\n")
    (a.out / f"{name}.md").write_text(markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
