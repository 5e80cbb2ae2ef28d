"""Model bundle manifests: round trip and refusal of corrupted, missing, extra or edited files."""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from pathlib import Path

import pytest

from tandem_contract.bundle import (
    MANIFEST_NAME,
    BundleError,
    read_manifest,
    sha256_file,
    verify_bundle,
    write_manifest,
)

pytestmark = pytest.mark.unit


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    """A small bundle with a nested file and a written manifest."""
    d = tmp_path / "bundle"
    (d / "tokenizer").mkdir(parents=True)
    (d / "model.onnx").write_bytes(bytes(range(256)) * 10)
    (d / "tokenizer" / "vocab.txt").write_text("a\nb\nc\n")
    write_manifest(
        d,
        version="v1",
        dataset="ml-1m",
        config={"dim": 64},
        metrics={"ndcg@10": 0.5},
        extra={"note": "x"},
    )
    return d


def test_sha256_file_matches_hashlib(tmp_path: Path) -> None:
    p = tmp_path / "f.bin"
    data = b"x" * 5000 + b"y"
    p.write_bytes(data)
    # Tiny chunks exercise the streaming loop.
    assert sha256_file(p, chunk_size=7) == hashlib.sha256(data).hexdigest()


def test_round_trip(bundle: Path) -> None:
    m = read_manifest(bundle)
    assert m["format_version"] == 1
    assert (m["version"], m["dataset"]) == ("v1", "ml-1m")
    assert m["config"] == {"dim": 64} and m["metrics"] == {"ndcg@10": 0.5}
    assert m["extra"] == {"note": "x"}
    assert datetime.fromisoformat(m["created_at"]).utcoffset() is not None
    assert set(m["files"]) == {"model.onnx", "tokenizer/vocab.txt"}
    assert m["files"]["model.onnx"] == {
        "sha256": sha256_file(bundle / "model.onnx"),
        "size": 2560,
    }
    verify_bundle(bundle)


def test_one_byte_changed_is_refused(bundle: Path) -> None:
    path = bundle / "model.onnx"
    expected = sha256_file(path)
    data = bytearray(path.read_bytes())
    data[100] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(BundleError) as err:
        verify_bundle(bundle)
    msg = str(err.value)
    assert "model.onnx" in msg and expected in msg and sha256_file(path) in msg


def test_missing_file_is_refused(bundle: Path) -> None:
    (bundle / "tokenizer" / "vocab.txt").unlink()
    with pytest.raises(BundleError, match=r"tokenizer/vocab\.txt: missing"):
        verify_bundle(bundle)


def test_extra_file_is_refused(bundle: Path) -> None:
    (bundle / "evil.py").write_text("import os\n")
    with pytest.raises(BundleError, match=r"evil\.py: extra file"):
        verify_bundle(bundle)


def _edit_manifest(bundle: Path, edit: dict[str, object]) -> None:
    path = bundle / MANIFEST_NAME
    m = json.loads(path.read_text())
    m.update(edit)
    path.write_text(json.dumps(m))


def test_manifest_metadata_tampering_is_refused(bundle: Path) -> None:
    _edit_manifest(bundle, {"metrics": {"ndcg@10": 0.99}})
    with pytest.raises(BundleError, match="digest mismatch"):
        verify_bundle(bundle)


def test_manifest_hash_tampering_is_refused(bundle: Path) -> None:
    # Someone swaps the model and patches the hash but cannot recompute the manifest digest.
    m = read_manifest(bundle)
    files = dict(m["files"])
    files["model.onnx"] = {"sha256": "0" * 64, "size": 2560}
    _edit_manifest(bundle, {"files": files})
    with pytest.raises(BundleError):
        verify_bundle(bundle)


def test_manifest_missing_or_garbage_is_refused(bundle: Path) -> None:
    (bundle / MANIFEST_NAME).write_text("{not json")
    with pytest.raises(BundleError, match="not valid JSON"):
        verify_bundle(bundle)
    (bundle / MANIFEST_NAME).unlink()
    with pytest.raises(BundleError, match="missing"):
        read_manifest(bundle)


def test_rewritten_manifest_covers_new_files(bundle: Path) -> None:
    # Re-running write_manifest after adding a file must not list the manifest itself.
    (bundle / "extra.bin").write_bytes(b"\0")
    m = write_manifest(bundle, version="v2", dataset="ml-1m", config={}, metrics={})
    assert MANIFEST_NAME not in m["files"] and "extra.bin" in m["files"]
    assert m["extra"] == {}
    verify_bundle(bundle)


def test_manifest_path_escape_is_refused(bundle: Path) -> None:
    # Even with a consistent digest, entries may not point outside the bundle directory.
    from tandem_contract.bundle import _manifest_digest

    m = read_manifest(bundle)
    m["files"]["../outside.bin"] = {"sha256": "0" * 64, "size": 1}
    m["digest"] = _manifest_digest(m)
    (bundle / MANIFEST_NAME).write_text(json.dumps(m))
    with pytest.raises(BundleError, match=r"\.\./outside\.bin: path escapes"):
        verify_bundle(bundle)
