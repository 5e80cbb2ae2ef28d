"""Installing new model bundles on the device: download, verify, then switch atomically.

The device only ever holds device bundles (the ``device/`` side of a run's bundle pair: the
int8 student and ``device_items.json``); the cloud side never reaches it.

A pointer file names the current bundle and is only ever replaced with os.replace after the new
bundle is fully on disk and verified, so a crash or a bad download never half-switches a model.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Final

from tandem_contract.bundle import (
    MANIFEST_NAME,
    BundleError,
    device_dir,
    read_manifest,
    verify_bundle,
)

POINTER_NAME: Final[str] = "current.json"
_STAGING_PREFIX: Final[str] = "staging-"
# Versions become directory names, so they must be plain names.
_VERSION_RE: Final[re.Pattern[str]] = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


@dataclass(frozen=True)
class UpdateResult:
    """What ``ModelStore.update`` did; ``version`` is the current one afterwards ("" if none)."""

    updated: bool
    version: str
    reason: str


def _check_version(version: object) -> str:
    if not isinstance(version, str) or not _VERSION_RE.fullmatch(version):
        raise BundleError(f"version {version!r} is not a plain name ([A-Za-z0-9._-], <= 128)")
    return version


def _check_name(name: str) -> str:
    """A manifest file name that stays inside the bundle directory, or BundleError."""
    p = PurePosixPath(name)
    if (not name or p.is_absolute() or ".." in p.parts or "\\" in name or "\0" in name
            or name == MANIFEST_NAME):
        raise BundleError(f"manifest file name {name!r} escapes the bundle or is reserved")
    return name


def _fsync(path: Path) -> None:
    """Flush a file, or the entries of a directory, to disk (directories: POSIX only)."""
    if path.is_dir() and os.name != "posix":
        return
    fd = os.open(path, os.O_RDONLY)  # read-only suffices for fsync, even on read-only files
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    """Flush every file and directory under ``root`` so the bundle is on disk before switching."""
    for path in [*root.rglob("*"), root]:
        _fsync(path)


class ModelStore:
    """Bundles under ``root/versions/<version>/``; ``root/current.json`` names the live one.

    Keeps at most ``keep`` versions on disk (the current one always among them), so one
    previous model stays around by default. One updater at a time per store.
    """

    def __init__(self, root: Path | str, keep: int = 2) -> None:
        if keep < 1:
            raise ValueError(f"keep must be >= 1, got {keep}")
        self.root = Path(root)
        self.keep = keep
        self.versions_dir = self.root / "versions"
        self.versions_dir.mkdir(parents=True, exist_ok=True)
        self._updating = False
        # Staging dirs left by a crash mid-download are garbage: nothing points at them.
        for stale in self.root.glob(f"{_STAGING_PREFIX}*"):
            shutil.rmtree(stale, ignore_errors=True)

    def current(self) -> tuple[str, Path] | None:
        """(version, bundle directory) of the live model, or None if none is installed."""
        try:
            pointer = json.loads((self.root / POINTER_NAME).read_text(encoding="utf-8"))
            version, rel = str(pointer["version"]), str(pointer["path"])
        except (OSError, ValueError, KeyError, TypeError):
            return None
        path = self.root / rel
        return (version, path) if path.is_dir() else None

    def _current_version(self) -> str:
        cur = self.current()
        return cur[0] if cur else ""

    def _stage(self) -> Path:
        return Path(tempfile.mkdtemp(prefix=_STAGING_PREFIX, dir=self.root))

    def _commit(self, staging: Path, version: str) -> None:
        """Move a verified staging dir into versions/, switch the pointer, prune old versions."""
        _fsync_tree(staging)
        target = self.versions_dir / version
        if target.exists():  # never the current one: callers return early for that version
            shutil.rmtree(target)
        os.replace(staging, target)
        os.utime(target)  # mtime = install time, the order pruning goes by
        _fsync(self.versions_dir)
        pointer = {"version": version, "path": f"versions/{version}"}
        tmp = self.root / f".{POINTER_NAME}.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(pointer, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.root / POINTER_NAME)
        _fsync(self.root)
        self._prune(version)

    def _prune(self, current: str) -> None:
        others = [d for d in self.versions_dir.iterdir() if d.is_dir() and d.name != current]
        others.sort(key=lambda d: d.stat().st_mtime, reverse=True)
        for old in others[self.keep - 1:]:
            shutil.rmtree(old, ignore_errors=True)

    def install_local(self, bundle_dir: Path | str) -> str:
        """Copy a device bundle in, verify it and make it current (first install, sideload).

        ``bundle_dir`` is a device bundle or a bundle pair (then only its device/ side is
        copied). Raises BundleError or OSError and leaves the current model as it was; a bundle
        whose version is already current is a no-op.
        """
        bundle_dir = device_dir(bundle_dir)
        version = _check_version(read_manifest(Path(bundle_dir))["version"])
        if version == self._current_version():
            return version
        staging = self._stage()
        try:
            shutil.copytree(bundle_dir, staging, dirs_exist_ok=True)
            verify_bundle(staging)
            self._commit(staging, version)
        finally:
            shutil.rmtree(staging, ignore_errors=True)  # already moved away on success
        return version

    async def update(
        self,
        fetch_manifest: Callable[[], Awaitable[dict[str, Any]]],
        fetch_artifact: Callable[[str], AsyncIterator[bytes]],
    ) -> UpdateResult:
        """Download the advertised bundle if it is new, verify every byte, then switch to it.

        Never raises for a failed fetch, download or verification: the current model stays and
        the result says why. Cancellation still propagates (after cleaning up).
        """
        current = self._current_version()
        if self._updating:
            return UpdateResult(False, current, "another update is in progress")
        self._updating = True
        try:
            return await self._update(current, fetch_manifest, fetch_artifact)
        finally:
            self._updating = False

    async def _update(
        self,
        current: str,
        fetch_manifest: Callable[[], Awaitable[dict[str, Any]]],
        fetch_artifact: Callable[[str], AsyncIterator[bytes]],
    ) -> UpdateResult:
        try:
            manifest = await fetch_manifest()
            if not isinstance(manifest, dict):
                raise BundleError(f"manifest must be an object, got {type(manifest).__name__}")
            version = _check_version(manifest.get("version"))
        except Exception as exc:
            return UpdateResult(False, current, f"manifest fetch failed: {exc}")
        if version == current:
            return UpdateResult(False, current, "up to date")

        staging: Path | None = None
        try:
            staging = self._stage()
            (staging / MANIFEST_NAME).write_text(json.dumps(manifest, sort_keys=True),
                                                 encoding="utf-8")
            # Structure and self-digest first: refuse a bad manifest before downloading anything.
            files: dict[str, dict[str, Any]] = read_manifest(staging)["files"]
            for name in files:
                _check_name(name)
            for name, entry in sorted(files.items()):
                await self._download(fetch_artifact, name, staging / name, int(entry["size"]))
            verify_bundle(staging)
            self._commit(staging, version)
        except Exception as exc:
            return UpdateResult(False, self._current_version(),
                                f"update to {version} failed: {type(exc).__name__}: {exc}")
        finally:
            if staging is not None:
                shutil.rmtree(staging, ignore_errors=True)
        return UpdateResult(True, version, f"updated from {current or 'nothing'} to {version}")

    @staticmethod
    async def _download(fetch_artifact: Callable[[str], AsyncIterator[bytes]], name: str,
                        dest: Path, size: int) -> None:
        dest.parent.mkdir(parents=True, exist_ok=True)
        written = 0
        with open(dest, "wb") as f:
            async for chunk in fetch_artifact(name):
                written += len(chunk)
                # Stop a runaway stream before it fills the device's disk.
                if written > size:
                    raise BundleError(f"{name}: server sent more than the {size} bytes listed")
                f.write(chunk)
