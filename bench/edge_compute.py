"""Benchmark: on-device compute per recommendation (student + request + rerank), one thread.

For held-out users of the bundle's dataset: the int8 student reads the history (ONNX Runtime,
one thread, as on a phone), the upstream request is built, and the cloud's candidates (here
the catalog's most popular items, as many as the bundle asks for) are fused with the student's
scores. Reports p50/p99 of each part and of the whole, in one run. Writes
bench/results/edge-compute.{json,md}.

    python bench/edge_compute.py [--bundle artifacts/ml-1m/bundle] [--requests 1000]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from edge_client.client import EdgeModel
from tandem_contract.bundle import device_dir
from tandem_contract.fusion import (
    CloudCandidates,
    FusionConfig,
    device_log_probs,
    fuse,
    intent_log_probs,
)
from tandem_contract.request import build_request
from tandemrec.paths import REPO_ROOT, artifacts_dir


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bundle", type=Path, default=artifacts_dir() / "ml-1m" / "bundle")
    p.add_argument("--requests", type=int, default=1000)
    p.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "results")
    a = p.parse_args()
    from tandemrec.data import leave_one_out, load_dataset
    from tandemrec.eval.report import machine

    device = device_dir(a.bundle)  # the device side of the bundle pair
    model = EdgeModel.load(device, threads=1)
    manifest = json.loads((device / "manifest.json").read_text())
    sv = model.serving
    n_cand = int(sv.get("n_candidates", 600))
    split = leave_one_out(load_dataset(manifest["dataset"]))
    users = split.test_input[: a.requests]
    cands = np.argsort(-model.popularity)[:n_cand]
    cands = cands[cands > 0]
    t_logp = np.log(np.linspace(1, 0.01, len(cands)) / len(cands) / 2)
    cloud = CloudCandidates(cands, t_logp, model.item_intent[cands], len(model.known) - 1)
    fusion = FusionConfig.from_serving(sv)
    parts: dict[str, list[float]] = {"student": [], "request": [], "rerank": [], "total": []}
    for h in users[:50]:  # warm-up
        model.student.run(h)
    for h in users:
        t0 = time.perf_counter()
        logits, scores = model.student.run(h)
        t1 = time.perf_counter()
        build_request(logits, h, model.item_intent, top_m=int(sv.get("top_intents", 8)),
                      coarse_len=int(sv.get("coarse_history", 50)), k=n_cand,
                      model_version=model.version)
        t2 = time.perf_counter()
        fuse(device_log_probs(scores, model.view), intent_log_probs(logits), model.view, cloud,
             fusion, exclude=h)
        t3 = time.perf_counter()
        for key, v in zip(parts, (t1 - t0, t2 - t1, t3 - t2, t3 - t0), strict=True):
            parts[key].append(v * 1000)
    rows = [{"part": k, "p50_ms": round(float(np.percentile(v, 50)), 3),
             "p99_ms": round(float(np.percentile(v, 99)), 3)} for k, v in parts.items()]
    report = {"machine": machine(), "bundle_version": model.version,
              "dataset": manifest["dataset"], "requests": len(users), "threads": 1,
              "history_max_len": model.student.max_len, "candidates": len(cands),
              "student_file_bytes": (device / "student_int8.onnx").stat().st_size,
              "rows": rows}
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "edge-compute.json").write_text(json.dumps(report, indent=2) + "\n")
    md = [f"# On-device compute per request: {manifest['dataset']} bundle {model.version}", "",
          f"Machine: {report['machine']['cpu']}, ONNX Runtime on 1 thread, {len(users)} "
          f"held-out users, history up to {model.student.max_len}, {len(cands)} candidates.",
          "", "| part | p50 ms | p99 ms |", "| --- | ---: | ---: |"]
    md += [f"| {r['part']} | {r['p50_ms']} | {r['p99_ms']} |" for r in rows]
    (a.out / "edge-compute.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
