"""Plots for the quality report: accuracy against model size and against latency, per mode."""

from __future__ import annotations

from pathlib import Path


def quality_plot(report: dict, path: Path) -> Path | None:
    """NDCG@10 against model file size and against p50 latency; None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    rows = [r for r in report["rows"] if r["size_bytes"] > 0]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, key, label in ((axes[0], "size_bytes", "model file size (KB, log scale)"),
                           (axes[1], "p50_ms", "p50 latency, one request, one thread (ms, log)")):
        points: dict[tuple[float, float], list[str]] = {}
        for r in rows:  # modes that are the same model at the same point share one label
            x = r[key] / 1e3 if key == "size_bytes" else r[key]
            points.setdefault((round(x, 6), round(r["ndcg@10"], 6)), []).append(r["mode"])
        for (x, y), modes in points.items():
            ax.scatter(x, y, s=40)
            ax.annotate(" = ".join(modes), (x, y), textcoords="offset points", xytext=(5, 4),
                        fontsize=8)
        pop = next((r["ndcg@10"] for r in report["rows"] if r["mode"] == "popularity"), None)
        if pop is not None:
            ax.axhline(pop, color="grey", linestyle=":", linewidth=1)
            ax.text(0.01, pop, "popularity", transform=ax.get_yaxis_transform(), fontsize=8,
                    color="grey", va="bottom")
        ax.set_xscale("log")
        ax.set_xlabel(label)
        ax.set_ylabel("NDCG@10 (full ranking)")
        ax.grid(alpha=0.3)
    fig.suptitle(f"{report['dataset']}: accuracy against size and latency per serving mode")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
