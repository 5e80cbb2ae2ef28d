"""Model bundles: a directory plus manifest.json listing every file's sha256 and size.

Devices call ``verify_bundle`` before swapping models so a truncated download, a corrupted
file or a hand-edited manifest is refused. This is integrity checking, not authenticity:
nothing is signed, so anyone able to rewrite the whole bundle can rewrite the manifest too.

One run writes a *pair* of bundles under one directory (``<run_dir>/bundle/``):

- ``device/``: what a device downloads (the int8 student, ``device_items.json``; a
  semantic-id student's pair holds its model alone, and its manifest's ``extra.student``
  says so, see ``tandem_contract.semantic_ids.SidSpec``);
- ``cloud/``: what never leaves the cloud (teacher, codebook, the full item table, whose
  ``device_new`` lists the items the paired device model never trained on), whose
  manifest names the device bundle it was published with (``extra.device_bundle``: version and
  the device manifest's digest).

Both manifests carry the same version. The pair directory is what the cloud loads, the registry
records and ``tandem publish`` takes; devices only ever see the device side. This module stays
torch-free: the edge SDK imports it.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import Any, Final

MANIFEST_NAME: Final[str] = "manifest.json"
FORMAT_VERSION: Final[int] = 1
_TMP_NAME: Final[str] = f".{MANIFEST_NAME}.tmp"
_CHUNK: Final[int] = 1 << 20
DEVICE_DIR: Final[str] = "device"
CLOUD_DIR: Final[str] = "cloud"
DEVICE_ITEMS: Final[str] = "device_items.json"
DEVICE_FILES: Final[tuple[str, ...]] = ("student_int8.onnx", DEVICE_ITEMS)
CLOUD_FILES: Final[tuple[str, ...]] = ("teacher.pt", "codebook.json", "item_table.json")


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
        "created_at": datetime.now(timezone.utc).isoformat(),
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


# ---------------------------------------------------------------------------------------------
# Bundle pairs: <pair>/device/ (downloaded by devices) and <pair>/cloud/ (never leaves the cloud)


@dataclass(frozen=True)
class PairDirs:
    """The directories of one bundle pair."""

    root: Path
    device: Path
    cloud: Path


def pair_dirs(pair_dir: Path | str) -> PairDirs:
    """The device and cloud directories of a pair directory (nothing is checked)."""
    root = Path(pair_dir)
    return PairDirs(root, root / DEVICE_DIR, root / CLOUD_DIR)


def is_pair(path: Path | str) -> bool:
    """True if ``path`` looks like a pair directory (it has device/ and cloud/ manifests)."""
    d = pair_dirs(path)
    return (d.device / MANIFEST_NAME).is_file() and (d.cloud / MANIFEST_NAME).is_file()


def device_dir(path: Path | str) -> Path:
    """The device bundle of ``path``: its device/ side if it is a pair, else ``path`` itself."""
    return pair_dirs(path).device if is_pair(path) else Path(path)


def device_link(device_manifest: dict[str, Any]) -> dict[str, str]:
    """What a cloud manifest records of its device bundle: version and manifest digest."""
    return {"version": str(device_manifest["version"]), "digest": str(device_manifest["digest"])}


def check_pairing(device_manifest: dict[str, Any], cloud_manifest: dict[str, Any]) -> None:
    """Raise ``BundleError`` unless the two manifests belong to one run (version and digest)."""
    if device_manifest.get("version") != cloud_manifest.get("version"):
        raise BundleError(
            f"bundle pair: device version {device_manifest.get('version')!r} differs from cloud "
            f"version {cloud_manifest.get('version')!r}"
        )
    link = (cloud_manifest.get("extra") or {}).get("device_bundle")
    if not isinstance(link, dict):
        raise BundleError("bundle pair: the cloud manifest does not name its device bundle "
                          "(extra.device_bundle)")
    if link != device_link(device_manifest):
        raise BundleError(
            f"bundle pair: the cloud manifest names device bundle {link.get('version')!r} "
            f"(digest {link.get('digest')}), but device/ holds {device_manifest.get('version')!r} "
            f"(digest {device_manifest.get('digest')})"
        )


def _require_pair(pair_dir: Path) -> PairDirs:
    d = pair_dirs(pair_dir)
    missing = [name for name in (DEVICE_DIR, CLOUD_DIR) if not (d.root / name).is_dir()]
    if missing:
        raise BundleError(
            f"{d.root} is not a bundle pair: {' and '.join(m + '/' for m in missing)} missing "
            f"(a pair holds {DEVICE_DIR}/ and {CLOUD_DIR}/; a flat bundle from before the split "
            "must be written again by `tandem evaluate`)"
        )
    extras = sorted(p.name for p in d.root.iterdir() if p.name not in (DEVICE_DIR, CLOUD_DIR))
    if extras:
        raise BundleError(f"bundle pair {d.root}: unexpected entries {', '.join(extras)}")
    return d


def read_pair(pair_dir: Path | str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(device manifest, cloud manifest), structurally checked and paired; files not hashed."""
    d = _require_pair(Path(pair_dir))
    device, cloud = read_manifest(d.device), read_manifest(d.cloud)
    check_pairing(device, cloud)
    return device, cloud


def verify_pair(pair_dir: Path | str) -> tuple[dict[str, Any], dict[str, Any]]:
    """``verify_bundle`` on both sides and ``check_pairing``; returns (device, cloud) manifests."""
    d = _require_pair(Path(pair_dir))
    verify_bundle(d.device)
    verify_bundle(d.cloud)
    return read_pair(d.root)


def pair_version(pair_dir: Path | str) -> str:
    """The version of a pair (checks both manifests and their pairing, not the files)."""
    return str(read_pair(pair_dir)[0]["version"])


def write_pair_manifests(
    pair_dir: Path | str,
    *,
    version: str,
    dataset: str,
    config: dict[str, Any],
    metrics: dict[str, Any],
    serving: dict[str, Any],
    device_extra: dict[str, Any] | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Write device/ then cloud/ manifest.json (the cloud one names the device one); return both.

    `device_extra` adds to the device manifest's extra (a semantic-id student's `student`).
    """
    d = pair_dirs(pair_dir)
    device = write_manifest(d.device, version=version, dataset=dataset, config=config,
                            metrics=metrics, extra={**(device_extra or {}), "serving": serving})
    cloud = write_manifest(d.cloud, version=version, dataset=dataset, config=config,
                           metrics=metrics,
                           extra={"serving": serving, "device_bundle": device_link(device)})
    return device, cloud


def bundle_bytes(bundle_dir: Path | str) -> int:
    """Bytes a bundle takes: the sizes its manifest lists plus manifest.json itself."""
    bundle_dir = Path(bundle_dir)
    files: dict[str, dict[str, Any]] = read_manifest(bundle_dir)["files"]
    return sum(int(e["size"]) for e in files.values()) + (bundle_dir / MANIFEST_NAME).stat().st_size


def bundle_sizes(pair_dir: Path | str) -> dict[str, int]:
    """{"device_bundle_bytes", "cloud_bundle_bytes"} of a pair (what each side ships)."""
    d = pair_dirs(pair_dir)
    return {"device_bundle_bytes": bundle_bytes(d.device),
            "cloud_bundle_bytes": bundle_bytes(d.cloud)}
