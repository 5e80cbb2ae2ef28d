"""Benchmark: peak memory and time of `tandem evaluate` as the number of users grows.

For each user count, a generated dataset (tandemrec.data.write_synthetic_csv: clustered item
chains, histories of 5-30 items, every catalog item present) is written and `tandem evaluate`
alone runs on it in a fresh child whose peak resident memory (ru_maxrss of its only child,
measured by a small wrapper process) and wall time are recorded. The models it evaluates come
from the real pipeline stages (train, distill, compress, export) run once, in a child process,
on the smallest dataset: every dataset holds the whole catalog, so the item ids line up. The
models are deliberately tiny and trained for one epoch: this is a memory benchmark, not a
quality one, and the metrics it produces mean nothing. The evaluation streams users in chunks
of tandemrec.eval.modes.CHUNK, so its peak should grow with the catalog and the chunk (plus the
dataset itself), not with users x catalog. Writes
bench/results/eval-memory.{json,md}.

    python bench/eval_memory.py [--users 10000,50000,200000] [--items 25000]
    python bench/eval_memory.py --write-dataset shop-100k.csv --users 100000 --items 25000

The second form only writes a generated user,item,timestamp,title CSV, for example to run
`tandem pipeline --dataset shop-100k.csv --config configs/scale-100k.yaml` at that scale.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tandemrec.paths import CONFIGS_DIR, REPO_ROOT

SMOKE = CONFIGS_DIR / "smoke.yaml"
MIN_LEN, MAX_LEN = 5, 30  # short histories, as in a shop's logs
ITEMS_PER_CLUSTER = 50

# On top of configs/smoke.yaml: tiny models, one epoch each, so that training at 200k users
# stays in minutes. Evaluation still scores the whole catalog for every user in every mode.
TINY = [
    "teacher.d_model=16", "teacher.mlp_hidden=32", "teacher.max_len=20", "teacher.max_epochs=1",
    "teacher.coarse_epochs=1", "teacher.batch_size=256", "teacher.warmup_steps=5",
    "teacher.loss_positions=0.1",
    "student.d_model=16", "student.mlp_hidden=32", "student.max_len=20", "student.max_epochs=1",
    "student.batch_size=256", "student.warmup_steps=5", "student.kd_top_k=8",
    "student.loss_positions=0.1",
    "compress.align_steps=5", "compress.finetune_epochs=1", "compress.batch_size=256",
    "compress.loss_positions=0.1",
    "intents.n_intents=64", "intents.level2=4", "intents.level3=4", "intents.kmeans_iters=10",
    "eval.coarse_history=20", "eval.top_intents=8", "eval.n_retrieve=200",
    "eval.n_candidates=200", "eval.latency_requests=20",
    "val_users=1000",
]

# The pipeline's training stages in one child, so their memory is gone before evaluation.
_TRAIN = """
import json, sys
from pathlib import Path
from tandemrec import pipeline
from tandemrec.train.config import load_config
a = json.loads(sys.argv[1])
ctx = pipeline.open_run(load_config(a["config"], a["overrides"]), Path(a["run_dir"]))
for stage in ("train", "distill", "compress", "export"):
    getattr(pipeline, "stage_" + stage)(ctx)
"""

# A fresh interpreter whose first and only child is the command measured: ru_maxrss over its
# children is then that command's peak resident set (KiB on Linux).
_WRAP = """
import json, resource, subprocess, sys, time
t0 = time.perf_counter()
rc = subprocess.run(sys.argv[1:]).returncode
seconds = time.perf_counter() - t0
use = resource.getrusage(resource.RUSAGE_CHILDREN)
print("EVAL_MEMORY " + json.dumps({"rc": rc, "seconds": seconds, "peak_rss_kib": use.ru_maxrss,
                                   "cpu_seconds": use.ru_utime + use.ru_stime}))
