"""Device model updates: verified downloads switch atomically; anything bad leaves current alone."""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from edge_client.updates import ModelStore, UpdateResult
from tandem_contract.bundle import (
    MANIFEST_NAME,
    BundleError,
    _manifest_digest,
    read_manifest,
    write_manifest,
)

pytestmark = pytest.mark.unit

Fetchers = tuple[Callable[[], Awaitable[dict[str, Any]]], Callable[[str], AsyncIterator[bytes]]]


def make_bundle(root: Path, version: str) -> Path:
    """A small bundle: a binary 'model' and a nested text file, with its manifest."""
    d = root / f"src-{version}"
    (d / "tokenizer").mkdir(parents=True)
    (d / "model.onnx").write_bytes(bytes(range(256)) * 8 + version.encode())
    (d / "tokenizer" / "vocab.txt").write_text(f"a\nb\n{version}\n")
    write_manifest(d, version=version, dataset="toy", config={}, metrics={})
    return d


def serve(bundle: Path, *, chunk: int = 100, fail_after: int | None = None) -> Fetchers:
    """Async fetchers reading the bundle's files in chunks, like an HTTP download would."""

    async def fetch_manifest() -> dict[str, Any]:
        await asyncio.sleep(0)
        return json.loads((bundle / MANIFEST_NAME).read_text())

    async def fetch_artifact(name: str) -> AsyncIterator[bytes]:
        data = (bundle / name).read_bytes()
        for sent, i in enumerate(range(0, len(data), chunk)):
            if fail_after is not None and sent >= fail_after:
                raise ConnectionResetError("connection dropped mid-stream")
            await asyncio.sleep(0)
            yield data[i:i + chunk]

    return fetch_manifest, fetch_artifact


def update(store: ModelStore, fetchers: Fetchers) -> UpdateResult:
    return asyncio.run(store.update(*fetchers))


def staging_dirs(root: Path) -> list[Path]:
    return list(root.glob("staging-*"))


@pytest.fixture
def store(tmp_path: Path) -> ModelStore:
    s = ModelStore(tmp_path / "models")
    assert s.current() is None
    assert s.install_local(make_bundle(tmp_path, "v1")) == "v1"
    return s


def test_install_local_sets_current(store: ModelStore) -> None:
    cur = store.current()
    assert cur is not None and cur[0] == "v1"
    assert cur[1] == store.root / "versions" / "v1"
    assert read_manifest(cur[1])["version"] == "v1"
    pointer = json.loads((store.root / "current.json").read_text())
    assert pointer["version"] == "v1"
    assert staging_dirs(store.root) == []


def test_good_update_switches(store: ModelStore, tmp_path: Path) -> None:
    res = update(store, serve(make_bundle(tmp_path, "v2"), chunk=37))
    assert res.updated and res.version == "v2", res.reason
    cur = store.current()
    assert cur is not None and cur[0] == "v2"
    assert (cur[1] / "tokenizer" / "vocab.txt").read_text().endswith("v2\n")
    assert staging_dirs(store.root) == []


def test_up_to_date_is_a_noop(store: ModelStore, tmp_path: Path) -> None:
    fetch_manifest, _ = serve(tmp_path / "src-v1")  # the bundle the fixture installed

    async def must_not_download(name: str) -> AsyncIterator[bytes]:
        raise AssertionError(f"downloaded {name}")
        yield b""  # pragma: no cover

    res = update(store, (fetch_manifest, must_not_download))
    assert res == UpdateResult(updated=False, version="v1", reason="up to date")


def test_one_changed_byte_is_refused(store: ModelStore, tmp_path: Path) -> None:
    served = make_bundle(tmp_path, "v2")
    data = bytearray((served / "model.onnx").read_bytes())
    data[1000] ^= 0x01  # same size, one bit off: only the hash can tell
    (served / "model.onnx").write_bytes(bytes(data))
    res = update(store, serve(served))
    assert not res.updated and res.version == "v1"
    assert "sha256 mismatch" in res.reason and "model.onnx" in res.reason
    assert store.current() is not None and store.current()[0] == "v1"  # type: ignore[index]
    assert not (store.root / "versions" / "v2").exists()
    assert staging_dirs(store.root) == []


