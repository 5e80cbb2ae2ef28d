"""Where the project finds configs, datasets, caches and artifacts (all overridable by environment).

The shipped configs are package data (``tandemrec/configs/``), so they are found the same way
from a checkout and from an installed wheel. Writable places (artifacts, caches) default to the
checkout when tandemrec runs from one, and to the working directory when it is installed.
"""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
CONFIGS_DIR = PACKAGE_DIR / "configs"
# The checkout this package runs from; for an installed wheel this is site-packages, which
# nothing below writes to (see `in_checkout`).
REPO_ROOT = PACKAGE_DIR.parent


def in_checkout() -> bool:
    """True when tandemrec runs from a source checkout (editable install or PYTHONPATH)."""
    return (REPO_ROOT / "pyproject.toml").is_file() and (REPO_ROOT / "tandemrec").is_dir()


def _home() -> Path:
    """The default root of writable state: the checkout, else the working directory."""
    return REPO_ROOT if in_checkout() else Path.cwd()


def config_path(path: Path | str) -> Path:
    """A config file as given, else the shipped config it names.

    ``configs/ml-1m.yaml`` (as the README writes it), ``ml-1m.yaml`` or ``ml-1m`` resolve to
    ``tandemrec/configs/ml-1m.yaml`` when no such file exists relative to the working
    directory, so the same command works from a checkout, from elsewhere and from a wheel.
    Anything else is returned unchanged (the loader reports it as not found).
    """
    given = Path(path).expanduser()
    if given.exists() or given.is_absolute():
        return given
    parts = given.parts[1:] if given.parts[:1] == ("configs",) else given.parts
    if len(parts) == 1:
        name = parts[0] if parts[0].endswith((".yaml", ".yml")) else f"{parts[0]}.yaml"
        shipped = CONFIGS_DIR / name
        if shipped.is_file():
            return shipped
    return given


def default_config(dataset: str) -> Path | None:
    """The shipped config named after a dataset (``configs/<dataset>.yaml``), if there is one."""
    shipped = CONFIGS_DIR / f"{dataset}.yaml"
    return shipped if shipped.is_file() else None


def data_dir() -> Path:
    """The datasets directory: $TANDEM_DATA_DIR, else ../shared/data beside the checkout or cwd."""
    env = os.environ.get("TANDEM_DATA_DIR")
    if env:
        return Path(env).expanduser().resolve()
    bases = (Path.cwd(), REPO_ROOT) if in_checkout() else (Path.cwd(),)
    for base in bases:
        candidate = (base / ".." / "shared" / "data").resolve()
        if candidate.is_dir():
            return candidate
    return (bases[-1] / ".." / "shared" / "data").resolve()


def cache_dir() -> Path:
    """Cache for derived data such as sentence-encoder vectors ($TANDEM_CACHE_DIR)."""
    env = os.environ.get("TANDEM_CACHE_DIR")
    path = Path(env).expanduser() if env else _home() / ".cache"
    path.mkdir(parents=True, exist_ok=True)
    return path


def artifacts_dir() -> Path:
    """Where pipeline runs write checkpoints and bundles ($TANDEM_ARTIFACTS_DIR)."""
    env = os.environ.get("TANDEM_ARTIFACTS_DIR")
    return Path(env).expanduser() if env else _home() / "artifacts"
