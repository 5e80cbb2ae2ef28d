"""Where the project finds datasets, caches and artifacts (all overridable by environment)."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def data_dir() -> Path:
    """The datasets directory: $TANDEM_DATA_DIR, else ../shared/data beside the checkout or cwd."""
    env = os.environ.get("TANDEM_DATA_DIR")
    if env:
        return Path(env).expanduser().resolve()
    for base in (Path.cwd(), REPO_ROOT):
        candidate = (base / ".." / "shared" / "data").resolve()
        if candidate.is_dir():
            return candidate
    return (REPO_ROOT / ".." / "shared" / "data").resolve()


def cache_dir() -> Path:
    """Cache for derived data such as sentence-encoder vectors ($TANDEM_CACHE_DIR)."""
    env = os.environ.get("TANDEM_CACHE_DIR")
    path = Path(env).expanduser() if env else REPO_ROOT / ".cache"
    path.mkdir(parents=True, exist_ok=True)
    return path


def artifacts_dir() -> Path:
    """Where pipeline runs write checkpoints and bundles ($TANDEM_ARTIFACTS_DIR)."""
    env = os.environ.get("TANDEM_ARTIFACTS_DIR")
    return Path(env).expanduser() if env else REPO_ROOT / "artifacts"
