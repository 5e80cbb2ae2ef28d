"""Small real bundle pairs for service tests: the real pipeline on a generated dataset.

A pair directory holds device/ (what devices download) and cloud/ (teacher, codebook, item
table); see tandem_contract.bundle.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from tandem_contract.bundle import MANIFEST_NAME, pair_dirs, read_pair, write_pair_manifests
from tandemrec.data import write_synthetic_csv
from tandemrec.paths import CONFIGS_DIR

FAST = ["teacher.max_epochs=4", "teacher.coarse_epochs=1", "student.max_epochs=3",
        "compress.align_steps=5", "compress.finetune_epochs=1", "eval.latency_requests=5",
        "eval.n_retrieve=40", "eval.n_candidates=40"]


def build_bundle(root: Path, sid: bool = False, hash_count: int = 1) -> Path:
    """Train, distil, compress, export and evaluate on 200 generated users (~15 s on 2 cores).

    Returns the bundle pair directory (``run/bundle``, holding device/ and cloud/); with `sid`
    the run also trains the semantic-id student and writes its pair, ``run/bundle-sid``.
    """
    from tandemrec.pipeline import open_run, run_pipeline
    from tandemrec.train.config import load_config

    logs = root / "shop.csv"
    write_synthetic_csv(logs, n_users=200, n_items=80, min_len=8, max_len=25, seed=5)
    _first_interactions_only(logs)
    sid_keys = (["student.kind=sid", "student.hash_buckets=16",
                 f"student.hash_count={hash_count}"] if sid else [])
    cfg = load_config(CONFIGS_DIR / "smoke.yaml", [f"dataset={logs}", *FAST, *sid_keys])
    ctx = open_run(cfg, root / "run")
    run_pipeline(ctx, root / "results")
    # The results carry this run's own total (not a stale one from an earlier run).
    (report,) = [json.loads(p.read_text()) for p in (root / "results").glob("quality-*.json")]
    assert report["run"]["pipeline"]["seconds"] > 0
    return root / "run" / "bundle"


def _first_interactions_only(path: Path) -> None:
    """Keep each user's first interaction with an item, as in MovieLens (one rating each).

    The device never shows an item it has seen, while offline ranking keeps a repeated target
    rankable; without repeats the two agree, so simulated and offline metrics can be compared.
    """
    import csv

    with path.open() as f:
        rows = list(csv.reader(f))
    seen: set[tuple[str, str]] = set()
    kept = [rows[0]]
    for row in rows[1:]:
        if (row[0], row[1]) not in seen:
            seen.add((row[0], row[1]))
            kept.append(row)
    with path.open("w", newline="") as f:
        csv.writer(f).writerows(kept)


def clone_bundle(src: Path, dst: Path, version: str) -> Path:
    """The same files under a new version (what a retrained bundle pair looks like to the cloud).

    Both manifests are rewritten with the new version, and the cloud one names the new device
    manifest's digest, so the clone is a valid pair.
    """
    shutil.copytree(src, dst)
    device, _ = read_pair(dst)
    pair = pair_dirs(dst)
    for side in (pair.device, pair.cloud):
        (side / MANIFEST_NAME).unlink()
    extra = dict(device.get("extra") or {})
    write_pair_manifests(dst, version=version, dataset=device["dataset"],
                         config=device["config"], metrics=device["metrics"],
                         serving=extra.pop("serving", {}), device_extra=extra)
    return dst


def with_device_new(src: Path, dst: Path, version: str, new: list[int]) -> Path:
    """A clone whose cloud side records `new` as the items its device model never trained on
    (what a pair of the new-item protocol records): the cloud flags them in its answers."""
    table_path = pair_dirs(src).cloud / "item_table.json"
    table = json.loads(table_path.read_text())
    shutil.copytree(src, dst)
    (pair_dirs(dst).cloud / "item_table.json").write_text(json.dumps({**table, "device_new": new}))
    tmp = dst.with_name(dst.name + ".tmp")
    dst.rename(tmp)
    clone_bundle(tmp, dst, version)
    shutil.rmtree(tmp)
    return dst


def item_intents(bundle: Path) -> list[int]:
    """Level-1 intent token per item id (0..N) from the cloud's full item table."""
    return json.loads((pair_dirs(bundle).cloud / "item_table.json").read_text())["intent"]
