"""The simulator's report: simulate-<dataset>.json, a markdown table and PNG plots."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from tandemrec.sim.fleet import ModeRun

COLUMNS = ("mode", "devices", "hr@10", "ndcg@10", "bytes_up", "p50_ms", "p99_ms",
           "fallback_rate", "cache_rate", "errors")


def markdown(report: dict) -> str:
    lines = [f"# Simulated fleet on {report['dataset']}", "",
             f"{report['devices']} devices over {report['transport']} against "
             f"{report['cloud']}; network: {report['network']}"
             + ("; devices run the semantic-id student." if report.get("student") == "sid"
                else "."), "",
             "| " + " | ".join(COLUMNS) + " |", "|" + " --- |" * len(COLUMNS)]
    for r in report["rows"]:
        cells = []
        for c in COLUMNS:
            v = r.get(c)
            cells.append(f"{v:.4f}" if isinstance(v, float) and c in ("hr@10", "ndcg@10")
                         else f"{v:.1f}" if isinstance(v, float) else str(v))
        lines.append("| " + " | ".join(cells) + " |")
    for note in report.get("notes", []):
        lines += ["", note]
    return "\n".join(lines) + "\n"


def write_report(report: dict, runs: list[ModeRun], out_dir: Path) -> list[Path]:
    """JSON, markdown and the plots; returns the paths written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    name = f"simulate-{report['dataset']}" + (f"-{report['tag']}" if report.get("tag") else "")
    paths = [out_dir / f"{name}.json", out_dir / f"{name}.md"]
    paths[0].write_text(json.dumps(report, indent=2) + "\n")
    paths[1].write_text(markdown(report))
    paths += plots(report, runs, out_dir / name)
    return paths


def plots(report: dict, runs: list[ModeRun], stem: Path) -> list[Path]:
    """Accuracy against bytes upstream, latency distributions, and the timeline."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = []
    fig, ax = plt.subplots(figsize=(6, 4))
    for r in report["rows"]:
        ax.scatter(max(r["bytes_up"], 1), r["ndcg@10"], s=60)
        ax.annotate(r["mode"], (max(r["bytes_up"], 1), r["ndcg@10"]),
                    textcoords="offset points", xytext=(6, 4))
    ax.set_xscale("log")
    ax.set_xlabel("bytes upstream per request (log; 1 = nothing sent)")
    ax.set_ylabel("NDCG@10")
    ax.set_title(f"{report['dataset']}: accuracy against what leaves the device")
    fig.tight_layout()
    out.append(stem.with_name(stem.name + "-accuracy-bytes.png"))
    fig.savefig(out[-1], dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4))
    for run in runs:
        lat = np.sort([o.latency_ms for o in run.outcomes])
        if len(lat):
            ax.plot(lat, np.linspace(0, 1, len(lat)), label=run.mode)
    ax.set_xscale("log")
    ax.set_xlabel("end-to-end latency (ms, log)")
    ax.set_ylabel("share of requests")
    ax.legend()
    ax.set_title("latency distribution per mode")
    fig.tight_layout()
    out.append(stem.with_name(stem.name + "-latency.png"))
    fig.savefig(out[-1], dpi=120)
    plt.close(fig)

    collab = next((r for r in runs if r.mode == "collaborative"), None)
    if collab and collab.outcomes:
        out.append(timeline(collab, report, stem.with_name(stem.name + "-timeline.png")))
    return out


def timeline(run: ModeRun, report: dict, path: Path, bins: int = 40) -> Path:
    """NDCG@10 and the fallback rate over the run, with the outage window shaded."""
    import matplotlib.pyplot as plt

    t = np.array([o.t for o in run.outcomes])
    gain = np.array([1 / np.log2(o.rank + 2) if o.rank < 10 else 0.0 for o in run.outcomes])
    fb = np.array([o.served_by == "fallback" for o in run.outcomes], dtype=float)
    edges = np.linspace(0, t.max() + 1e-9, bins + 1)
    idx = np.clip(np.digitize(t, edges) - 1, 0, bins - 1)
    mid = (edges[:-1] + edges[1:]) / 2
    count = np.bincount(idx, minlength=bins)
    keep = count > 0
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(mid[keep], (np.bincount(idx, gain, bins) / np.maximum(count, 1))[keep],
            label="NDCG@10")
    ax2 = ax.twinx()
    ax2.plot(mid[keep], (np.bincount(idx, fb, bins) / np.maximum(count, 1))[keep],
             color="tab:red", label="fallback rate")
    ax2.set_ylim(-0.05, 1.05)
    if report.get("outage"):
        ax.axvspan(*report["outage"], color="grey", alpha=0.2, label="cloud outage")
    ax.set_xlabel("seconds since the run started")
    ax.set_ylabel("NDCG@10 (per time bin)")
    ax2.set_ylabel("share served by the on-device fallback")
    ax.set_title("collaborative serving across a cloud outage")
    fig.legend(loc="lower center", ncol=3, frameon=False)  # below: clear of both axes
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
