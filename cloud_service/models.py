"""Loaded model versions: a bundle pair's teacher, intent index and manifests, ready to score.

A version is a bundle pair directory (``tandem_contract.bundle``): the teacher, codebook and item
table come from its cloud/ side, and devices are only ever shown its device/ side (manifest and
files). Loading (checksums of both sides, their pairing, torch checkpoint, item vectors) happens
in a worker thread, and a version is served only once it is complete, so a reload never exposes
a half-built model.
"""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from cloud_service.domain import ArtifactInfo, ManifestInfo
from tandem_contract.bundle import MANIFEST_NAME, BundleError, pair_dirs, verify_pair
from tandemrec.checkpoints import load_teacher
from tandemrec.models.inputs import left_pad
from tandemrec.models.teacher_ensemble import AnyTeacher
from tandemrec.retrieval import IntentIndex
from tandemrec.teacher_graph import OnnxTeacher, exportable

Runtime = Literal["onnx", "torch"]
log = logging.getLogger("tandem.cloud")


@dataclass(eq=False)  # identity equality: a loaded model is a hashable batching key
class LoadedModel:
    """One bundle version in memory."""

    version: str
    bundle_dir: Path  # the pair directory (what the registry records)
    device_dir: Path  # its device/ side: the only files devices may download
    manifest: ManifestInfo  # the DEVICE manifest: what GetManifest serves
    teacher: AnyTeacher
    index: IntentIndex
    item_intent: np.ndarray  # (N+1,) level-1 token of each item
    item_codes: np.ndarray  # (N+1, L) semantic id of each item (codebook.json), level 1 first
    item_new: np.ndarray  # (N+1,) bool: the paired device model never trained on the item
    n_items: int
    n_intents: int
    lock: threading.Lock  # one teacher call at a time: batching, not threads, gives throughput
    serving: dict  # retrieval settings the bundle was evaluated with (manifest extra)
    graph: OnnxTeacher | None = None  # the teacher's forward in ONNX Runtime; None: torch

    def score(self, seqs: list[np.ndarray], coarse: bool) -> np.ndarray:
        """Teacher scores at the last position: (B, N+1) logits, or an ensemble's log-probs."""
        x = left_pad(seqs, self.teacher.cfg.max_len)
        with self.lock:
            if self.graph is not None:
                return self.graph(x.numpy(), coarse)
            with torch.inference_mode():
                return self.teacher(x, coarse=coarse).float().numpy()

    def semantic_fields(self, items: np.ndarray) -> dict[str, Any]:
        """An answer's semantic ids (flattened) and new-item flags (empty when none is new)."""
        new = self.item_new[items]
        return {"item_codes": tuple(self.item_codes[items].ravel().tolist()),
                "code_levels": int(self.item_codes.shape[1]),
                "item_new": tuple(new.tolist()) if new.any() else ()}

    def artifact_path(self, name: str) -> Path | None:
        """Path of a device-bundle file (or the device manifest); None for anything else.

        Only names the device manifest lists resolve, so the cloud side (teacher, codebook,
        item table) and any path outside device/ are never served.
        """
        if name == MANIFEST_NAME or any(f.name == name for f in self.manifest.files):
            return self.device_dir / name
        return None


def manifest_info(bundle_dir: Path, manifest: dict, n_items: int, n_intents: int) -> ManifestInfo:
    files = tuple(ArtifactInfo(name, e["sha256"], int(e["size"]))
                  for name, e in sorted(manifest["files"].items()))
    return ManifestInfo(version=str(manifest["version"]), dataset=str(manifest["dataset"]),
                        created_at=str(manifest.get("created_at", "")), files=files,
                        manifest_json=(bundle_dir / MANIFEST_NAME).read_text(encoding="utf-8"),
                        n_items=n_items, n_intents=n_intents)


def load_model(bundle_dir: str | Path, runtime: Runtime = "torch", threads: int = 1,
               spin: bool = False) -> LoadedModel:
    """Verify both sides of a pair and their pairing, then load the teacher and the index.

    With `runtime="onnx"` the teacher's forward is exported and served by ONNX Runtime on
    `threads` intra-op threads, spinning between calls if `spin` (a teacher it cannot export
    stays on torch).
    """
    pair = pair_dirs(bundle_dir)
    device_manifest, cloud_manifest = verify_pair(pair.root)
    bundle_dir = pair.root
    teacher, _ = load_teacher(pair.cloud / "teacher.pt")
    table = json.loads((pair.cloud / "item_table.json").read_text(encoding="utf-8"))
    item_intent = np.asarray(table["intent"], dtype=np.int64)
    popularity = np.asarray(table["popularity"], dtype=np.float64)
    n_items, n_intents = int(table["n_items"]), int(teacher.cfg.n_intents)
    if n_intents < 1:
        raise BundleError(f"{bundle_dir}: the teacher has no coarse (intent-token) mode")
    codes = semantic_ids(pair.cloud / "codebook.json", item_intent)
    item_new = device_new(table, n_items)
    with torch.inference_mode():
        teacher.item_vectors()  # computed once now rather than on the first request
    graph = (_onnx_teacher(teacher, threads, spin, pair.root)
             if runtime == "onnx" and exportable(teacher) else None)
    return LoadedModel(version=str(cloud_manifest["version"]), bundle_dir=bundle_dir,
                       device_dir=pair.device,
                       manifest=manifest_info(pair.device, device_manifest, n_items, n_intents),
                       teacher=teacher, index=IntentIndex(item_intent, popularity),
                       item_intent=item_intent, item_codes=codes, item_new=item_new,
                       n_items=n_items, n_intents=n_intents,
                       lock=threading.Lock(),
                       serving=dict((cloud_manifest.get("extra") or {}).get("serving") or {}),
                       graph=graph)


def _onnx_teacher(teacher: AnyTeacher, threads: int, spin: bool, where: Path
                  ) -> OnnxTeacher | None:
    """The teacher in ONNX Runtime, or None (torch serves it) when the export fails."""
    try:
        return OnnxTeacher(teacher, threads, spin)
    except Exception as exc:  # the exporter and ONNX Runtime raise many kinds; torch still works
        log.warning("%s: the teacher did not export to ONNX Runtime, serving it on torch: %s",
                    where, exc)
        return None


def semantic_ids(codebook: Path, item_intent: np.ndarray) -> np.ndarray:
    """(N+1, L) every item's semantic id from the codebook; level 1 must be its intent token."""
    codes = np.asarray(json.loads(codebook.read_text(encoding="utf-8"))["codes"], dtype=np.int64)
    if codes.ndim != 2 or len(codes) != len(item_intent) or codes.shape[1] < 1:
        raise BundleError(f"{codebook}: codes must be one semantic id per item 0..N "
                          f"({len(item_intent)} rows), got shape {codes.shape}")
    if not np.array_equal(codes[:, 0], item_intent):
        raise BundleError(f"{codebook}: level-1 codes differ from the item table's intents")
    return codes


def device_new(table: dict, n_items: int) -> np.ndarray:
    """(N+1,) bool: the items the paired device model never trained on (`device_new` of the
    item table; a bundle from before that record: none)."""
    new = np.zeros(n_items + 1, dtype=bool)
    ids = np.asarray(table.get("device_new", []), dtype=np.int64)
    if len(ids) and (ids.min() < 1 or ids.max() > n_items):
        raise BundleError(f"item_table.json: device_new holds ids outside 1..{n_items}")
    new[ids] = True
    return new
