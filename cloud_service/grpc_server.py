"""The gRPC transport: `tandem.v1.TandemService` over the shared `RecommendationService`.

Handlers receive raw bytes and parse them here, so a malformed protobuf is answered with
INVALID_ARGUMENT and a message (gRPC's own deserializer would report INTERNAL). Errors map to
status codes through the one vocabulary in `cloud_service.errors`. Credentials are
authenticated once, before the message is parsed, and the operation takes that principal;
every call is counted in flight for the drain. Device calls (all but the admin methods) then
pass admission control (`cloud_service.admission`, sized by `grpc_max_inflight` and
`grpc_max_queued`): past it, RESOURCE_EXHAUSTED with `retry-after` in the trailing metadata,
counted in `tandem_grpc_refused_total`. The standard health service and server reflection are
on, and never refused.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from google.protobuf.message import DecodeError
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from cloud_service.admission import Admission
from cloud_service.domain import Principal
from cloud_service.errors import InvalidInput, ServiceError
from cloud_service.grpc_convert import (
    artifact_chunk_to_grpc,
    artifact_request_from_grpc,
    credentials_from_grpc,
    manifest_request_from_grpc,
    manifest_to_grpc,
    publish_request_from_grpc,
    recommend_full_request_from_grpc,
    recommend_request_from_grpc,
    recommendation_to_grpc,
    registry_status_to_grpc,
    retire_request_from_grpc,
)
from cloud_service.service import RecommendationService
from tandem_wire.v1 import recommend_pb2 as pb

log = logging.getLogger("tandem.cloud")
SERVICE = pb.DESCRIPTOR.services_by_name["TandemService"].full_name
MAX_MESSAGE_BYTES = 1 << 20


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

Handler = Callable[[bytes, grpc.aio.ServicerContext], Awaitable[Any]]


def _unary(call: Handler) -> grpc.RpcMethodHandler:
    async def handler(raw: bytes, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await call(raw, context)
        except Exception as exc:  # noqa: BLE001 - every error is mapped, none escapes raw
            await _abort(context, exc)
    return grpc.unary_unary_rpc_method_handler(
        handler, response_serializer=lambda m: m.SerializeToString())


def build_handlers(service: RecommendationService) -> grpc.GenericRpcHandler:
    """TandemService's methods: convert in (`grpc_convert`), call the core, convert out."""

    s = service.settings
    admission = Admission(s.grpc_max_inflight, s.grpc_max_queued, service.metrics.grpc_refused)

    def authenticate(ctx: grpc.aio.ServicerContext, admin: bool) -> Principal:
        return service.authenticate(credentials_from_grpc(ctx.invocation_metadata()), admin)

    def admitted(admin: bool) -> contextlib.AbstractAsyncContextManager[None]:
        """A device call's slot, given back however the call ends; operators are never refused."""
        return contextlib.nullcontext() if admin else admission.slot()

    def unary(request: Any, convert_in: Callable[[Any], Any] | None,
              call: Callable[..., Awaitable[Any]], convert_out: Callable[[Any], Any],
              admin: bool = False) -> grpc.RpcMethodHandler:
        """One method; `convert_in` None: the request message is empty (Promote, status)."""
        async def run(raw: bytes, ctx: grpc.aio.ServicerContext) -> Any:
            with service.in_flight():  # refused once draining closed the doors
                who = authenticate(ctx, admin)  # before parsing or taking a slot
                async with admitted(admin):
                    message = _parse(request, raw)
                    args = () if convert_in is None else (convert_in(message),)
                    return convert_out(await call(*args, who))
        return _unary(run)

    async def download_artifact(raw: bytes, ctx: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        try:
            with service.in_flight():
                who = authenticate(ctx, admin=False)
                async with admitted(admin=False):  # held until the last chunk, as over HTTP
                    req = artifact_request_from_grpc(_parse(pb.DownloadArtifactRequest, raw))
                    async for chunk in await service.download_artifact(req, who):
                        yield artifact_chunk_to_grpc(chunk)
        except Exception as exc:  # noqa: BLE001
            await _abort(ctx, exc)

    svc, status = service, registry_status_to_grpc  # every admin method answers the status
    methods = {
        "Recommend": unary(pb.RecommendRequest, recommend_request_from_grpc, svc.recommend,
                           recommendation_to_grpc),
        "RecommendFull": unary(pb.RecommendFullRequest, recommend_full_request_from_grpc,
                               svc.recommend_full, recommendation_to_grpc),
        "GetManifest": unary(pb.GetManifestRequest, manifest_request_from_grpc,
                             svc.get_manifest, manifest_to_grpc),
        "Publish": unary(pb.PublishRequest, publish_request_from_grpc, svc.publish, status,
                         admin=True),
        "Promote": unary(pb.PromoteRequest, None, svc.promote, status, admin=True),
        "Retire": unary(pb.RetireRequest, retire_request_from_grpc, svc.retire, status,
                        admin=True),
        "GetRegistryStatus": unary(pb.GetRegistryStatusRequest, None, svc.get_registry_status,
                                   status, admin=True),
        "DownloadArtifact": grpc.unary_stream_rpc_method_handler(
            download_artifact, response_serializer=lambda m: m.SerializeToString()),
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