"""


def ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",")]


def write_dataset(path: Path, users: int, items: int, seed: int = 0,
                  cover: bool = False) -> dict[str, Any]:
    """A generated user,item,timestamp,title CSV of `users` x `items`; returns its counts
    (`catalog`: the items that occur, which is what a loader of the file will know).

    `cover` appends a few extra users ("cover-<i>", MAX_LEN items each) holding the items no
    generated user touched, so that every file of the same `items` has the same catalog and the
    loader gives every item the same dense id.
    """
    import csv

    import numpy as np

    from tandemrec.data import write_synthetic_csv

    ds = write_synthetic_csv(path, n_users=users, n_items=items, min_len=MIN_LEN,
                             max_len=MAX_LEN, n_clusters=max(1, items // ITEMS_PER_CLUSTER),
                             seed=seed)
    present = np.zeros(ds.n_items + 1, dtype=bool)
    present[np.concatenate(ds.sequences)] = True
    missing = np.flatnonzero(~present[1:]) + 1
    extra = 0
    if cover and len(missing):
        texts = ds.item_texts or [""] * (ds.n_items + 1)
        with path.open("a", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            for i in range(0, len(missing), MAX_LEN):
                for t, item in enumerate(missing[i:i + MAX_LEN].tolist()):
                    writer.writerow([f"cover-{i}", ds.item_ids[item], 1_500_000_000 + t,
                                     texts[item]])
        extra = len(missing)
    return {"users": ds.n_users, "items": ds.n_items,
            "catalog": int(present[1:].sum()) + extra,
            "interactions": ds.n_interactions + extra}


def train(csv: Path, run_dir: Path, overrides: list[str]) -> float:
    """Train, distil, compress and export on `csv` into `run_dir` (a child process); seconds."""
    args = {"config": str(SMOKE), "overrides": [f"dataset={csv}", *overrides],
            "run_dir": str(run_dir)}
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", _TRAIN, json.dumps(args)], check=True)
    return time.perf_counter() - t0


def evaluate_command(csv: Path, run_dir: Path, results_dir: Path,
                     overrides: list[str]) -> list[str]:
    """`tandem evaluate` on the run, as a user would type it."""
    sets = [x for o in overrides for x in ("--set", o)]
    return [sys.executable, "-m", "tandemrec.cli", "evaluate", "--dataset", str(csv),
            "--config", str(SMOKE), *sets, "--run-dir", str(run_dir),
            "--results-dir", str(results_dir)]


def _poll_hwm(proc: subprocess.Popen, seen: list[int]) -> None:
    """Cross-check: the largest VmHWM read from /proc of the wrapper's child while it runs."""

    while proc.poll() is None:
        try:
            kids = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
            for kid in kids:
                for line in Path(f"/proc/{kid}/status").read_text().splitlines():
                    if line.startswith("VmHWM:"):
                        seen.append(int(line.split()[1]) * 1024)
        except OSError:
            pass
        time.sleep(0.2)


