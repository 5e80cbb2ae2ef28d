"""Compare teacher training runs by their validation curves, read from the runs' own output.

Each variant is one `tandem train` (or `tandem pipeline`) run with `--set` overrides; its log
holds a line per epoch ("teacher epoch 7: loss ... val NDCG@10 ... HR@10 ... (432s)"), and a
finished pipeline's quality JSON holds the same history. This script parses them, so every
figure is what a run printed, and writes bench/results/teacher-variants-<dataset>.{json,md,png}.
Runs stopped early by hand are marked with the epochs they ran of those planned.

    python bench/teacher_variants.py --dataset ml-1m \\
        --variant "committed run" bench/results/quality-ml-1m.json "" 30 \\
        --variant "earlier windows" /tmp/runs/C.log "teacher.recent_window=0.5" 40 \\
        --test "earlier windows" /tmp/runs/C

`--keep bench/results/teacher-variants-ml-1m.json` carries an earlier report's rows (their
histories are in it) into the new one, so a new run adds a row without the old logs.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from tandemrec.eval.report import machine

AT_EPOCHS = (10, 20, 30)  # table columns: runs compared at equal epochs
LINE = re.compile(r"teacher epoch (\d+): loss ([\d.]+) val NDCG@10 ([\d.]+) HR@10 ([\d.]+) "
                  r"\((\d+)s\)")


def read_history(path: Path) -> tuple[list[dict], str, dict | None]:
    """(per-epoch validation entries, CPU, test row or None) from a log or a quality JSON.

    A log is taken to come from this machine and has no test figures; a finished pipeline's
    quality JSON names its machine, and its cloud-full row is the teacher on the test users.
    """
    if path.suffix == ".json":
        data = json.loads(path.read_text())
        full = next(r for r in data["rows"] if r["mode"] == "cloud-full")
        return data["run"]["train"]["history"], data["machine"]["cpu"], full
    history = []
    for m in LINE.finditer(path.read_text(errors="replace")):
        epoch, loss, ndcg, hr, secs = m.groups()
        history.append({"epoch": int(epoch), "loss": float(loss), "val_ndcg@10": float(ndcg),
                        "val_hr@10": float(hr), "seconds": float(secs)})
    if not history:
        raise SystemExit(f"{path}: no 'teacher epoch N: ...' lines; is it a tandem train log?")
    return history, machine()["cpu"], None


def summary(label: str, overrides: str, planned: int, history: list[dict], cpu: str,
            test: dict | None) -> dict:
    best = max(history, key=lambda h: h["val_ndcg@10"])
    at = {f"val_ndcg@10_epoch_{e}": next((h["val_ndcg@10"] for h in history if h["epoch"] == e),
                                         None) for e in AT_EPOCHS}
    return {"variant": label, "overrides": overrides, "planned_epochs": planned,
            "epochs_run": len(history), **at,
            "best_val_ndcg@10": best["val_ndcg@10"], "best_epoch": best["epoch"],
            "seconds_per_epoch": history[-1]["seconds"] / len(history), "cpu": cpu,
            "test_ndcg@10": test and test["ndcg@10"], "test_hr@10": test and test["hr@10"],
            "history": history}


def test_metrics(dataset: str, run_dir: Path) -> dict[str, float]:
    """Full-ranking test metrics of the teacher a `tandem train` run saved, as cloud-full."""
    from tandemrec.checkpoints import load_teacher
    from tandemrec.data import leave_one_out, load_dataset
    from tandemrec.train.loop import validation_ndcg

    split = leave_one_out(load_dataset(dataset))
    teacher, _ = load_teacher(run_dir / "teacher.pt")
    return validation_ndcg(teacher, split.test_input, split.test_target, teacher.cfg.max_len)


def write_plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for r in rows:
        ep = [h["epoch"] for h in r["history"]]
        ax.plot(ep, [h["val_ndcg@10"] for h in r["history"]],
                label=f"{r['variant']} ({r['epochs_run']}/{r['planned_epochs']} ep)")
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation NDCG@10")
    ax.set_ylim(bottom=0.12)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", default="ml-1m")
    parser.add_argument("--variant", nargs=4, action="append", default=[],
                        metavar=("LABEL", "LOG_OR_JSON", "OVERRIDES", "PLANNED_EPOCHS"),
                        help="one run: a label, its log (or quality JSON), the --set "
                             "overrides it ran with, and the epochs its schedule planned")
    parser.add_argument("--test", nargs=2, action="append", default=[],
                        metavar=("LABEL", "RUN_DIR"),
                        help="also rank the test users with the teacher.pt that the run of "
                             "LABEL saved in RUN_DIR (runs that finished their train stage)")
    parser.add_argument("--keep", type=Path, default=None, metavar="REPORT_JSON",
                        help="an earlier report of this script whose rows are kept as they "
                             "were measured (their logs need not exist any more); a --variant "
                             "with the same label replaces its row")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    new = [summary(label, overrides, int(planned), *read_history(Path(log)))
           for label, log, overrides, planned in args.variant]
    kept = json.loads(args.keep.read_text())["rows"] if args.keep else []
    labels = {r["variant"] for r in new}
    rows = [r for r in kept if r["variant"] not in labels] + new
    if not rows:
        raise SystemExit("nothing to compare: give at least one --variant (or --keep a report)")
    for label, run_dir in args.test:
        row = next((r for r in rows if r["variant"] == label), None)
        if row is None:
            raise SystemExit(f"--test {label!r}: no --variant (or kept row) has that label")
        metrics = test_metrics(args.dataset, Path(run_dir))
        row["test_ndcg@10"], row["test_hr@10"] = metrics["ndcg@10"], metrics["hr@10"]
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"teacher-variants-{args.dataset}"
    report = {"benchmark": f"teacher validation curves on {args.dataset}", "rows": rows,
              "machine": machine(),
              "note": "validation NDCG@10 (full ranking, history excluded) after each epoch; "
                      "each run's cosine schedule spans its planned epochs"}
    stem.with_suffix(".json").write_text(json.dumps(report, indent=2))
    lines = [f"# Teacher variants on {args.dataset}: validation NDCG@10", "",
             "| variant | --set overrides | epochs run / planned | "
             + " | ".join(f"epoch {e}" for e in AT_EPOCHS)
             + " | best (epoch) | test NDCG@10 | s/epoch | CPU |",
             "| --- | --- | ---: | " + "---: | " * len(AT_EPOCHS) + "---: | ---: | ---: | --- |"]
    for r in rows:
        at = " | ".join("" if r[f"val_ndcg@10_epoch_{e}"] is None
                        else f"{r[f'val_ndcg@10_epoch_{e}']:.4f}" for e in AT_EPOCHS)
        lines.append(f"| {r['variant']} | `{r['overrides'] or '(config)'}` | "
                     f"{r['epochs_run']} / {r['planned_epochs']} | {at} | "
                     f"{r['best_val_ndcg@10']:.4f} ({r['best_epoch']}) | "
                     f"{'' if r['test_ndcg@10'] is None else format(r['test_ndcg@10'], '.4f')} | "
                     f"{r['seconds_per_epoch']:.0f} | {r['cpu']} |")
    lines += ["", "2-core machines. Runs stopped by hand have fewer epochs run than planned: "
              "compare them at equal epochs, not by their best.", ""]
    stem.with_suffix(".md").write_text("\n".join(lines))
    write_plot(rows, stem.with_suffix(".png"))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
