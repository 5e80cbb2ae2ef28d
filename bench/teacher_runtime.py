"""Benchmark: the cloud teacher's micro-batch forward in eager torch against ONNX Runtime.

Times what a replica runs per micro-batch (`tandemrec.teacher_graph`): the teacher's
last-position forward over coarse intent tokens, for batch sizes 1 to 64 on one and two
threads, torch and ONNX Runtime (worker threads not spinning, the cloud's default, and
spinning) side by side in one process, and checks that both give the same scores and top 10.
The teacher is the bundle's (`--bundle`), or, without one, a randomly initialised two-member
ensemble of the ML-1M config's shapes (time does not depend on the weights). Writes
bench/results/teacher-runtime.{json,md} (--out to write them elsewhere).

    python bench/teacher_runtime.py [--bundle <run>/bundle] [--calls 20] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from tandemrec.eval.report import machine
from tandemrec.models.teacher import Teacher, TeacherConfig
from tandemrec.models.teacher_ensemble import AnyTeacher, TeacherEnsemble
from tandemrec.paths import REPO_ROOT
from tandemrec.teacher_graph import OnnxTeacher

BATCHES = (1, 8, 32, 64)


def ml1m_shaped() -> AnyTeacher:
    """Two members of configs/ml-1m.yaml's teacher shape over ML-1M's catalog, random weights."""
    def member(seed: int) -> Teacher:
        torch.manual_seed(seed)
        return Teacher(TeacherConfig(n_items=3416, text_dim=384, d_model=128, n_layers=2,
                                     n_heads=2, mlp_hidden=256, max_len=200, n_intents=256))
    return TeacherEnsemble([member(42), member(43)]).eval()


RUNTIMES = ("torch", "onnx", "onnx-spinning")


def worker(teacher: AnyTeacher, runtime: str, threads: int, history: int, calls: int) -> dict:
    """Median ms per batch size of one runtime on `threads` threads, in this process alone."""
    torch.set_num_threads(threads)
    graph = None if runtime == "torch" else OnnxTeacher(teacher, threads,
                                                        spin=runtime == "onnx-spinning")
    rng = np.random.default_rng(0)
    out = {}
    for b in BATCHES:
        x = rng.integers(1, teacher.cfg.n_intents + 1, size=(b, history))
        xt = torch.from_numpy(x)
        with torch.inference_mode():
            times = []
            for i in range(calls + 3):  # the first 3 are warm-up
                t0 = time.perf_counter()
                if graph is None:
                    teacher(xt, coarse=True)
                else:
                    graph(x, True)
                if i >= 3:
                    times.append(time.perf_counter() - t0)
        out[str(b)] = float(np.median(times) * 1000)
    return out


def parity(teacher: AnyTeacher, history: int) -> dict:
    """Largest score difference and share of rows with the same top 10, per batch size."""
    graph, rng, out = OnnxTeacher(teacher, 1), np.random.default_rng(1), {}
    for b in BATCHES:
        x = rng.integers(1, teacher.cfg.n_intents + 1, size=(b, history))
        with torch.inference_mode():
            want = teacher(torch.from_numpy(x), coarse=True).numpy()
        got = graph(x, True)
        same = (np.sort(np.argsort(-got, 1)[:, :10], 1)
                == np.sort(np.argsort(-want, 1)[:, :10], 1)).all(1)
        out[str(b)] = {"max_abs_diff": float(np.abs(got - want).max()),
                       "same_top10_share": float(same.mean())}
    return out


def measure(a: argparse.Namespace) -> list[dict]:
    """Every (runtime, threads) in its own process, `rounds` times, taking turns; medians."""
    runs: dict[tuple[str, int], list[dict]] = {}
    for r in range(a.rounds):
        configs = [(rt, th) for th in (1, 2) for rt in RUNTIMES]
        for rt, th in configs[r % len(configs):] + configs[:r % len(configs)]:
            cmd = [sys.executable, __file__, "--worker", rt, str(th), "--history",
                   str(a.history), "--calls", str(a.calls)]
            if a.bundle:
                cmd += ["--bundle", str(a.bundle)]
            done = subprocess.run(cmd, capture_output=True, text=True, check=True)
            runs.setdefault((rt, th), []).append(json.loads(done.stdout.strip().splitlines()[-1]))
    rows = []
    for (rt, th), got in sorted(runs.items()):
        for b in BATCHES:
            rows.append({"runtime": rt, "threads": th, "batch": b,
                         "ms": round(float(np.median([g[str(b)] for g in got])), 3),
                         "ms_runs": [round(g[str(b)], 3) for g in got]})
    return rows


def markdown(report: dict) -> str:
    ms = {(r["runtime"], r["threads"], r["batch"]): r["ms"] for r in report["rows"]}
    lines = [f"# Cloud teacher: eager torch against ONNX Runtime ({report['teacher']})", "",
             f"Machine: {report['machine']['cpu']}, {report['machine']['cores']} cores. "
             f"Coarse mode, {report['history']} intent tokens per row; per cell the median of "
             f"{report['calls']} calls in a process of its own, then the median of "
             f"{report['rounds']} such processes, the configurations taking turns. ONNX "
             "Runtime's threads do not spin (the cloud's default) but in the spinning column.",
             "", "| threads | batch | torch ms | ONNX Runtime ms | torch / ONNX Runtime | "
             "ONNX Runtime spinning ms | max abs diff | same top 10 |",
             "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for th in (1, 2):
        for b in BATCHES:
            t, o, sp = (ms[rt, th, b] for rt in RUNTIMES)
            par = report["parity"][str(b)]
            lines.append(f"| {th} | {b} | {t:.2f} | {o:.2f} | {t / o:.2f}x | {sp:.2f} | "
                         f"{par['max_abs_diff']:.1e} | {par['same_top10_share']:.0%} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bundle", type=Path, default=None,
                   help="a bundle pair whose teacher to time (default: ML-1M shapes, random)")
    p.add_argument("--history", type=int, default=50, help="intent tokens per row (default 50, "
                   "ML-1M's eval.coarse_history)")
    p.add_argument("--calls", type=int, default=20, help="timed calls per cell and process")
    p.add_argument("--rounds", type=int, default=3, help="processes per configuration")
    p.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "results")
    p.add_argument("--worker", nargs=2, metavar=("RUNTIME", "THREADS"), help=argparse.SUPPRESS)
    a = p.parse_args()
    teacher, name = load(a.bundle)
    if a.worker:
        print(json.dumps(worker(teacher, a.worker[0], int(a.worker[1]), a.history, a.calls)))
        return
    report = {"teacher": name, "history": a.history, "calls": a.calls, "rounds": a.rounds,
              "machine": machine(), "parity": parity(teacher, a.history), "rows": measure(a)}
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "teacher-runtime.json").write_text(json.dumps(report, indent=2))
    (a.out / "teacher-runtime.md").write_text(markdown(report))
    print(markdown(report))


def load(bundle: Path | None) -> tuple[AnyTeacher, str]:
    """The bundle's teacher, or the ML-1M-shaped random one."""
    if bundle is None:
        return ml1m_shaped(), "ML-1M shapes, two members, random weights"
    from tandem_contract.bundle import pair_dirs
    from tandemrec.checkpoints import load_teacher

    teacher, _ = load_teacher(pair_dirs(bundle).cloud / "teacher.pt")
    return teacher.eval(), f"teacher of {bundle}"


if __name__ == "__main__":
    main()
