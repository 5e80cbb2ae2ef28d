"""gRPC and HTTP against one real replica: same answers, same errors, downloads, health."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from pydantic import SecretStr

from cloud_service.auth import make_token
from cloud_service.server import Running
from cloud_service.server import replica_in_thread as live_replica
from cloud_service.settings import CloudSettings
from tandem_wire.v1 import recommend_pb2 as pb
from tandem_wire.v1 import recommend_pb2_grpc as pb_grpc

pytestmark = pytest.mark.integration
TOKEN_SECRET = "token-secret-of-at-least-32-bytes"  # HS256 keys of 32+ bytes (RFC 7518)
DEVICE = (("x-api-key", "device-key"),)
BODY = {"device_id": "dev-1", "intent_tokens": [1, 2], "intent_weights": [0.6, 0.4],
        "coarse_history": [2, 1, 1], "k": 12, "request_id": "abc"}


@pytest.fixture(scope="module")
def replica(bundle: Path) -> Iterator[Running]:
    s = CloudSettings(bundle=str(bundle), http_port=0, grpc_port=0, n_retrieve=40,
                      device_api_keys=[SecretStr("device-key")],
                      device_token_secret=SecretStr(TOKEN_SECRET),
                      admin_api_key=SecretStr("admin-key"), rate_burst=30, rate_per_s=0.05,
                      cache_ttl_s=0)
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


def test_grpc_and_http_return_the_same_items_and_scores(stub, http):
    by_grpc = stub.Recommend(pb.RecommendRequest(**BODY), metadata=DEVICE)
    by_http = http.post("/v1/recommend", json=BODY)
    assert by_http.status_code == 200, by_http.text
    out = by_http.json()
    assert list(by_grpc.item_ids) == out["item_ids"] and len(out["item_ids"]) == 12
    assert list(by_grpc.scores) == out["scores"]  # float32 on both sides, bit for bit
    assert by_grpc.model_version == out["model_version"] and out["request_id"] == "abc"

    full = {"device_id": "dev-1", "item_history": [4, 9, 16], "k": 7}
    g = stub.RecommendFull(pb.RecommendFullRequest(**full), metadata=DEVICE)
    h = http.post("/v1/recommend-full", json=full).json()
    assert list(g.item_ids) == h["item_ids"] and list(g.scores) == h["scores"]


ERRORS = [
    ({"intent_tokens": [9999], "intent_weights": [1.0]}, 400, "INVALID_ARGUMENT",
     "unknown intent tokens"),
    ({"k": 0}, 400, "INVALID_ARGUMENT", "k must be between"),
    ({"intent_tokens": [], "intent_weights": []}, 400, "INVALID_ARGUMENT", "empty"),
    ({"model_version": "nope"}, 404, "NOT_FOUND", "not served"),
]


@pytest.mark.parametrize(("change", "status", "code", "message"), ERRORS)
def test_errors_match_across_transports(stub, http, change, status, code, message):
    body = {**BODY, **change, "device_id": f"err-{len(message)}"}
    resp = http.post("/v1/recommend", json=body)
    assert resp.status_code == status
    assert resp.json()["error"]["code"] == code and message in resp.json()["error"]["message"]
    with pytest.raises(grpc.RpcError) as err:
        stub.Recommend(pb.RecommendRequest(**body), metadata=DEVICE)
    assert err.value.code() == grpc.StatusCode[code]
    assert err.value.details() == resp.json()["error"]["message"]


def test_credentials_are_required_on_both(stub, http):
    resp = http.post("/v1/recommend", json=BODY, headers={"x-api-key": ""})
    assert resp.status_code == 401 and "credentials" in resp.json()["error"]["message"]
    with pytest.raises(grpc.RpcError) as err:
        stub.Recommend(pb.RecommendRequest(**BODY))
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    resp = http.post("/v1/admin/publish", json={"bundle_dir": "/x"})
    assert resp.status_code == 403  # a device key is not an admin key


def test_malformed_payloads_are_client_errors(replica, http):
    for raw in (b"{not json", b"[]", b'{"device_id": 5}'):
        resp = http.post("/v1/recommend", content=raw,
                         headers={"content-type": "application/json"})
        assert resp.status_code == 400, resp.text
        assert resp.json()["error"]["code"] == "INVALID_ARGUMENT"
    resp = http.post("/v1/recommend", json={**BODY, "item_ids": [1, 2]})
    assert resp.status_code == 400 and "item_ids" in resp.json()["error"]["message"]
    resp = http.post("/v1/recommend", content=b"x" * (2 << 20),
                     headers={"content-type": "application/json"})
    assert resp.status_code == 413
    with grpc.insecure_channel(f"127.0.0.1:{replica.grpc_port}") as channel:
        raw_call = channel.unary_unary("/tandem.v1.TandemService/Recommend")
        with pytest.raises(grpc.RpcError) as err:
            raw_call(b"\xff\xff\xff", metadata=DEVICE)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "malformed RecommendRequest" in err.value.details()


def test_rate_limit_is_resource_exhausted_and_429(stub, http):
    body = {**BODY, "device_id": "chatty"}
    # The bucket is the authenticated device's: a device token's (the app key has its own).
    auth = {"authorization": f"Bearer {make_token(TOKEN_SECRET, 'chatty')}"}
    codes = [http.post("/v1/recommend", json=body, headers=auth).status_code
             for _ in range(31)]
    assert codes[:30] == [200] * 30 and codes[30] == 429
    with pytest.raises(grpc.RpcError) as err:
        stub.Recommend(pb.RecommendRequest(**body), metadata=tuple(auth.items()))
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_manifest_and_artifacts_download_with_matching_checksums(stub, http):
    manifest = stub.GetManifest(pb.GetManifestRequest(device_id="dev-3"), metadata=DEVICE)
    assert json.loads(manifest.manifest_json)["version"] == manifest.version
    by_http = http.get("/v1/manifest", params={"device_id": "dev-3"}).json()
    assert by_http["version"] == manifest.version and by_http["n_intents"] > 0
    for f in manifest.files:
        chunks = list(stub.DownloadArtifact(
            pb.DownloadArtifactRequest(name=f.name, device_id="dev-3"), metadata=DEVICE))
        data = b"".join(c.data for c in chunks)
        assert hashlib.sha256(data).hexdigest() == f.sha256
        assert all(c.total_size == f.size for c in chunks)
    name = manifest.files[0].name
    resp = http.get(f"/v1/artifacts/{name}", params={"device_id": "dev-3"})
    assert hashlib.sha256(resp.content).hexdigest() == manifest.files[0].sha256
    missing = http.get("/v1/artifacts/secrets.txt", params={"device_id": "dev-3"})
    assert missing.status_code == 404
    with pytest.raises(grpc.RpcError) as err:
        list(stub.DownloadArtifact(pb.DownloadArtifactRequest(name="../etc/passwd",
                                                              device_id="dev-3"),
                                   metadata=DEVICE))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_health_reflection_readiness_and_metrics(replica, http):
    with grpc.insecure_channel(f"127.0.0.1:{replica.grpc_port}") as channel:
        check = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service="tandem.v1.TandemService"))
        assert check.status == health_pb2.HealthCheckResponse.SERVING
        refl = reflection_pb2_grpc.ServerReflectionStub(channel)
        replies = refl.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(
            list_services="")]))
        names = {s.name for r in replies for s in r.list_services_response.service}
        assert "tandem.v1.TandemService" in names
    assert http.get("/healthz").status_code == 200
    ready = http.get("/readyz")
    assert ready.status_code == 200 and ready.json()["ready"] is True
    assert http.get("/metrics").status_code == 401  # behind the admin key
    metrics = http.get("/metrics", headers={"x-admin-key": "admin-key"}).text
    assert 'tandem_requests_total{code="OK",op="recommend"}' in metrics
    assert "tandem_request_seconds_bucket" in metrics and "tandem_batch_size" in metrics
    assert http.get("/docs").status_code == 200
    assert "/v1/recommend" in http.get("/openapi.json").json()["paths"]
