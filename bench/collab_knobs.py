"""Collaborative serving's request knobs, measured on the validation users of a finished run.

For each combination of the coarse history the device sends (L intent tokens), the number of
weighted intent tokens (m) and the candidates the cloud retrieves, this runs the collaborative
path as `tandem evaluate` does (int8 student on the device, coarse teacher in the cloud), tunes
the fusion setting and reports validation NDCG@10: fused, the device alone (weight 0) and the
coarse teacher alone (weight 1), with the upstream JSON size. Test users are not
touched, so a knob chosen here can go into the config. Writes bench/results/collab-knobs-<dataset>.
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

from tandemrec.eval.modes import Evaluator, fusion_grid, tune_fusion
from tandemrec.eval.report import load_models, machine
from tandemrec.paths import REPO_ROOT, artifacts_dir
from tandemrec.pipeline import open_run
from tandemrec.progress import log
from tandemrec.train.config import load_config


def ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",")]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run-dir", type=Path, default=artifacts_dir() / "ml-1m")
    p.add_argument("--coarse-history", type=ints, default=[50, 100, 200], help="L values")
    p.add_argument("--top-intents", type=ints, default=[32, 64], help="m values")
    p.add_argument("--retrieve", type=ints, default=[1000, 1500],
                   help="candidates retrieved (and all returned to the device)")
    p.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "results")
    a = p.parse_args()
    cfg = load_config(a.run_dir / "config.json")  # JSON is YAML
    ctx = open_run(cfg, a.run_dir)
    models, sp = load_models(ctx), ctx.split
    grid = list(itertools.product(a.coarse_history, a.top_intents, a.retrieve))
    ev = Evaluator(models, sp.valid_input, sp.valid_target, cfg.eval, cfg.seed,
                   device_inputs=ctx.device_split.valid_input)
    fusions = fusion_grid(cfg.eval, bool(ctx.new_items.any()))
    rows = []
    for i, (hist, top, n) in enumerate(grid, 1):
        log(f"[{i}/{len(grid)}] coarse history {hist}, {top} intent tokens, {n} candidates")
        ev.cfg = cfg.eval.model_copy(update={"coarse_history": hist, "top_intents": top,
                                              "n_retrieve": n, "n_candidates": n})
        best, by = tune_fusion(ev, fusions)
        rows.append({"coarse_history": hist, "top_intents": top, "candidates": n,
                     "fusion_weight": best.weight, "device_top": best.device_top,
                     "val_ndcg@10": max(by.values()),
                     "device_alone": max(v for k, v in by.items() if k.startswith("w=0.0 ")),
                     "coarse_teacher_alone": max(v for k, v in by.items()
                                                 if k.startswith("w=1.0 ")),
                     "bytes_up_json": round(ev.bytes_up)})
    a.out.mkdir(parents=True, exist_ok=True)
    stem = a.out / f"collab-knobs-{cfg.dataset}"
    report = {"run_dir": str(a.run_dir), "dataset": cfg.dataset, "users": "validation",
              "config_eval": cfg.eval.model_dump(), "machine": machine(), "rows": rows}
    stem.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    keys = list(rows[0])
    md = [f"# Collaborative request knobs on {cfg.dataset} (validation users, NDCG@10)", "",
          "| " + " | ".join(keys) + " |", "| " + " | ".join("---:" for _ in keys) + " |"]
    md += ["| " + " | ".join(f"{r[k]:.4f}" if isinstance(r[k], float) else str(r[k])
                             for k in keys) + " |" for r in rows]
    stem.with_suffix(".md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
