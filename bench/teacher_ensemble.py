"""Rank the test users with several trained teachers and with their ensemble, in one run.

Each member is the `teacher.pt` of a finished `tandem train` (or `tandem pipeline`) run. The
ensemble (tandemrec/models/teacher_ensemble.py) averages the members' log-probabilities. The
report gives full-ranking test metrics, parameters, checkpoint bytes and single-request p50 on
one thread for every member and the ensemble, with the ensemble's ratios to its best member, and
writes bench/results/teacher-ensemble-<dataset>[-<tag>].{json,md}.

    python bench/teacher_ensemble.py --dataset ml-1m \\
        --member "d128, dropout 0.3" /tmp/runs/do3 --member "d192, dropout 0.2" /tmp/runs/d192
"""

from __future__ import annotations

import argparse
import io
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from tandemrec.checkpoints import load_teacher
from tandemrec.data import leave_one_out, load_dataset
from tandemrec.eval.modes import n_params, p50_ms
from tandemrec.eval.report import machine
from tandemrec.models.teacher import Teacher
from tandemrec.models.teacher_ensemble import TeacherEnsemble
from tandemrec.train.loop import validation_ndcg

LATENCY_REQUESTS = 200


def measure(label: str, model: torch.nn.Module, max_len: int, inputs: list[np.ndarray],
            targets: np.ndarray, size: int) -> dict:
    """Test metrics, size and one-request p50 of one scorer (a teacher or the ensemble)."""
    with torch.inference_mode():
        metrics = validation_ndcg(model, inputs, targets, max_len)

    def one(i: int) -> None:
        with torch.inference_mode():
            model(torch.from_numpy(inputs[i][-max_len:][None].astype(np.int64)))
    lat = p50_ms(one, min(LATENCY_REQUESTS, len(inputs)))
    return {"label": label, **{k: metrics[k] for k in ("hr@10", "ndcg@10", "mrr@10", "ndcg@20")},
            "params": n_params(model), "size_bytes": size, "p50_ms": lat}


def load_members(specs: list[list[str]]) -> Iterator[tuple[str, Path, Teacher, int]]:
    """(label, checkpoint, teacher, bytes) per member; an ensemble run gives each of its own."""
    for label, run_dir in specs:
        path = Path(run_dir) / "teacher.pt"
        if not path.exists():
            raise SystemExit(f"{path}: no teacher checkpoint; run `tandem train` into {run_dir}")
        teacher, _ = load_teacher(path)
        if isinstance(teacher, Teacher):
            yield label, path, teacher, path.stat().st_size
            continue
        for i, m in enumerate(teacher.members):
            assert isinstance(m, Teacher)
            buf = io.BytesIO()  # a member's share of the file: its weights serialised alone
            torch.save(m.state_dict(), buf)
            yield f"{label} [{i + 1}]", path, m, buf.tell()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", default="ml-1m")
    parser.add_argument("--member", nargs=2, action="append", default=[],
                        metavar=("LABEL", "RUN_DIR"), required=True,
                        help="a label and the run directory holding its teacher.pt; a run that "
                        "trained an ensemble (teacher.members) adds each of its members")
    parser.add_argument("--tag", default="", help="suffix of the report's file names, so "
                        "several ensembles can be kept side by side")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()

    split = leave_one_out(load_dataset(args.dataset))
    members, rows = [], []
    for label, path, teacher, size in load_members(args.member):
        members.append(teacher)
        cfg = teacher.cfg
        row = measure(label, teacher, cfg.max_len, split.test_input, split.test_target, size)
        row["config"] = {"d_model": cfg.d_model, "n_layers": cfg.n_layers,
                         "dropout": cfg.dropout, "max_len": cfg.max_len, "run": str(path)}
        rows.append(row)
    ensemble = TeacherEnsemble(members).eval()
    ens = measure(f"ensemble of {len(members)}", ensemble, ensemble.cfg.max_len, split.test_input,
                  split.test_target, sum(r["size_bytes"] for r in rows))
    best = max(rows, key=lambda r: r["ndcg@10"])
    ens["ndcg@10_ratio_to_best_member"] = ens["ndcg@10"] / best["ndcg@10"]
    ens["p50_ratio_to_best_member"] = ens["p50_ms"] / best["p50_ms"]
    rows.append(ens)

    args.out.mkdir(parents=True, exist_ok=True)
    name = Path(args.dataset).stem  # a path to the user's own logs names the report by its file
    stem = args.out / f"teacher-ensemble-{name}{'-' + args.tag if args.tag else ''}"
    report = {"benchmark": f"teacher ensemble on {args.dataset}", "rows": rows,
              "machine": machine(), "protocol": f"full ranking over the catalog, "
              f"{len(split.test_target)} test users (last item), history items excluded; "
              "p50: one request at the member's history length, one thread"}
    stem.with_suffix(".json").write_text(json.dumps(report, indent=2))
    lines = [f"# Teacher ensemble on {args.dataset}: test users", "",
             "| teacher | HR@10 | NDCG@10 | MRR@10 | params | size (bytes) | p50 (ms) |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    lines += [f"| {r['label']} | {r['hr@10']:.4f} | {r['ndcg@10']:.4f} | {r['mrr@10']:.4f} | "
              f"{r['params']:,} | {r['size_bytes']:,} | {r['p50_ms']:.3f} |" for r in rows]
    lines += ["", f"Ensemble against its best member ({best['label']}), same run: NDCG@10 x"
              f"{ens['ndcg@10_ratio_to_best_member']:.3f}, p50 x"
              f"{ens['p50_ratio_to_best_member']:.2f}. CPU: {report['machine']['cpu']}."]
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
