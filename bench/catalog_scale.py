"""What the device and the cloud cost as the catalog grows: 10^4, 10^5 and 10^6 items.

For each catalog size and each student (the full-table student, and the semantic-id student
of models/sid_student.py) it builds the device bundle and reports its bytes, the student's
p50 for one request on one thread (ONNX Runtime, intra_op_num_threads=1, int8 weights) and
the cloud's retrieval p50 (tandemrec/retrieval.py: the candidates of 8 intent tokens).

The catalogs are generated, not real: item i's semantic id (c1, c2, c3) has its intent token
c1 drawn from a Zipf law over K1 tokens (a few broad intents hold most items, as residual
k-means on real item vectors gives) and c2, c3 uniform over K2 and K3; popularity is Zipf over
items. The models are untrained (random weights of the configured shape): bytes and latency do
not depend on the weights, and quality on a generated catalog would say nothing about real
ones, so quality is measured on the real datasets instead (quality-<dataset>.json, sid-*
rows) and left empty here. Shapes come from a pipeline config (ML-1M's by default).

The table student's device bundle is its int8 model and `device_items.json` (an intent token,
a known flag and a popularity per item, no titles); the semantic-id student's is its int8
model alone (semantic ids come with the cloud's answers). Its p50 includes scoring the cloud's
answer from the row scores (`score_items` over n_candidates items); the table student scores
the whole catalog in the model. Writes catalog-scale.{json,md,png} into --out.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tandem_contract.bundle import DEVICE_ITEMS, bundle_bytes, write_manifest
from tandem_contract.runtime import OnnxStudent
from tandem_contract.semantic_ids import SidSpec, score_items, sid_rows
from tandemrec.eval.bundles import device_items
from tandemrec.eval.modes import n_params, p50_ms
from tandemrec.eval.report import machine
from tandemrec.models.sid_student import SidStudent, SidStudentConfig
from tandemrec.models.student import Student, StudentConfig
from tandemrec.paths import artifacts_dir
from tandemrec.pipeline_sid import SID_INT8, write_sid_bundle
from tandemrec.retrieval import IntentIndex
from tandemrec.train.config import PipelineConfig, load_config
from tandemrec.train.export import export_onnx, quantize_int8


def catalog(n: int, levels: list[int], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(codes (n+1, L), popularity (n+1,)) of a generated catalog; row 0 is padding."""
    rng = np.random.default_rng(seed)
    zipf = 1.0 / np.arange(1, levels[0] + 1)
    codes = np.zeros((n + 1, len(levels)), dtype=np.int64)
    codes[1:, 0] = rng.choice(levels[0], n, p=zipf / zipf.sum()) + 1
    for j, k in enumerate(levels[1:], start=1):
        codes[1:, j] = rng.integers(1, k + 1, n)
    pop = np.zeros(n + 1)
    pop[1:] = rng.permutation(1e6 / np.arange(1, n + 1)).round()
    return codes, pop


def int8_model(model: torch.nn.Module, work: Path, name: str) -> Path:
    fp32 = export_onnx(model, work / f"{name}.onnx")  # type: ignore[arg-type]
    out = quantize_int8(fp32, work / f"{name}_int8.onnx")
    fp32.unlink()
    return out


def table_row(n: int, codes: np.ndarray, pop: np.ndarray, cfg: PipelineConfig, work: Path,
              histories: list[np.ndarray], requests: int) -> dict[str, Any]:
    """The full-table student: one row per item in its input table and its head."""
    torch.manual_seed(0)
    model = Student(StudentConfig(n_items=n, n_intents=int(codes[:, 0].max()),
                                  **cfg.student.shape())).eval()
    path = int8_model(model, work, "table")
    bundle = work / "table-bundle"
    bundle.mkdir()
    shutil.move(path, bundle / path.name)
    table = {"n_items": n, "item_ids": [str(i) for i in range(1, n + 1)], "titles": None,
             "intent": codes[:, 0].tolist(), "popularity": pop.tolist()}
    (bundle / DEVICE_ITEMS).write_text(json.dumps(device_items(table, np.ones(n + 1, bool))))
    write_manifest(bundle, version="bench", dataset=f"generated-{n}", config={}, metrics={})
    runner = OnnxStudent(bundle / path.name, threads=1)
    lat = p50_ms(lambda i: runner.run(histories[i % len(histories)]), requests)
    return {"student": "table", "device_bundle_bytes": bundle_bytes(bundle),
            "model_bytes": (bundle / path.name).stat().st_size, "student_p50_ms": lat,
            "params": n_params(model)}


def sid_row(n: int, codes: np.ndarray, levels: list[int], cfg: PipelineConfig, work: Path,
            histories: list[np.ndarray], requests: int, n_candidates: int) -> dict[str, Any]:
    """The semantic-id student: a code table of 1 + K1 + K2 + K3 (+ H) rows whatever n is."""
    torch.manual_seed(0)
    hb, hc = cfg.student.hash_buckets, cfg.student.hash_count
    model = SidStudent(SidStudentConfig(level_sizes=levels, hash_buckets=hb, hash_count=hc,
                                        **cfg.student.shape())).eval()
    path = int8_model(model, work, "sid")
    size = write_sid_bundle(work / "sid-bundle", path, f"generated-{n}", {}, {},
                            SidSpec(tuple(levels), hb, cfg.student.max_len, hc))
    runner = OnnxStudent(work / "sid-bundle" / SID_INT8, threads=1)
    rows = sid_rows(codes, levels, hb, np.arange(n + 1), hc)
    rng = np.random.default_rng(1)
    answers = [rng.choice(np.arange(1, n + 1), n_candidates, replace=False) for _ in range(16)]

    def one(i: int) -> None:  # the model on the history's rows, then the answer's items
        _, row_scores = runner.run(rows[histories[i % len(histories)]])
        score_items(row_scores, rows[answers[i % len(answers)]])
    model_only = p50_ms(lambda i: runner.run(rows[histories[i % len(histories)]]), requests)
    return {"student": "sid", "device_bundle_bytes": size,
            "model_bytes": path.stat().st_size,
            "student_p50_ms": p50_ms(one, requests), "student_model_p50_ms": model_only,
            "params": n_params(model)}


