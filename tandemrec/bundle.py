"""Model bundles: a directory plus manifest.json listing every file's sha256 and size.

Devices call ``verify_bundle`` before swapping models so a truncated download, a corrupted
file or a hand-edited manifest is refused. This is integrity checking, not authenticity:
nothing is signed, so anyone able to rewrite the whole bundle can rewrite the manifest too.
"""

from __future__ import annotations

import hashlib
import json
import os
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any, Final

MANIFEST_NAME: Final[str] = "manifest.json"
FORMAT_VERSION: Final[int] = 1
_TMP_NAME: Final[str] = f".{MANIFEST_NAME}.tmp"
_CHUNK: Final[int] = 1 << 20


class BundleError(Exception):
    """A bundle is missing, malformed or does not match its manifest."""


def sha256_file(path: Path | str, chunk_size: int = _CHUNK) -> str:
    """Hex sha256 of a file, read in chunks so large model files never sit in memory."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_size):
            h.update(chunk)
    return h.hexdigest()


def _manifest_digest(manifest: dict[str, Any]) -> str:
    """sha256 of the canonical JSON of the manifest without its own ``digest`` field."""
    body = {k: v for k, v in manifest.items() if k != "digest"}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _bundle_files(bundle_dir: Path) -> list[str]:
    """Relative posix paths of every regular file in the bundle except the manifest, sorted."""
    rel = (p.relative_to(bundle_dir).as_posix() for p in bundle_dir.rglob("*") if p.is_file())
    return sorted(r for r in rel if r not in (MANIFEST_NAME, _TMP_NAME))


def write_manifest(
    bundle_dir: Path,
    *,
    version: str,
    dataset: str,
    config: dict[str, Any],
    metrics: dict[str, Any],
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Hash every file in ``bundle_dir`` and write manifest.json (atomically); return it."""
    bundle_dir = Path(bundle_dir)
    if not bundle_dir.is_dir():
        raise BundleError(f"bundle directory does not exist: {bundle_dir}")
    files = {
        rel: {"sha256": sha256_file(bundle_dir / rel), "size": (bundle_dir / rel).stat().st_size}
        for rel in _bundle_files(bundle_dir)
    }
    manifest: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "version": version,
        "dataset": dataset,
        "created_at": datetime.now(UTC).isoformat(),
        "config": config,
        "metrics": metrics,
        "extra": extra or {},
        "files": files,
    }
    manifest["digest"] = _manifest_digest(manifest)
    # Write-then-rename so a reader never sees a half-written manifest.
    tmp = bundle_dir / _TMP_NAME
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, bundle_dir / MANIFEST_NAME)
    return manifest


def read_manifest(bundle_dir: Path) -> dict[str, Any]:
    """Load and structurally check manifest.json (format version, file table, self-digest)."""
    path = Path(bundle_dir) / MANIFEST_NAME
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BundleError(f"{MANIFEST_NAME}: missing in {bundle_dir}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleError(f"{MANIFEST_NAME}: not valid JSON ({exc})") from None
    if not isinstance(manifest, dict):
        raise BundleError(f"{MANIFEST_NAME}: top level must be an object")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise BundleError(
            f"{MANIFEST_NAME}: format_version {manifest.get('format_version')!r}, "
            f"expected {FORMAT_VERSION}"
        )
    files = manifest.get("files")
    if not isinstance(files, dict) or not all(
        isinstance(e, dict) and isinstance(e.get("sha256"), str) and isinstance(e.get("size"), int)
        for e in files.values()
    ):
        raise BundleError(f"{MANIFEST_NAME}: 'files' must map paths to {{sha256, size}}")
    expected, actual = manifest.get("digest"), _manifest_digest(manifest)
    if expected != actual:
        raise BundleError(
            f"{MANIFEST_NAME}: digest mismatch (expected {expected}, actual {actual}); "
            "the manifest was edited after it was written"
        )
    return manifest


def _safe_relpath(rel: str) -> bool:
    """True if ``rel`` stays inside the bundle (relative, no '..'), so checks cannot escape it."""
    p = PurePosixPath(rel)
    return bool(rel) and not p.is_absolute() and ".." not in p.parts and "\\" not in rel


def verify_bundle(bundle_dir: Path) -> None:
    """Raise ``BundleError`` unless the files on disk are exactly those the manifest lists."""
    bundle_dir = Path(bundle_dir)
    files: dict[str, dict[str, Any]] = read_manifest(bundle_dir)["files"]
    problems: list[str] = []
    for rel, entry in sorted(files.items()):
        if not _safe_relpath(rel):
            problems.append(f"{rel}: path escapes the bundle")
            continue
        path = bundle_dir / rel
        if not path.is_file():
            problems.append(f"{rel}: missing (expected sha256 {entry['sha256']})")
            continue
        actual = sha256_file(path)
        size = path.stat().st_size
        if actual != entry["sha256"] or size != entry["size"]:
            problems.append(
                f"{rel}: sha256 mismatch (expected {entry['sha256']}, actual {actual}; "
                f"size expected {entry['size']}, actual {size})"
            )
    extras = [rel for rel in _bundle_files(bundle_dir) if rel not in files]
    problems += [f"{rel}: extra file not in manifest" for rel in extras]
    if problems:
        raise BundleError(f"bundle {bundle_dir} failed verification: " + "; ".join(problems))
