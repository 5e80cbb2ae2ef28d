"""Devices see only the device bundle: over real gRPC and HTTP, the cloud side is NOT_FOUND/404."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import grpc
import httpx
import pytest
from pydantic import SecretStr

from cloud_service.server import Running
from cloud_service.server import replica_in_thread as live_replica
from cloud_service.settings import CloudSettings
from tandem_contract.bundle import MANIFEST_NAME, pair_dirs, read_pair
from tandem_wire.v1 import recommend_pb2 as pb
from tandem_wire.v1 import recommend_pb2_grpc as pb_grpc

pytestmark = pytest.mark.integration
DEVICE = (("x-api-key", "device-key"),)
DEVICE_FILES = {"student_int8.onnx", "device_items.json"}
# The cloud side, and ways of reaching it from a device file name.
CLOUD_NAMES = ["teacher.pt", "codebook.json", "item_table.json", "../cloud/teacher.pt",
               "cloud/teacher.pt", "../../cloud/item_table.json"]


@pytest.fixture(scope="module")
def replica(bundle: Path) -> Iterator[Running]:
    s = CloudSettings(bundle=str(bundle), http_port=0, grpc_port=0, n_retrieve=40,
                      device_api_keys=[SecretStr("device-key")],
                      admin_api_key=SecretStr("admin-key"), key_rate_burst=10**6,
                      key_rate_per_s=10**6, cache_ttl_s=0)
    with live_replica(s) as r:
        yield r


@pytest.fixture(scope="module")
def stub(replica: Running) -> Iterator[pb_grpc.TandemServiceStub]:
    with grpc.insecure_channel(f"127.0.0.1:{replica.grpc_port}") as channel:
        yield pb_grpc.TandemServiceStub(channel)


@pytest.fixture(scope="module")
def http(replica: Running) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=f"http://127.0.0.1:{replica.http_port}",
                      headers={"x-api-key": "device-key"}, timeout=30) as client:
        yield client


def grpc_download(stub: pb_grpc.TandemServiceStub, name: str) -> bytes:
    chunks = stub.DownloadArtifact(pb.DownloadArtifactRequest(name=name, device_id="dev-a"),
                                   metadata=DEVICE)
    return b"".join(c.data for c in chunks)


def test_a_device_lists_only_the_device_bundle(stub, http, bundle):
    device, cloud = read_pair(bundle)
    by_grpc = stub.GetManifest(pb.GetManifestRequest(device_id="dev-a"), metadata=DEVICE)
    by_http = http.get("/v1/manifest", params={"device_id": "dev-a"})
    assert by_http.status_code == 200, by_http.text
    for m in (by_grpc, by_http.json()):
        files = m.files if isinstance(m, pb.Manifest) else m["files"]
        names = {f.name if isinstance(f, pb.Artifact) else f["name"] for f in files}
        assert names == DEVICE_FILES
        served = json.loads(m.manifest_json if isinstance(m, pb.Manifest)
                            else m["manifest_json"])
        assert served == device and served["digest"] != cloud["digest"]
        assert "device_bundle" not in served["extra"]
        assert not {"teacher.pt", "codebook.json", "item_table.json"} & set(served["files"])
    assert by_grpc.version == by_http.json()["version"] == device["version"]


def test_a_device_downloads_the_student_and_the_device_manifest(stub, http, bundle):
    device, _ = read_pair(bundle)
    want = device["files"]["student_int8.onnx"]["sha256"]
    assert hashlib.sha256(grpc_download(stub, "student_int8.onnx")).hexdigest() == want
    resp = http.get("/v1/artifacts/student_int8.onnx", params={"device_id": "dev-a"})
    assert resp.status_code == 200 and hashlib.sha256(resp.content).hexdigest() == want
    on_disk = (pair_dirs(bundle).device / MANIFEST_NAME).read_bytes()
    assert grpc_download(stub, MANIFEST_NAME) == on_disk
    resp = http.get(f"/v1/artifacts/{MANIFEST_NAME}", params={"device_id": "dev-a"})
    assert resp.status_code == 200 and resp.content == on_disk


@pytest.mark.parametrize("name", CLOUD_NAMES)
def test_cloud_files_are_not_found_for_a_device(stub, http, bundle, name):
    with pytest.raises(grpc.RpcError) as err:
        grpc_download(stub, name)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    message = err.value.details()
    assert name in message and "student_int8.onnx" in message  # it names what is served
    resp = http.get(f"/v1/artifacts/{quote(name, safe='')}", params={"device_id": "dev-a"})
    assert resp.status_code == 404
    # `/v1/artifacts/{name:path}`: a name with a slash reaches the route too, and is refused
    # by the core like any other name outside the device manifest, in the error envelope.
    body = resp.json()["error"]
    assert body["code"] == "NOT_FOUND" and body["message"] == message
    # Neither transport reveals where the server keeps its bundles.
    root = str(Path(bundle).resolve().parent)
    assert root not in message and root not in resp.text and str(bundle) not in resp.text