def retrieval_p50(codes: np.ndarray, pop: np.ndarray, cfg: PipelineConfig,
                  requests: int) -> float:
    """The cloud's candidates for a request of `top_intents` tokens (IntentIndex)."""
    index = IntentIndex(codes[:, 0], pop)
    rng = np.random.default_rng(2)
    k = int(codes[:, 0].max())
    reqs = [(rng.choice(np.arange(1, k + 1), cfg.eval.top_intents, replace=False),
             rng.dirichlet(np.ones(cfg.eval.top_intents))) for _ in range(32)]
    return p50_ms(lambda i: index.candidates(*reqs[i % 32], cfg.eval.n_retrieve,
                                          cfg.eval.popular_share), requests)


def write(report: dict, out: Path) -> None:
    """catalog-scale.json, .md and .png in `out`."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "catalog-scale.json").write_text(json.dumps(report, indent=2) + "\n")
    m = report["machine"]
    md = ["# Device and cloud cost by catalog size", "",
          f"Generated catalogs, {report['config']} shapes (see bench/catalog_scale.py); "
          "p50 of one request on one thread.", "",
          "| items | student | device bundle (bytes) | student p50 (ms) | retrieval p50 (ms) |",
          "| ---: | --- | ---: | ---: | ---: |"]
    for r in report["rows"]:
        md.append(f"| {r['n_items']:,} | {r['student']} | {r['device_bundle_bytes']:,} | "
                  f"{r['student_p50_ms']:.3f} | {r['retrieval_p50_ms']:.3f} |")
    md += ["", *(f"- {s}" for s in report["skipped"]), "",
           f"Machine: {m['cpu']}, {m['cores']} cores, onnxruntime {m['onnxruntime']}; "
           f"{report['note']}", ""]
    (out / "catalog-scale.md").write_text("\n".join(md))
    plot(report, out / "catalog-scale.png")


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for student in ("table", "sid"):
        rows = [r for r in report["rows"] if r["student"] == student]
        x = [r["n_items"] for r in rows]
        axes[0].plot(x, [r["device_bundle_bytes"] / 1e6 for r in rows], "o-", label=student)
        axes[1].plot(x, [r["student_p50_ms"] for r in rows], "o-", label=student)
    for ax, label in ((axes[0], "device bundle (MB)"), (axes[1], "student p50, one thread (ms)")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("catalog items")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle("Device cost by catalog size: full-table against semantic-id student")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=lambda s: [int(float(x)) for x in s.split(",")],
                   default=[10**4, 10**5, 10**6])
    p.add_argument("--config", default="ml-1m", help="the pipeline config whose shapes to use")
    p.add_argument("--table-max", type=int, default=10**6,
                   help="largest catalog to build the table student for (memory, time)")
    p.add_argument("--requests", type=int, default=300)
    p.add_argument("--history", type=int, default=50, help="history length of each request")
    p.add_argument("--out", type=Path, default=artifacts_dir() / "catalog-scale")
    a = p.parse_args()
    torch.set_num_threads(1)
    cfg = load_config(Path(a.config))  # a file, or the name of a shipped config
    levels = [cfg.intents.n_intents, cfg.intents.level2, cfg.intents.level3]
    report: dict[str, Any] = {
        "config": a.config, "levels": levels, "hash_buckets": cfg.student.hash_buckets,
        "hash_count": cfg.student.hash_count,
        "history": a.history, "requests": a.requests, "n_candidates": cfg.eval.n_candidates,
        "machine": machine(), "rows": [], "skipped": [],
        "note": "a machine shared with other jobs: compare rows of one run only"}
    for n in a.sizes:
        codes, pop = catalog(n, levels, seed=n)
        rng = np.random.default_rng(n + 1)
        histories = [rng.integers(1, n + 1, a.history) for _ in range(64)]
        retrieval = retrieval_p50(codes, pop, cfg, a.requests)
        with tempfile.TemporaryDirectory() as tmp:
            rows = [sid_row(n, codes, levels, cfg, Path(tmp), histories, a.requests,
                            cfg.eval.n_candidates)]
            if n <= a.table_max:
                rows.insert(0, table_row(n, codes, pop, cfg, Path(tmp), histories, a.requests))
            else:
                report["skipped"].append(f"table student at {n:,} items: over --table-max")
        for r in rows:
            row = {"n_items": n, **r, "retrieval_p50_ms": retrieval, "ndcg@10": None}
            report["rows"].append(row)
            print(json.dumps(row), flush=True)
    write(report, a.out)
    print(f"wrote {a.out}/catalog-scale.{{json,md,png}}")


if __name__ == "__main__":
    main()
