"""Benchmark: on-device compute per recommendation (student + request + fusion), one thread.

For held-out users of the bundle's dataset: the int8 student reads the history (ONNX Runtime,
one thread, as on a phone), the upstream request is built, and the cloud's candidates (here
the catalog's most popular items, as many as the bundle asks for) are fused with the student's
scores. Reports p50/p99 of each part and of the whole (wall clock), and the p50 of the thread's
CPU time, which other load on the machine disturbs less. Writes
bench/results/edge-compute.{json,md}.

The student is the one this checkout ships: when the bundle's run directory holds the
compressed student (student_svd.pt), it is exported and quantised with this checkout's
tandemrec.train.export, and its ONNX parity against torch is checked; otherwise (or with
--bundle-student) the bundle's student_int8.onnx runs as it is.

With --baseline REV the same requests also run on REV's code: a `git worktree add --detach`
of REV, imported through PYTHONPATH by worker processes of this venv (removed afterwards). Each
side exports its own student; a worker process runs one side over one block of users, and the
sides alternate block by block, the one that goes first swapped every block. Rows carry `code`
("current" or "baseline"); the report gives current/baseline per part and whether both sides
computed the same student scores, requests and fused rankings, request by request.

    python bench/edge_compute.py [--bundle artifacts/ml-1m/bundle] [--requests 1000]
        [--baseline REV] [--rounds 2] [--block 250] [--bundle-student]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve()
ROOT = HERE.parents[1]
PARTS = ("student", "request", "fusion", "total")
WARMUP = 50
PARITY_HISTORIES = 200


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--worker":
        return worker(json.loads(sys.argv[2]))
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--bundle", type=Path, default=None,
                   help="a bundle or its device/ side (default: artifacts/ml-1m/bundle)")
    p.add_argument("--requests", type=int, default=1000, help="held-out users, one request each")
    p.add_argument("--rounds", type=int, default=0,
                   help="passes over the users per side (default 2 with --baseline, else 1)")
    p.add_argument("--block", type=int, default=250,
                   help="users per worker process: the sides alternate block by block")
    p.add_argument("--baseline", metavar="REV", default="",
                   help="also run REV's code (a commit, tag or branch) and compare")
    p.add_argument("--bundle-student", action="store_true",
                   help="run the bundle's student_int8.onnx on every side, never re-exported")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results",
                   help="where edge-compute.{json,md} go (default: bench/results)")
    a = p.parse_args()
    from tandem_contract.bundle import device_dir
    from tandemrec.data import leave_one_out, load_dataset
    from tandemrec.eval.report import machine
    from tandemrec.paths import artifacts_dir

    device = device_dir(a.bundle or artifacts_dir() / "ml-1m" / "bundle")
    manifest = json.loads((device / "manifest.json").read_text())
    run = None if a.bundle_student else next(  # the run the bundle came from, if it is there
        (d for d in list(device.parents)[:2] if (d / "student_svd.pt").exists()), None)
    users = leave_one_out(load_dataset(manifest["dataset"])).test_input[: a.requests]
    rounds = a.rounds or (2 if a.baseline else 1)
    with tempfile.TemporaryDirectory(prefix="edge-compute-") as tmp:
        work = Path(tmp)
        histories = work / "histories.npz"
        np.savez(histories, items=np.concatenate(users),
                 ends=np.cumsum([len(h) for h in users]))
        sides = {"current": ROOT}
        try:
            if a.baseline:
                sides["baseline"] = add_worktree(a.baseline, work / "baseline-src")
            setups = {code: setup(code, root, device, run, histories, work / f"{code}-bundle")
                      for code, root in sides.items()}
            samples = measure(sides, setups, histories, rounds, len(users), a.block)
        finally:
            if "baseline" in sides:
                subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force",
                                str(sides["baseline"])], check=False, capture_output=True)
    report = summarise(samples, setups)
    report.update({"machine": machine(), "bundle_version": manifest["version"],
                   "dataset": manifest["dataset"], "requests": len(users), "rounds": rounds,
                   "block": a.block,
                   "threads": 1, "student_source": (
                       f"{run.name}/student_svd.pt exported by each side's code" if run
                       else "the bundle's student_int8.onnx"),
                   "baseline": ({"rev": a.baseline, "commit": commit(a.baseline)}
                                if a.baseline else None)})
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "edge-compute.json").write_text(json.dumps(report, indent=2) + "\n")
    md = markdown(report)
    (a.out / "edge-compute.md").write_text(md)
    print(md, end="")


def add_worktree(rev: str, path: Path) -> Path:
    """A detached git worktree of `rev` at `path` (main removes it when done)."""
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(path), rev],
                   check=True, capture_output=True)
    return path


def commit(rev: str) -> str:
    return subprocess.run(["git", "-C", str(ROOT), "rev-parse", f"{rev}^{{commit}}"],
                          check=True, capture_output=True, text=True).stdout.strip()


def run_worker(root: Path, job: dict) -> dict:
    """This script as a worker process that imports the code under `root`, on one thread."""
    env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1",
           "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, str(HERE), "--worker", json.dumps(job)], env=env,
                         check=True, capture_output=True, text=True)
    return json.loads(out.stdout.splitlines()[-1])


def setup(code: str, root: Path, device: Path, run: Path | None, histories: Path,
          work: Path) -> dict:
    """A device bundle for one side: the bundle's files with the student its code ships."""
    work.mkdir(parents=True)
    for name in ("manifest.json", "device_items.json"):
        shutil.copy2(device / name, work / name)
    if run is None:
        shutil.copy2(device / "student_int8.onnx", work / "student_int8.onnx")
        return {"bundle": str(work), "parity": None,
                "student_file_bytes": (work / "student_int8.onnx").stat().st_size}
    print(f"{code}: exporting {run / 'student_svd.pt'} with {root}", file=sys.stderr)
    return {"bundle": str(work), **run_worker(root, {
        "task": "export", "run": str(run), "out": str(work), "histories": str(histories)})}