def test_fetcher_failing_mid_stream_keeps_current(store: ModelStore, tmp_path: Path) -> None:
    res = update(store, serve(make_bundle(tmp_path, "v2"), chunk=64, fail_after=3))
    assert not res.updated and res.version == "v1"
    assert "connection dropped" in res.reason
    cur = store.current()
    assert cur is not None and cur[0] == "v1"
    assert sorted(p.name for p in (store.root / "versions").iterdir()) == ["v1"]
    assert staging_dirs(store.root) == []


def test_manifest_fetch_failure_keeps_current(store: ModelStore) -> None:
    async def broken_manifest() -> dict[str, Any]:
        raise TimeoutError("cloud timed out")

    _, fetch_artifact = serve(store.root)
    res = update(store, (broken_manifest, fetch_artifact))
    assert not res.updated and res.version == "v1" and "timed out" in res.reason


def test_oversized_stream_is_cut_off(store: ModelStore, tmp_path: Path) -> None:
    fetch_manifest, _ = serve(make_bundle(tmp_path, "v2"))

    async def endless(name: str) -> AsyncIterator[bytes]:
        while True:
            await asyncio.sleep(0)
            yield b"x" * 4096

    res = update(store, (fetch_manifest, endless))
    assert not res.updated and "more than" in res.reason
    assert staging_dirs(store.root) == []


def test_escaping_file_names_are_rejected(store: ModelStore, tmp_path: Path) -> None:
    served = make_bundle(tmp_path, "v2")
    requested: list[str] = []
    for bad in ("../evil.bin", "/etc/evil.bin"):
        manifest = read_manifest(served)
        manifest["files"][bad] = {"sha256": "0" * 64, "size": 1}
        manifest["digest"] = _manifest_digest(manifest)  # a consistent, malicious manifest

        async def fetch_manifest(m: dict[str, Any] = manifest) -> dict[str, Any]:
            return m

        async def fetch_artifact(name: str) -> AsyncIterator[bytes]:
            requested.append(name)
            yield b"x"

        res = update(store, (fetch_manifest, fetch_artifact))
        assert not res.updated and "escapes" in res.reason, res.reason
    assert requested == []  # refused before any download
    assert not (store.root / "evil.bin").exists()
    assert store.current() is not None and store.current()[0] == "v1"  # type: ignore[index]


def test_old_versions_are_pruned(store: ModelStore, tmp_path: Path) -> None:
    for v in ("v2", "v3", "v4"):
        res = update(store, serve(make_bundle(tmp_path, v)))
        assert res.updated, res.reason
    assert sorted(p.name for p in (store.root / "versions").iterdir()) == ["v3", "v4"]
    assert store.current() is not None and store.current()[0] == "v4"  # type: ignore[index]


def test_install_local_refuses_a_corrupt_bundle(store: ModelStore, tmp_path: Path) -> None:
    bad = make_bundle(tmp_path, "v9")
    (bad / "model.onnx").write_bytes(b"truncated")
    with pytest.raises(BundleError):
        store.install_local(bad)
    assert store.current() is not None and store.current()[0] == "v1"  # type: ignore[index]
    assert staging_dirs(store.root) == []


def test_stale_staging_is_cleaned_and_pointer_survives_reopen(store: ModelStore) -> None:
    stale = store.root / "staging-crashed"
    stale.mkdir()
    (stale / "model.onnx").write_bytes(b"half")
    reopened = ModelStore(store.root)
    assert not stale.exists()
    assert reopened.current() == store.current()


def test_missing_pointer_target_reads_as_no_model(store: ModelStore) -> None:
    shutil.rmtree(store.root / "versions" / "v1")
    assert store.current() is None