def measure_evaluation(csv: Path, run_dir: Path, results_dir: Path,
                       overrides: list[str]) -> dict[str, Any]:
    """Peak RSS (bytes) and wall seconds of `tandem evaluate` run alone in a fresh process."""
    cmd = [sys.executable, "-c", _WRAP, *evaluate_command(csv, run_dir, results_dir, overrides)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    polled: list[int] = []
    poller = threading.Thread(target=_poll_hwm, args=(proc, polled), daemon=True)
    poller.start()
    out, _ = proc.communicate()
    poller.join()
    lines = [ln for ln in out.splitlines() if ln.startswith("EVAL_MEMORY ")]
    if proc.returncode or not lines:
        raise RuntimeError(f"the evaluation wrapper failed (exit {proc.returncode}):\n{out}")
    got = json.loads(lines[-1].removeprefix("EVAL_MEMORY "))
    if got["rc"]:
        raise RuntimeError(f"tandem evaluate exited with {got['rc']}:\n{out}")
    quality = sorted(results_dir.glob("quality-*.json"))
    inner = json.loads(quality[0].read_text()).get("seconds") if quality else None
    return {"peak_rss_bytes": got["peak_rss_kib"] * 1024, "seconds": round(got["seconds"], 2),
            "cpu_seconds": round(got["cpu_seconds"], 2),
            "evaluate_run_seconds": round(inner, 2) if inner is not None else None,
            "polled_vmhwm_bytes": max(polled, default=0)}


def measure(users: int, items: int, work_dir: Path, overrides: list[str] | None = None,
            seed: int = 0, keep: bool = False) -> dict[str, Any]:
    """One row: generate, train (tiny), then measure `tandem evaluate`; cleans `work_dir`
    unless `keep`."""
    from tandemrec.eval.modes import CHUNK

    overrides = TINY if overrides is None else overrides
    work = work_dir / f"users-{users}-items-{items}"
    try:
        csv = work / f"synthetic-{users}.csv"
        counts = write_dataset(csv, users, items, seed)
        train_s = train(csv, work / "run", overrides)
        row = {"users": users, "items": items, **measure_evaluation(
            csv, work / "run", work / "results", overrides),
            "interactions": counts["interactions"], "catalog": counts["catalog"], "chunk": CHUNK,
            "train_seconds": round(train_s, 1)}
    finally:
        if not keep:
            shutil.rmtree(work, ignore_errors=True)
    return row


def measure_sizes(sizes: list[int], items: int, work_dir: Path, overrides: list[str] | None = None,
                  seed: int = 0, on_row: Callable[[list[dict[str, Any]]], None] | None = None
                  ) -> list[dict[str, Any]]:
    """Rows for several user counts over one catalog: the models are trained once, on the
    smallest dataset, and `tandem evaluate` runs on each dataset with them. `on_row` gets the
    rows so far after each one (to save partial results)."""
    from tandemrec.eval.modes import CHUNK
    from tandemrec.progress import log

    overrides = TINY if overrides is None else overrides
    run, rows = work_dir / "run", []
    try:
        for n, users in enumerate(sorted(sizes)):
            csv = work_dir / f"synthetic-{users}.csv"
            counts = write_dataset(csv, users, items, seed, cover=True)
            train_s = train(csv, run, overrides) if n == 0 else None
            log(f"eval-memory: {users:,} users x {items:,} items: evaluating")
            row = {"users": users, "items": items,
                   **measure_evaluation(csv, run, work_dir / f"results-{users}", overrides),
                   "interactions": counts["interactions"], "catalog": counts["catalog"],
                   "chunk": CHUNK, "train_seconds": round(train_s, 1) if train_s else None}
            log(f"eval-memory: {users:,} users: peak RSS {_gib(row['peak_rss_bytes'])}, "
                f"{row['seconds']:.0f}s")
            rows.append(row)
            csv.unlink()
            if on_row is not None:
                on_row(rows)
    finally:
        shutil.rmtree(work_dir / "run", ignore_errors=True)
    return rows


def _gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"


def markdown(report: dict[str, Any]) -> str:
    m = report["machine"]
    md = [f"# `tandem evaluate` peak memory ({report['items']:,} items, chunks of "
          f"{report['chunk']} users)", "",
          "Tiny models trained one epoch each, once, on the smallest dataset (a memory "
          "benchmark, not a quality one; the metrics of these runs mean nothing). Peak RSS is "
          "the evaluation process alone, from loading the data to writing the results.", "",
          "| users | interactions | items seen | peak RSS | seconds | CPU seconds |",
          "| ---: | ---: | ---: | ---: | ---: | ---: |"]
    md += [f"| {r['users']:,} | {r['interactions']:,} | {r['catalog']:,} | "
           f"{_gib(r['peak_rss_bytes'])} | {r['seconds']:.0f} | "
           + (f"{r['cpu_seconds']:.0f} |" if r.get("cpu_seconds") is not None else "- |")
           for r in report["rows"]]
    if report.get("status"):
        md += ["", f"Status: {report['status']}"]
    md += ["", "Seconds: wall time of the whole command (imports, data, every mode, the bundle) "
           "on a machine shared with other jobs; CPU seconds: user + system time of the "
           "evaluation process.", "", report["note"]]
    if report.get("pipeline_100k"):
        md += ["", f"100k users: {report['pipeline_100k']}"]
    md += ["", f"Machine: {m['cpu']}, {m['cores']} cores; torch {m['torch']}, onnxruntime "
           f"{m['onnxruntime']}. Config: configs/smoke.yaml with the overrides in the JSON.", ""]
    return "\n".join(md)


NOTE = ("Expected growth: the score matrices are chunk x catalog floats (CHUNK users at a "
        "time, per mode), so they do not grow with users; what does is the dataset and its "
        "split in memory and one rank per user and mode, linear in interactions and users. "
        "Before chunking, a users x catalog float32 matrix alone would be users x (items + 1) "
        "x 4 bytes (200k x 25k: 20 GB).")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--users", type=ints, default=[10_000, 50_000, 200_000],
                   help="user counts, comma-separated")
    p.add_argument("--items", type=int, default=25_000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work-dir", type=Path, default=None,
                   help="where datasets and runs are written (default: a temporary directory); "
                        "removed after each size")
    p.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "results")
    p.add_argument("--write-dataset", type=Path, default=None, metavar="PATH",
                   help="only write a generated CSV of --users (one value) x --items to PATH")
    p.add_argument("--pipeline-100k", default=None, metavar="LINE",
                   help="only add this line (a finished 100k-user `tandem pipeline` run: command "
                        "and wall time) to the results already in --out")
    a = p.parse_args()
    if a.pipeline_100k is not None:
        path = a.out / "eval-memory.json"
        report = json.loads(path.read_text())
        report["pipeline_100k"] = a.pipeline_100k
        path.write_text(json.dumps(report, indent=2) + "\n")
        (a.out / "eval-memory.md").write_text(markdown(report))
        return
    if a.write_dataset is not None:
        if len(a.users) != 1:
            p.error("--write-dataset takes one --users value")
        counts = write_dataset(a.write_dataset, a.users[0], a.items, a.seed)
        print(f"wrote {a.write_dataset}: {counts['users']:,} users, {counts['items']:,} items, "
              f"{counts['interactions']:,} interactions")
        return
    from tandemrec.eval.modes import CHUNK
    from tandemrec.eval.report import machine
    from tandemrec.progress import log

    report: dict[str, Any] = {
        "items": a.items, "chunk": CHUNK, "min_len": MIN_LEN, "max_len": MAX_LEN,
        "clusters": max(1, a.items // ITEMS_PER_CLUSTER), "config": str(SMOKE.relative_to(
            REPO_ROOT)), "overrides": TINY, "machine": machine(), "rows": [], "note": NOTE,
        "measured": "ru_maxrss of `tandem evaluate` as the only child of a fresh wrapper "
                    "process (polled_vmhwm_bytes: /proc VmHWM read every 0.2 s, a cross-check)"}
    a.out.mkdir(parents=True, exist_ok=True)

    def save(rows: list[dict[str, Any]]) -> None:
        """Written after every size, so that a run stopped part-way keeps what it measured."""
        report["rows"] = rows
        report["status"] = ("" if len(rows) == len(a.users) else
                            f"partial: {len(rows)} of {len(a.users)} sizes measured so far")
        (a.out / "eval-memory.json").write_text(json.dumps(report, indent=2) + "\n")
        (a.out / "eval-memory.md").write_text(markdown(report))

    with tempfile.TemporaryDirectory(prefix="eval-memory-") as tmp:
        work = a.work_dir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        log(f"eval-memory: {', '.join(f'{u:,}' for u in a.users)} users x {a.items:,} items; "
            f"models trained once on the smallest")
        measure_sizes(a.users, a.items, work, seed=a.seed, on_row=save)
    print(markdown(report))


if __name__ == "__main__":
    main()
