"""Both transports offer the same operations, convert alike, read credentials alike, and
decode a device token once per request."""

from __future__ import annotations

import asyncio
import inspect
import re
from types import ModuleType
from typing import Any

import httpx
import pytest
from fastapi.routing import APIRoute
from pydantic import BaseModel, SecretStr, TypeAdapter
from starlette.datastructures import Headers

from cloud_service import auth, grpc_convert, http_convert
from cloud_service.domain import (
    ArtifactChunk,
    ArtifactInfo,
    Credentials,
    ManifestInfo,
    Recommendation,
    RegistryState,
)
from cloud_service.grpc_server import SERVICE, build_handlers
from cloud_service.http_app import _fastapi_app, create_app
from cloud_service.http_guard import ADMIN_ROUTES, DEVICE_ROUTES
from cloud_service.http_hot import recommendation_json
from cloud_service.http_schemas import (
    PublishIn,
    RecommendFullIn,
    RecommendIn,
    RecommendOut,
    RetireIn,
)
from cloud_service.service import RecommendationService
from cloud_service.settings import CloudSettings
from tandem_wire.v1 import recommend_pb2 as pb

pytestmark = pytest.mark.core
TOKEN_SECRET = "symmetry-secret-of-at-least-32-bytes"  # HS256 keys of 32+ bytes (RFC 7518)
SETTINGS = CloudSettings(device_api_keys=[SecretStr("device-key")],
                         device_token_secret=SecretStr(TOKEN_SECRET),
                         admin_api_key=SecretStr("admin-key"))
METHODS = [m.name for m in pb.DESCRIPTOR.services_by_name["TandemService"].methods]


def operations(module: ModuleType, wire: str) -> set[str]:
    """The module's converters, named `<what>_(from|to)_<wire>`, without the wire's name."""
    names = {n for n, f in inspect.getmembers(module, inspect.isfunction)
             if f.__module__ == module.__name__}
    assert all(re.fullmatch(rf"\w+_(from|to)_{wire}", n) for n in names), names
    return {n.removesuffix(f"_{wire}") for n in names}


def snake(name: str) -> str:
    return re.sub(r"(?<!^)([A-Z])", r"_\1", name).lower()


def plain(value: Any) -> Any:
    """A pydantic model or protobuf message as nested dicts and lists, for comparison."""
    if isinstance(value, BaseModel):
        return value.model_dump()
    if hasattr(value, "DESCRIPTOR"):
        return {f.name: plain(getattr(value, f.name)) for f in value.DESCRIPTOR.fields}
    if isinstance(value, (list, tuple)) or type(value).__name__.startswith("Repeated"):
        return [plain(v) for v in value]
    return value


def test_both_converter_modules_offer_the_same_operations():
    http, grpc = operations(http_convert, "http"), operations(grpc_convert, "grpc")
    assert http == grpc
    assert "registry_status_to" in http and "credentials_from" in http


def test_http_routes_are_the_grpc_methods_and_the_guard_knows_each_one():
    app = _fastapi_app(RecommendationService(SETTINGS))
    routes = [r for r in app.routes if isinstance(r, APIRoute) and r.path.startswith("/v1/")]
    assert sorted(r.endpoint.__name__ for r in routes) == sorted(snake(m) for m in METHODS)
    for r in routes:
        (method,) = r.methods
        key = (method, r.path.split("{")[0])
        admin = any(d.call.__name__ == "_admin" for d in r.dependant.dependencies)
        assert key in (ADMIN_ROUTES if admin else DEVICE_ROUTES), key
    assert len(routes) == len(ADMIN_ROUTES) + len(DEVICE_ROUTES)


def test_requests_convert_to_the_same_domain_values_from_either_wire():
    rec = dict(request_id="r", device_id="d", intent_tokens=[3, 1], intent_weights=[0.5, 0.25],
               coarse_history=[1, 2], k=7, model_version="v")
    full = dict(request_id="r", device_id="d", item_history=[4, 5], k=3, model_version="v")
    pairs = [
        (http_convert.recommend_request_from_http(RecommendIn(**rec)),
         grpc_convert.recommend_request_from_grpc(pb.RecommendRequest(**rec))),
        (http_convert.recommend_full_request_from_http(RecommendFullIn(**full)),
         grpc_convert.recommend_full_request_from_grpc(pb.RecommendFullRequest(**full))),
        (http_convert.manifest_request_from_http("d", "v"),
         grpc_convert.manifest_request_from_grpc(
             pb.GetManifestRequest(device_id="d", model_version="v"))),
        (http_convert.artifact_request_from_http("a.bin", "d", "v"),
         grpc_convert.artifact_request_from_grpc(
             pb.DownloadArtifactRequest(name="a.bin", device_id="d", model_version="v"))),
        (http_convert.publish_request_from_http(PublishIn(bundle_dir="b", canary_share=0.25)),
         grpc_convert.publish_request_from_grpc(
             pb.PublishRequest(bundle_dir="b", canary_share=0.25))),
        (http_convert.retire_request_from_http(RetireIn(version="v")),
         grpc_convert.retire_request_from_grpc(pb.RetireRequest(version="v"))),
    ]
    for from_http, from_grpc in pairs:
        assert from_http == from_grpc
    assert pairs[0][0].intent_tokens == (3, 1) and pairs[0][0].k == 7