def measure(sides: dict[str, Path], setups: dict[str, dict], histories: Path, rounds: int,
            users: int, block: int) -> dict[str, list[dict]]:
    """Every side over every user, `rounds` times, a block of users per worker process; the
    sides alternate block by block, the one that goes first swapped every block."""
    samples: dict[str, list[dict]] = {code: [] for code in sides}
    starts = range(0, users, block)
    for r in range(rounds):
        for b, start in enumerate(starts):
            step = r * len(starts) + b
            for code in (list(sides) if step % 2 == 0 else list(sides)[::-1]):
                print(f"round {r + 1}/{rounds}, users {start}-{min(start + block, users)}: "
                      f"{code}", file=sys.stderr)
                samples[code].append(run_worker(sides[code], {
                    "task": "measure", "bundle": setups[code]["bundle"],
                    "histories": str(histories), "start": start, "stop": start + block}))
    return samples


def summarise(samples: dict[str, list[dict]], setups: dict[str, dict]) -> dict:
    rows, where = [], {}
    for code, runs in samples.items():
        for part in PARTS:
            wall = np.concatenate([r["wall_ms"][part] for r in runs])
            rows.append({"code": code, "part": part,
                         "p50_ms": round(float(np.percentile(wall, 50)), 3),
                         "p99_ms": round(float(np.percentile(wall, 99)), 3),
                         "cpu_p50_ms": round(float(np.median(np.concatenate(
                             [r["cpu_ms"][part] for r in runs]))), 3)})
        where[code] = runs[0]["imported_from"]
    report: dict[str, Any] = {"rows": rows, "imported_from": where, "sides": {
        code: {k: v for k, v in s.items() if k != "bundle"} for code, s in setups.items()}}
    if "baseline" in samples:
        p50 = {(r["code"], r["part"]): r for r in rows}
        report["current_over_baseline"] = {
            part: {key: round(p50["current", part][key] / p50["baseline", part][key], 3)
                   for key in ("p50_ms", "cpu_p50_ms")} for part in PARTS}
        same = {part: [c == b for cur, base in zip(samples["current"], samples["baseline"],
                                                       strict=True)
                       for c, b in zip(cur["digests"][part], base["digests"][part], strict=True)]
                for part in PARTS[:3]}
        report["identical_outputs"] = {part: f"{sum(v)}/{len(v)}" for part, v in same.items()}
    return report


