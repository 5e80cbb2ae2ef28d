"""The gRPC transport: `tandem.v1.TandemService` over the shared `RecommendationService`.

Handlers receive raw bytes and parse them here, so a malformed protobuf is answered with
INVALID_ARGUMENT and a message (gRPC's own deserializer would report INTERNAL). Errors map to
status codes through the one vocabulary in `cloud_service.errors`. Credentials are checked
before the message is parsed, and every call is counted in flight for the drain. The standard
health service and server reflection are on.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from google.protobuf.message import DecodeError
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from cloud_service.domain import (
    Credentials,
    ManifestInfo,
    Recommendation,
    RecommendFullRequest,
    RecommendRequest,
    RegistryState,
)
from cloud_service.errors import InvalidInput, ServiceError
from cloud_service.service import RecommendationService
from tandem_wire.v1 import recommend_pb2 as pb

log = logging.getLogger("tandem.cloud")
SERVICE = pb.DESCRIPTOR.services_by_name["TandemService"].full_name
MAX_MESSAGE_BYTES = 1 << 20


# ---- converters ----------------------------------------------------------------------------

def recommend_from_pb(m: pb.RecommendRequest) -> RecommendRequest:
    return RecommendRequest(device_id=m.device_id, intent_tokens=tuple(m.intent_tokens),
                            intent_weights=tuple(m.intent_weights),
                            coarse_history=tuple(m.coarse_history), k=m.k,
                            model_version=m.model_version, request_id=m.request_id)


def recommend_full_from_pb(m: pb.RecommendFullRequest) -> RecommendFullRequest:
    return RecommendFullRequest(device_id=m.device_id, item_history=tuple(m.item_history),
                                k=m.k, model_version=m.model_version, request_id=m.request_id)


def recommendation_to_pb(r: Recommendation) -> pb.RecommendResponse:
    return pb.RecommendResponse(item_ids=r.item_ids, scores=r.scores,
                                model_version=r.model_version, request_id=r.request_id,
                                cached=r.cached, item_intents=r.item_intents,
                                catalog_size=r.catalog_size)


def manifest_to_pb(m: ManifestInfo) -> pb.Manifest:
    return pb.Manifest(version=m.version, dataset=m.dataset, created_at=m.created_at,
                       files=[pb.Artifact(name=f.name, sha256=f.sha256, size=f.size)
                              for f in m.files],
                       manifest_json=m.manifest_json, n_items=m.n_items, n_intents=m.n_intents)


def registry_to_pb(s: RegistryState) -> pb.RegistryStatus:
    return pb.RegistryStatus(current=s.current, canary=s.canary, canary_share=s.canary_share,
                             versions=sorted(s.versions), revision=s.revision)


def credentials_from(context: grpc.aio.ServicerContext) -> Credentials:
    md = {k.lower(): v for k, v in (context.invocation_metadata() or ())
          if isinstance(v, str)}
    auth = md.get("authorization", "")
    token = auth[7:].strip() if auth.lower().startswith("bearer ") else ""
    return Credentials(api_key=md.get("x-api-key", ""), device_token=token,
                       admin_key=md.get("x-admin-key", ""))


def _parse(cls: Any, raw: bytes) -> Any:
    try:
        return cls.FromString(raw)
    except DecodeError as exc:
        raise InvalidInput(f"malformed {cls.DESCRIPTOR.name} protobuf: {exc}") from exc


async def _abort(context: grpc.aio.ServicerContext, exc: Exception) -> None:
    if isinstance(exc, ServiceError):
        if exc.retry_after_s is not None:
            context.set_trailing_metadata((("retry-after", f"{exc.retry_after_s:.3f}"),))
        await context.abort(grpc.StatusCode[exc.grpc_code], exc.message)
    log.exception("unexpected error", exc_info=exc)
    await context.abort(grpc.StatusCode.INTERNAL, "internal error: the server logged details")


# ---- handlers ------------------------------------------------------------------------------

Call = Callable[[bytes, grpc.aio.ServicerContext], Awaitable[Any]]


def _unary(call: Call):  # noqa: ANN202
    async def handler(raw: bytes, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await call(raw, context)
        except Exception as exc:  # noqa: BLE001 - every error is mapped, none escapes raw
            await _abort(context, exc)
    return grpc.unary_unary_rpc_method_handler(
        handler, response_serializer=lambda m: m.SerializeToString())


def build_handlers(service: RecommendationService) -> grpc.GenericRpcHandler:
    """The method table of TandemService, each method a thin conversion around the core."""

    def guarded(call: Call, admin: bool = False) -> Call:
        async def run(raw: bytes, ctx: grpc.aio.ServicerContext) -> Any:
            with service.in_flight():  # refused once draining closed the doors
                service.authenticate(credentials_from(ctx), admin)  # before parsing
                return await call(raw, ctx)
        return run

    async def recommend(raw: bytes, ctx: grpc.aio.ServicerContext) -> pb.RecommendResponse:
        req = recommend_from_pb(_parse(pb.RecommendRequest, raw))
        return recommendation_to_pb(await service.recommend(req, credentials_from(ctx)))

    async def recommend_full(raw: bytes, ctx: grpc.aio.ServicerContext) -> pb.RecommendResponse:
        req = recommend_full_from_pb(_parse(pb.RecommendFullRequest, raw))
        return recommendation_to_pb(await service.recommend_full(req, credentials_from(ctx)))

    async def get_manifest(raw: bytes, ctx: grpc.aio.ServicerContext) -> pb.Manifest:
        req = _parse(pb.GetManifestRequest, raw)
        return manifest_to_pb(await service.get_manifest(req.model_version, req.device_id,
                                                         credentials_from(ctx)))

    async def publish(raw: bytes, ctx: grpc.aio.ServicerContext) -> pb.RegistryStatus:
        req = _parse(pb.PublishRequest, raw)
        return registry_to_pb(await service.publish(req.bundle_dir, req.canary_share,
                                                    credentials_from(ctx)))

    async def promote(raw: bytes, ctx: grpc.aio.ServicerContext) -> pb.RegistryStatus:
        _parse(pb.PromoteRequest, raw)
        return registry_to_pb(await service.promote(credentials_from(ctx)))

    async def retire(raw: bytes, ctx: grpc.aio.ServicerContext) -> pb.RegistryStatus:
        req = _parse(pb.RetireRequest, raw)
        return registry_to_pb(await service.retire(req.version, credentials_from(ctx)))

    async def registry_status(raw: bytes, ctx: grpc.aio.ServicerContext) -> pb.RegistryStatus:
        _parse(pb.GetRegistryStatusRequest, raw)
        return registry_to_pb(await service.registry_state(credentials_from(ctx)))

    async def download(raw: bytes, ctx: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        try:
            with service.in_flight():
                service.authenticate(credentials_from(ctx), admin=False)
                req = _parse(pb.DownloadArtifactRequest, raw)
                chunks = await service.artifact_chunks(req.model_version, req.name,
                                                       req.device_id, credentials_from(ctx))
                async for data, offset, total in chunks:
                    yield pb.ArtifactChunk(data=data, offset=offset, total_size=total)
        except Exception as exc:  # noqa: BLE001
            await _abort(ctx, exc)

    methods = {
        "Recommend": _unary(guarded(recommend)),
        "RecommendFull": _unary(guarded(recommend_full)),
        "GetManifest": _unary(guarded(get_manifest)),
        "Publish": _unary(guarded(publish, admin=True)),
        "Promote": _unary(guarded(promote, admin=True)),
        "Retire": _unary(guarded(retire, admin=True)),
        "GetRegistryStatus": _unary(guarded(registry_status, admin=True)),
        "DownloadArtifact": grpc.unary_stream_rpc_method_handler(
            download, response_serializer=lambda m: m.SerializeToString()),
    }
    return grpc.method_handlers_generic_handler(SERVICE, methods)


async def start_grpc(service: RecommendationService, host: str, port: int) -> tuple[
        grpc.aio.Server, int, health.aio.HealthServicer]:
    """Start the gRPC server; returns it, the bound port (port 0 picks one) and its health."""
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                                      ("grpc.so_reuseport", 0)])
    server.add_generic_rpc_handlers((build_handlers(service),))
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (SERVICE, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise OSError(f"cannot bind the gRPC port {host}:{port}")
    await server.start()
    status = health_pb2.HealthCheckResponse.SERVING if service.ready else \
        health_pb2.HealthCheckResponse.NOT_SERVING
    for name in ("", SERVICE):
        await health_servicer.set(name, status)
    return server, bound, health_servicer