def test_responses_read_the_same_on_either_wire():
    values = [
        ("recommendation", Recommendation((4, 2), (-0.5, -1.25), "v", "r", cached=True,
                                          item_intents=(1, 3), catalog_size=40,
                                          item_codes=(1, 2, 4, 3, 1, 2), code_levels=3,
                                          item_new=(False, True))),
        ("manifest", ManifestInfo("v", "shop", "2024-01-01", (ArtifactInfo("a", "ff", 9),),
                                  "{}", n_items=40, n_intents=8)),
        ("registry_status", RegistryState("v2", "v3", 0.25, {"v3": "/b3", "v2": "/b2"}, 7)),
    ]
    for name, value in values:
        http = plain(getattr(http_convert, f"{name}_to_http")(value))
        assert http == plain(getattr(grpc_convert, f"{name}_to_grpc")(value)), name
    assert http["versions"] == ["v2", "v3"]  # the bundle directories stay in the cloud
    rec = grpc_convert.recommendation_to_grpc(values[0][1])
    back = pb.RecommendResponse.FromString(rec.SerializeToString())
    assert list(back.item_codes) == [1, 2, 4, 3, 1, 2] and back.code_levels == 3
    assert list(back.item_new) == [False, True]
    assert plain(http_convert.recommendation_to_http(values[0][1]))["item_new"] == [False, True]
    # The HTTP hot path writes the very bytes FastAPI writes for the route's response model.
    for rec in (values[0][1], Recommendation((1,), (float("-inf"),), "v\u00e9", "\"r\n")):
        assert recommendation_json(rec) == \
            TypeAdapter(RecommendOut).dump_json(http_convert.recommendation_to_http(rec))
    chunk = ArtifactChunk(b"abc", 3, 6)
    assert http_convert.artifact_chunk_to_http(chunk) == b"abc"
    assert grpc_convert.artifact_chunk_to_grpc(chunk).SerializeToString() == \
        pb.ArtifactChunk(data=b"abc", offset=3, total_size=6).SerializeToString()


@pytest.mark.parametrize("values", [
    {"x-api-key": "device-key"},
    {"authorization": "Bearer tok.en.sig"},
    {"authorization": "bearer   tok.en.sig  ", "x-admin-key": "admin-key"},
    {"authorization": "Basic dXNlcjpwYXNz"},  # not a Bearer: no device token
    {"x-api-key": "k", "authorization": "Bearer t", "x-admin-key": "a"},
    {},
])
def test_the_same_values_give_the_same_credentials_from_headers_and_metadata(values):
    raw = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in values.items()]
    guard = {k.decode("latin-1"): v.decode("latin-1") for k, v in raw}  # as RequestGuard reads
    metadata = (*values.items(), ("trace-bin", b"\x00\x01"))
    expected = auth.read_credentials(values)
    assert http_convert.credentials_from_http(guard) == expected
    assert http_convert.credentials_from_http(Headers(raw=raw)) == expected
    assert grpc_convert.credentials_from_grpc(metadata) == expected
    upper = tuple((k.upper(), v) for k, v in values.items())
    assert grpc_convert.credentials_from_grpc(upper) == expected
    if "x-api-key" in values:
        assert expected.api_key == values["x-api-key"]
    if values.get("authorization", "").lower().startswith("bearer"):
        assert expected.device_token == values["authorization"].split()[1]
    else:
        assert expected.device_token == ""
    assert grpc_convert.credentials_from_grpc(None) == Credentials()


class _Aborted(Exception):
    pass


class _Context:
    """What a unary gRPC handler touches of `grpc.aio.ServicerContext`."""

    def __init__(self, metadata: tuple[tuple[str, str], ...]) -> None:
        self.metadata = metadata
        self.code: Any = None

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self.metadata

    def set_trailing_metadata(self, _: object) -> None:
        pass

    async def abort(self, code: Any, message: str) -> None:
        self.code = code
        raise _Aborted(message)


def test_a_device_token_is_decoded_once_per_request_on_both_transports(monkeypatch):
    decoded: list[str] = []
    real = auth.token_device

    def counted(secret: str, token: str) -> str:
        decoded.append(token)
        return real(secret, token)
    monkeypatch.setattr(auth, "token_device", counted)
    token = auth.make_token(TOKEN_SECRET, "d-1")
    body = RecommendIn(device_id="d-1", intent_tokens=[1], intent_weights=[1.0])
    service = RecommendationService(SETTINGS)  # never started: no model, so UNAVAILABLE

    async def over_http() -> int:
        transport = httpx.ASGITransport(app=create_app(service))
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            resp = await client.post("/v1/recommend", json=body.model_dump(),
                                     headers={"authorization": f"Bearer {token}"})
        return resp.status_code

    async def over_grpc() -> str:
        details = type("Details", (), {"method": f"/{SERVICE}/Recommend"})()
        handler = build_handlers(service).service(details)
        ctx = _Context((("authorization", f"Bearer {token}"),))
        raw = pb.RecommendRequest(**body.model_dump()).SerializeToString()
        with pytest.raises(_Aborted):
            await handler.unary_unary(raw, ctx)
        return ctx.code.name

    assert asyncio.run(over_http()) == 503  # past auth: the core answered
    assert decoded == [token]
    decoded.clear()
    assert asyncio.run(over_grpc()) == "UNAVAILABLE"
    assert decoded == [token]
