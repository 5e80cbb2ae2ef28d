"""How many items each intent token covers: the anonymity set a device's token hides in.

A token that covers one item tells the cloud what an item id would. For a run directory this
reports the run's vocabulary (tokens, items per token, tokens under the floor, share of training
interactions on them) and, from the same teacher and config, the vocabulary that
`intents.min_items` would build. Writes bench/results/intent-anonymity.{json,md}.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from tandemrec.checkpoints import load_teacher
from tandemrec.models.intent_vocab import IntentVocab
from tandemrec.paths import REPO_ROOT, artifacts_dir
from tandemrec.pipeline import intent_vocab
from tandemrec.train.config import PipelineConfig, load_config


def stats(vocab: IntentVocab, popularity: np.ndarray, floor: int) -> dict:
    """Items per token, and the tokens (and interactions) under `floor` items."""
    sizes = vocab.sizes[1:]
    small = sizes[vocab.codes[1:, 0] - 1] < floor  # per item: is its token under the floor?
    pop = popularity[1:].astype(np.float64)
    return {"tokens": vocab.n_intents, "min_items": int(sizes.min()),
            "median_items": float(np.median(sizes)), "max_items": int(sizes.max()),
            "single_item_tokens": int((sizes == 1).sum()),
            f"tokens_under_{floor}": int((sizes < floor).sum()),
            f"interactions_on_tokens_under_{floor}": float(pop[small].sum() / pop.sum())}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run-dir", type=Path, default=artifacts_dir() / "ml-1m")
    p.add_argument("--floor", type=int, default=5, help="items per token to check against")
    p.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "results")
    a = p.parse_args()
    cfg: PipelineConfig = load_config(a.run_dir / "config.json")  # JSON is YAML
    pop = np.load(a.run_dir / "popularity.npy")
    run_vocab = IntentVocab.from_json(json.loads((a.run_dir / "codebook.json").read_text()))
    teacher, _ = load_teacher(a.run_dir / "teacher.pt")
    with torch.no_grad():
        vecs = teacher.item_vectors().numpy()  # an ensemble's members side by side
    it = cfg.intents
    floored = intent_vocab(vecs, None, pop, it.model_copy(update={"min_items": a.floor}), cfg.seed)
    rows = [{"vocabulary": f"run ({it.n_intents} tokens, {it.weighting} weights, "
                           f"min_items {it.min_items})", **stats(run_vocab, pop, a.floor)},
            {"vocabulary": f"same with min_items {a.floor}", **stats(floored, pop, a.floor)}]
    a.out.mkdir(parents=True, exist_ok=True)
    report = {"run_dir": str(a.run_dir), "dataset": cfg.dataset, "floor": a.floor, "rows": rows}
    (a.out / "intent-anonymity.json").write_text(json.dumps(report, indent=2) + "\n")
    keys = list(rows[0])
    md = [f"# Items per intent token ({cfg.dataset})", "",
          "| " + " | ".join(keys) + " |", "| " + " | ".join("---" for _ in keys) + " |"]
    md += ["| " + " | ".join(f"{r[k]:.3f}" if isinstance(r[k], float) else str(r[k])
                             for k in keys) + " |" for r in rows]
    (a.out / "intent-anonymity.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
