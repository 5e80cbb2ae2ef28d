"""Benchmark: cloud calls saved by the shift-triggered request policy, against accuracy.

Each simulated device replays its last `--steps` interactions (ask, show, record, ask again),
once calling the cloud every time and once only when its intent shifted; both runs use the
same devices and the same in-process cloud. Writes bench/results/shift-policy.{json,md}.

    python bench/shift_policy.py [--dataset ml-1m] [--devices 1000] [--steps 5]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from tandemrec.paths import REPO_ROOT, artifacts_dir
from tandemrec.sim.run import SimConfig, simulate


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="ml-1m")
    p.add_argument("--bundle", type=Path, default=None)
    p.add_argument("--devices", type=int, default=1000)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--intent-overlap", type=float, default=0.3,
                   help="ask again below this Jaccard overlap of the top intents")
    p.add_argument("--rank-overlap", type=float, default=0.1,
                   help="ask again below this overlap of device and cached teacher top 10")
    p.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "results")
    a = p.parse_args()
    from tandemrec.eval.report import machine

    bundle = a.bundle or artifacts_dir() / a.dataset / "bundle"
    rows = {}
    for policy in ("always", "shift"):
        cfg = SimConfig(dataset=a.dataset, bundle=bundle, devices=a.devices,
                        modes=("collaborative",), policy=policy, steps=a.steps,
                        edge={"shift_overlap": a.intent_overlap,
                              "shift_rank_overlap": a.rank_overlap})
        report, _ = simulate(cfg)
        row = report["rows"][0]
        rows[policy] = {"policy": policy, "requests": row["devices"],
                        "ndcg@10": row["ndcg@10"], "hr@10": row["hr@10"],
                        "cloud_call_rate": 1 - row["cache_rate"], "p50_ms": row["p50_ms"]}
    base, shift = rows["always"], rows["shift"]
    summary = {"calls_saved": round(1 - shift["cloud_call_rate"] / base["cloud_call_rate"], 4),
               "relative_ndcg_change": round(shift["ndcg@10"] / base["ndcg@10"] - 1, 4)}
    report = {"machine": machine(), "dataset": a.dataset, "devices": a.devices,
              "steps_per_device": a.steps, "intent_overlap": a.intent_overlap,
              "rank_overlap": a.rank_overlap, "rows": list(rows.values()), "summary": summary}
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "shift-policy.json").write_text(json.dumps(report, indent=2) + "\n")
    md = [f"# Shift-triggered cloud calls on {a.dataset}", "",
          f"{a.devices} devices, each replaying its last {a.steps} interactions; the device "
          f"asks the cloud again when its top intents overlap those of its last call less than "
          f"{a.intent_overlap} (Jaccard) or its top 10 over the cached candidates shares less "
          f"than {a.rank_overlap} with the cached teacher's.", "",
          "| policy | requests | cloud call rate | NDCG@10 | HR@10 |",
          "| --- | ---: | ---: | ---: | ---: |"]
    md += [f"| {r['policy']} | {r['requests']} | {r['cloud_call_rate']:.3f} | "
           f"{r['ndcg@10']:.4f} | {r['hr@10']:.4f} |" for r in rows.values()]
    md += ["", f"Cloud calls saved: {summary['calls_saved']:.1%}; NDCG@10 relative change: "
           f"{summary['relative_ndcg_change']:+.1%}."]
    (a.out / "shift-policy.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