def markdown(report: dict) -> str:
    m, sides = report["machine"], report["sides"]
    lines = [f"# On-device compute per request: {report['dataset']} bundle "
             f"{report['bundle_version']}", "",
             f"Machine: {m['cpu']}, {m['cores']} cores, ONNX Runtime {m['onnxruntime']} on 1 "
             f"thread; {report['requests']} held-out users, {report['rounds']} pass(es) over "
             f"them per side, {report['student_source']}."]
    base = report.get("baseline")
    by = {(r["code"], r["part"]): r for r in report["rows"]}
    if base:
        lines[-1] += (f" Baseline: `{base['rev']}` ({base['commit'][:12]}), run from a git "
                      f"worktree, alternating with this checkout every {report['block']} "
                      "users.")
        ratio = report["current_over_baseline"]
        lines += ["", "| part | current p50 ms | p99 ms | baseline p50 ms | p99 ms | "
                  "current/baseline p50 | CPU time p50 ratio |",
                  "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
        lines += [f"| {part} | {by['current', part]['p50_ms']} | {by['current', part]['p99_ms']}"
                  f" | {by['baseline', part]['p50_ms']} | {by['baseline', part]['p99_ms']} | "
                  f"{ratio[part]['p50_ms']}x | {ratio[part]['cpu_p50_ms']}x |" for part in PARTS]
        same = report["identical_outputs"]
        lines += ["", "Same outputs on both sides, request by request: student scores "
                  f"{same['student']}, upstream requests {same['request']}, fused rankings "
                  f"{same['fusion']}."]
    else:
        lines += ["", "| part | p50 ms | p99 ms | CPU time p50 ms |",
                  "| --- | ---: | ---: | ---: |"]
        lines += [f"| {part} | {by['current', part]['p50_ms']} | {by['current', part]['p99_ms']}"
                  f" | {by['current', part]['cpu_p50_ms']} |" for part in PARTS]
    for code, s in sides.items():
        text = f"{code}: student file {s['student_file_bytes']:,} bytes"
        if s.get("parity"):
            par = s["parity"]
            text += (f"; ONNX parity of its fp32 export against torch on {PARITY_HISTORIES} "
                     f"histories: max |diff| scores {par['max_abs_diff_scores']:.2e}, intents "
                     f"{par['max_abs_diff_intents']:.2e}, top-10 identical "
                     f"{par['top10_agreement']:.1%}")
        lines += ["", text + "."]
    return "\n".join(lines) + "\n"


# --- worker processes: everything below imports the code of the side they run ---

def worker(job: dict) -> None:
    import tandem_contract

    result = export(job) if job["task"] == "export" else measure_side(job)
    result["imported_from"] = str(Path(tandem_contract.__file__).parents[1])
    print(json.dumps(result))


def load_histories(path: str) -> list[np.ndarray]:
    data = np.load(path)
    return np.split(data["items"], data["ends"][:-1])


def export(job: dict) -> dict:
    """Export and quantise the run's compressed student with this side's code; parity."""
    from tandemrec.checkpoints import load_student
    from tandemrec.train.export import check_parity, export_onnx, quantize_int8

    run, out = Path(job["run"]), Path(job["out"])
    small, _ = load_student(run / "student_svd.pt")
    fp32 = export_onnx(small, out / "student_svd.onnx")
    quantize_int8(fp32, out / "student_int8.onnx")
    config = json.loads((run / "config.json").read_text()) if (run / "config.json").exists() \
        else {}
    atol = float(config.get("compress", {}).get("atol", 1e-3))
    rep = check_parity(small, fp32, load_histories(job["histories"])[:PARITY_HISTORIES], atol)
    fp32.unlink()
    parity = {"max_abs_diff_scores": rep.max_abs_diff_scores,
              "max_abs_diff_intents": rep.max_abs_diff_intents,
              "top10_agreement": rep.top10_agreement, "atol": atol, "ok": rep.ok}
    return {"parity": parity,
            "student_file_bytes": (out / "student_int8.onnx").stat().st_size}


def digest(*arrays: Any) -> str:
    h = hashlib.blake2b(digest_size=8)
    for x in arrays:
        h.update(np.ascontiguousarray(x).tobytes() if isinstance(x, np.ndarray)
                 else repr(x).encode())
    return h.hexdigest()


def measure_side(job: dict) -> dict:
    """One pass over the users: student, request and fusion of each, timed apart."""
    from edge_client.client import EdgeModel
    from tandem_contract.fusion import (
        CloudCandidates,
        FusionConfig,
        device_log_probs,
        fuse,
        intent_log_probs,
    )
    from tandem_contract.request import build_request

    model = EdgeModel.load(job["bundle"], threads=1)
    sv = model.serving
    n_cand = int(sv.get("n_candidates", 600))
    cands = np.argsort(-model.popularity)[:n_cand]
    cands = cands[cands > 0]
    t_logp = np.log(np.linspace(1, 0.01, len(cands)) / len(cands) / 2)
    cloud = CloudCandidates(cands, t_logp, model.item_intent[cands], len(model.known) - 1)
    fusion = FusionConfig.from_serving(sv)
    top_m, coarse = int(sv.get("top_intents", 8)), int(sv.get("coarse_history", 50))
    view = model.view
    users = load_histories(job["histories"])[job["start"]:job["stop"]]
    wall: dict[str, list[float]] = {p: [] for p in PARTS}
    cpu: dict[str, list[float]] = {p: [] for p in PARTS}
    digests: dict[str, list[str]] = {p: [] for p in PARTS[:3]}
    clocks = (time.perf_counter, time.thread_time)
    for i, h in enumerate(users[:WARMUP] + users):
        t0 = [c() for c in clocks]
        logits, scores = model.student.run(h)
        t1 = [c() for c in clocks]
        req = build_request(logits, h, model.item_intent, top_m=top_m, coarse_len=coarse,
                            k=n_cand, model_version=model.version)
        t2 = [c() for c in clocks]
        ranked = fuse(device_log_probs(scores, view), intent_log_probs(logits), view, cloud,
                      fusion, exclude=h)
        t3 = [c() for c in clocks]
        if i < WARMUP:
            continue
        for out, j in ((wall, 0), (cpu, 1)):
            for part, (a, b) in zip(PARTS, ((t0, t1), (t1, t2), (t2, t3), (t0, t3)),
                                    strict=True):
                out[part].append((b[j] - a[j]) * 1000)
        digests["student"].append(digest(logits, scores))
        digests["request"].append(digest(req))
        digests["fusion"].append(digest(*ranked))
    return {"wall_ms": wall, "cpu_ms": cpu, "digests": digests}


if __name__ == "__main__":
    main()
