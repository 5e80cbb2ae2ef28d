"""Bundle pairs: one run writes device/ and cloud/, paired by version and manifest digest."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from edge_client.updates import ModelStore
from tandem_contract.bundle import (
    MANIFEST_NAME,
    BundleError,
    bundle_bytes,
    bundle_sizes,
    device_dir,
    is_pair,
    pair_dirs,
    pair_version,
    read_manifest,
    verify_pair,
    write_manifest,
    write_pair_manifests,
)
from tandemrec.eval.bundles import device_items, make_bundle

pytestmark = pytest.mark.unit

N = 6
SERVING = {"fusion_weight": 0.5, "top_intents": 4}
ROWS = [{"mode": "collaborative", "ndcg@10": 0.2, "hr@10": 0.3}]


def fake_run(root: Path) -> SimpleNamespace:
    """What make_bundle reads of a run: its files, item ids/texts and config (no torch)."""
    run = root / "run"
    run.mkdir()
    (run / "teacher.pt").write_bytes(b"teacher-weights" * 50)
    (run / "student_int8.onnx").write_bytes(b"int8-student" * 10)
    codes = [[0, 0]] + [[1 + i % 3, i % 2] for i in range(N)]
    (run / "codebook.json").write_text(json.dumps({"format": 1, "codes": codes}))
    np.save(run / "popularity.npy", np.arange(N + 1, dtype=np.float64))
    data = SimpleNamespace(name="toy", item_ids=[""] + [f"i{i}" for i in range(1, N + 1)],
                           item_texts=[""] + [f"title {i}" for i in range(1, N + 1)])
    return SimpleNamespace(path=lambda name: run / name, data=data, n_items=N,
                           cfg=SimpleNamespace(to_dict=lambda: {"seed": 1}))


@pytest.fixture
def pair(tmp_path: Path) -> Path:
    return make_bundle(fake_run(tmp_path), ROWS, SERVING)  # type: ignore[arg-type]


def files_under(d: Path) -> set[str]:
    return {p.relative_to(d).as_posix() for p in d.rglob("*") if p.is_file()}


def test_the_pair_is_written_and_the_device_side_holds_no_cloud_file(pair: Path) -> None:
    d = pair_dirs(pair)
    assert pair.name == "bundle" and is_pair(pair) and device_dir(pair) == d.device
    assert {p.name for p in pair.iterdir()} == {"device", "cloud"}
    assert files_under(d.device) == {"student_int8.onnx", "device_items.json", MANIFEST_NAME}
    assert files_under(d.cloud) == {"teacher.pt", "codebook.json", "item_table.json",
                                    MANIFEST_NAME}
    device, cloud = verify_pair(pair)
    assert device["version"] == cloud["version"] == pair_version(pair)
    assert device["extra"] == {"serving": SERVING}
    assert cloud["extra"] == {"serving": SERVING, "device_bundle": {
        "version": device["version"], "digest": device["digest"]}}
    assert device["metrics"] == {"collaborative": {"ndcg@10": 0.2, "hr@10": 0.3}}
    table = json.loads((d.cloud / "item_table.json").read_text())
    assert table["intent"] == [0] + [1 + i % 3 for i in range(N)]
    assert table["popularity"] == list(range(N + 1)) and table["titles"][1] == "title 1"
    assert table["device_new"] == []  # the device model trained on every item


def test_every_item_is_known_by_default(pair: Path) -> None:
    items = json.loads((pair_dirs(pair).device / "device_items.json").read_text())
    table = json.loads((pair_dirs(pair).cloud / "item_table.json").read_text())
    assert items["n_items"] == N and items["known"] == [0] + [1] * N
    for key in ("item_ids", "titles", "intent", "popularity"):
        assert items[key] == table[key], key


def test_unknown_items_carry_nothing_on_the_device(tmp_path: Path) -> None:
    known = np.ones(N + 1, dtype=bool)
    known[[2, 5]] = False  # and index 0 is padding: never known, even if the mask says so
    pair = make_bundle(fake_run(tmp_path), ROWS, SERVING, known=known)  # type: ignore[arg-type]
    items = json.loads((pair_dirs(pair).device / "device_items.json").read_text())
    assert items["known"] == [0, 1, 0, 1, 1, 0, 1]
    assert items["intent"][2] == items["intent"][5] == items["intent"][0] == 0
    assert items["intent"][1] == 1 and items["popularity"][2] == 0.0
    assert items["titles"][2] == "" and items["titles"][3] == "title 3"
    assert items["item_ids"][2] == "i2"  # ids keep their slots so tables stay aligned
    # The cloud still knows every item.
    table = json.loads((pair_dirs(pair).cloud / "item_table.json").read_text())
    assert table["intent"][2] == 2 and table["titles"][5] == "title 5"
    assert table["device_new"] == [2, 5]  # what the cloud flags as new in its answers
    with pytest.raises(ValueError, match="shape"):
        device_items(table, np.ones(N, dtype=bool))


def test_sizes_are_the_listed_files_plus_the_manifest(pair: Path) -> None:
    d = pair_dirs(pair)
    sizes = bundle_sizes(pair)
    for side, key in ((d.device, "device_bundle_bytes"), (d.cloud, "cloud_bundle_bytes")):
        on_disk = sum(p.stat().st_size for p in side.iterdir())
        assert sizes[key] == bundle_bytes(side) == on_disk
    assert sizes["cloud_bundle_bytes"] > sizes["device_bundle_bytes"] > 0


def rewrite_device(pair: Path, version: str) -> None:
    d = pair_dirs(pair).device
    m = read_manifest(d)
    (d / MANIFEST_NAME).unlink()
    write_manifest(d, version=version, dataset=m["dataset"], config=m["config"],
                   metrics=m["metrics"], extra=m["extra"])


def test_a_device_side_of_another_version_is_refused(pair: Path) -> None:
    rewrite_device(pair, "other")
    with pytest.raises(BundleError, match="device version 'other' differs"):
        verify_pair(pair)


def test_a_device_side_rewritten_under_the_same_version_is_refused(pair: Path) -> None:
    version = pair_version(pair)
    items = pair_dirs(pair).device / "device_items.json"
    items.write_text(items.read_text().replace('"n_items"', '"n_items" ', 1))
    rewrite_device(pair, version)  # a valid manifest, but not the one the cloud was paired with
    with pytest.raises(BundleError, match="digest"):
        verify_pair(pair)
    with pytest.raises(BundleError, match="digest"):
        pair_version(pair)


def test_a_cloud_side_without_its_device_link_is_refused(pair: Path) -> None:
    d = pair_dirs(pair).cloud
    m = read_manifest(d)
    (d / MANIFEST_NAME).unlink()
    write_manifest(d, version=m["version"], dataset=m["dataset"], config=m["config"],
                   metrics=m["metrics"], extra={"serving": SERVING})
    with pytest.raises(BundleError, match="does not name its device bundle"):
        verify_pair(pair)


def test_a_corrupted_side_is_refused(pair: Path) -> None:
    teacher = pair_dirs(pair).cloud / "teacher.pt"
    teacher.write_bytes(b"x" + teacher.read_bytes()[1:])
    with pytest.raises(BundleError, match="teacher.pt: sha256 mismatch"):
        verify_pair(pair)


def test_flat_bundles_and_stray_entries_are_refused(pair: Path, tmp_path: Path) -> None:
    flat = tmp_path / "flat"
    shutil.copytree(pair_dirs(pair).cloud, flat)
    assert not is_pair(flat) and device_dir(flat) == flat
    with pytest.raises(BundleError, match="not a bundle pair: device/ and cloud/ missing"):
        verify_pair(flat)
    (pair / "teacher.pt").write_bytes(b"stray")
    with pytest.raises(BundleError, match="unexpected entries teacher.pt"):
        verify_pair(pair)


def test_write_pair_manifests_links_the_two(tmp_path: Path) -> None:
    d = pair_dirs(tmp_path / "p")
    d.device.mkdir(parents=True)
    d.cloud.mkdir()
    (d.device / "a.bin").write_bytes(b"a")
    (d.cloud / "b.bin").write_bytes(b"bb")
    device, cloud = write_pair_manifests(d.root, version="v7", dataset="toy", config={},
                                         metrics={}, serving={})
    assert cloud["extra"]["device_bundle"] == {"version": "v7", "digest": device["digest"]}
    assert verify_pair(d.root) == (device, cloud)


def test_a_device_installs_only_the_device_side_of_a_pair(pair: Path, tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "phone")
    version = store.install_local(pair)
    current = store.current()
    assert current is not None and current[0] == version == pair_version(pair)
    assert files_under(current[1]) == {"student_int8.onnx", "device_items.json", MANIFEST_NAME}
