"""Write a run's bundle pair: ``bundle/device/`` for devices and ``bundle/cloud/`` for the cloud.

The device side holds what a device needs to build a request and fuse (the int8 student and
``device_items.json``); the cloud side holds the teacher, the codebook and the full item table
(the retrieval index's inputs, and ``device_new``: the items the paired device model never
trained on) and never leaves the cloud. The semantic-id student's pair (``bundle-sid/``,
``pipeline_sid``) has the same cloud side. Both manifests carry one version, and
the cloud manifest names the device manifest's digest (see ``tandem_contract.bundle``).
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tandem_contract.bundle import (
    DEVICE_ITEMS,
    PairDirs,
    bundle_sizes,
    pair_dirs,
    write_pair_manifests,
)
from tandemrec.progress import log

if TYPE_CHECKING:
    from tandemrec.pipeline import RunContext

__all__ = ["bundle_sizes", "device_items", "make_bundle", "write_pair"]


def device_items(table: dict[str, Any], known: np.ndarray) -> dict[str, Any]:
    """The device's view of the full item table: items it does not know carry no intent token,
    no popularity and no title (their ids keep their slots so the tables stay aligned)."""
    n = int(table["n_items"])
    known = np.asarray(known, dtype=bool)
    if known.shape != (n + 1,):
        raise ValueError(f"known must be a bool mask of shape ({n + 1},), got {known.shape}")
    known = known.copy()
    known[0] = False  # padding is never an item
    intent = np.where(known, np.asarray(table["intent"], dtype=np.int64), 0)
    popularity = np.where(known, np.asarray(table["popularity"], dtype=np.float64), 0.0)
    titles = table.get("titles")
    if titles is not None:
        titles = [t if k else "" for t, k in zip(titles, known.tolist(), strict=True)]
    return {"n_items": n, "item_ids": list(table["item_ids"]), "titles": titles,
            "intent": intent.tolist(), "known": known.astype(np.int64).tolist(),
            "popularity": popularity.tolist()}


def make_bundle(ctx: RunContext, rows: list[dict], serving: dict,
                known: np.ndarray | None = None) -> Path:
    """Write ``<run_dir>/bundle/{device,cloud}/`` with their manifests; return the pair dir.

    `serving` (fusion weight, intents sent, history length, candidates) is what the device and
    the cloud need to serve as the evaluation did; it goes into both manifests' `extra`.
    `known` is the (N+1,) bool mask of the items the device knows (None: all of them; index 0,
    padding, is never known). `bundle_sizes(path)` gives each side's bytes.
    """
    mask = np.ones(ctx.n_items + 1, dtype=bool) if known is None else known

    def device(pair: PairDirs, table: dict[str, Any]) -> None:
        shutil.copy2(ctx.path("student_int8.onnx"), pair.device / "student_int8.onnx")
        (pair.device / DEVICE_ITEMS).write_text(json.dumps(device_items(table, mask)))

    return write_pair(ctx, ctx.path("bundle"), rows, serving, mask, device)


def write_pair(ctx: RunContext, root: Path, rows: list[dict], serving: dict,
               known: np.ndarray, device: Callable[[PairDirs, dict[str, Any]], None],
               device_extra: dict[str, Any] | None = None, suffix: str = "") -> Path:
    """A pair at `root` (replaced): `device` fills device/ given the item table; cloud/ is
    every student's cloud side (teacher, codebook, item table with `device_new`)."""
    pair = pair_dirs(root)
    if pair.root.exists():
        shutil.rmtree(pair.root)
    pair.device.mkdir(parents=True)
    pair.cloud.mkdir()
    for name in ("teacher.pt", "codebook.json"):
        shutil.copy2(ctx.path(name), pair.cloud / name)
    codes = json.loads(ctx.path("codebook.json").read_text())["codes"]
    texts = ctx.data.item_texts
    pop = np.load(ctx.path("popularity.npy"))
    table = {"n_items": ctx.n_items, "item_ids": list(ctx.data.item_ids),
             "titles": list(texts) if texts is not None else None,
             "intent": [int(c[0]) for c in codes], "popularity": pop.tolist()}
    device(pair, table)
    # The items the paired device model never trained on: the cloud flags them in its answers.
    unknown = ~np.asarray(known, dtype=bool)
    unknown[0] = False
    (pair.cloud / "item_table.json").write_text(json.dumps(
        {**table, "device_new": np.flatnonzero(unknown).tolist()}))

    version = time.strftime("%Y%m%d-%H%M%S") + suffix
    metrics = {r["mode"]: {"ndcg@10": r["ndcg@10"], "hr@10": r["hr@10"]} for r in rows}
    write_pair_manifests(pair.root, version=version, dataset=ctx.data.name,
                         config=ctx.cfg.to_dict(), metrics=metrics, serving=dict(serving),
                         device_extra=device_extra)
    sizes = bundle_sizes(pair.root)
    log(f"bundle pair {version} written to {pair.root}: device {sizes['device_bundle_bytes']:,} "
        f"bytes, cloud {sizes['cloud_bundle_bytes']:,} bytes")
    return pair.root
