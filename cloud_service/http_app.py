"""The HTTP transport: FastAPI routes over the shared `RecommendationService`.

Routes only convert (pydantic <-> domain) and map errors; the behaviour lives in the core.
Every error, including malformed JSON and unexpected failures, leaves as a JSON body
`{"error": {"code", "message"}}` with a 4xx status (5xx only for `UNAVAILABLE` and bugs).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Header, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse

from cloud_service.errors import ServiceError
from cloud_service.http_schemas import (
    ErrorOut,
    ManifestOut,
    PublishIn,
    RecommendFullIn,
    RecommendIn,
    RecommendOut,
    RegistryStatusOut,
    credentials,
)
from cloud_service.service import RecommendationService

log = logging.getLogger("tandem.cloud")
MAX_BODY_BYTES = 1 << 20
ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorOut} for status in (400, 401, 403, 404, 413, 429, 503)}


def _error(status: int, code: str, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status,
                        headers=headers)


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for e in exc.errors()[:5]:
        where = ".".join(str(p) for p in e.get("loc", ()) if p != "body") or "body"
        parts.append(f"{where}: {e.get('msg', 'invalid')}")
    return "; ".join(parts) or "malformed request"


def create_app(service: RecommendationService) -> FastAPI:
    """The FastAPI application; the caller starts and stops `service` around it."""
    app = FastAPI(title="tandemrec cloud", version="1",
                  description="Device-cloud collaborative recommendation. The same operations "
                  "are served over gRPC (protos/tandem/v1).")

    @app.exception_handler(ServiceError)
    async def service_error(_: Request, exc: ServiceError) -> JSONResponse:
        headers = None
        if exc.retry_after_s is not None:
            headers = {"Retry-After": str(max(1, round(exc.retry_after_s)))}
        return _error(exc.http_status, exc.grpc_code, exc.message, headers)

    @app.exception_handler(RequestValidationError)
    async def bad_request(_: Request, exc: RequestValidationError) -> JSONResponse:
        return _error(400, "INVALID_ARGUMENT", _validation_message(exc))

    @app.exception_handler(Exception)
    async def unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error", exc_info=exc)  # the traceback stays in the server log
        return _error(500, "INTERNAL", "internal error: the server logged the details")

    @app.middleware("http")
    async def limit_body(request: Request, call_next: Any) -> Response:
        size = request.headers.get("content-length")
        if size and (not size.isdigit() or int(size) > MAX_BODY_BYTES):
            return _error(413, "RESOURCE_EXHAUSTED",
                          f"request body over {MAX_BODY_BYTES} bytes")
        return await call_next(request)

    @app.post("/v1/recommend", response_model=RecommendOut, responses=ERRORS,
              summary="Collaborative recommendation from intent tokens (no item ids)")
    async def recommend(body: RecommendIn, x_api_key: str | None = Header(None),
                        authorization: str | None = Header(None)) -> RecommendOut:
        rec = await service.recommend(body.to_domain(), credentials(x_api_key, authorization))
        return RecommendOut.from_domain(rec)

    @app.post("/v1/recommend-full", response_model=RecommendOut, responses=ERRORS,
              summary="Cloud-full baseline: the raw item history goes upstream")
    async def recommend_full(body: RecommendFullIn, x_api_key: str | None = Header(None),
                             authorization: str | None = Header(None)) -> RecommendOut:
        rec = await service.recommend_full(body.to_domain(), credentials(x_api_key, authorization))
        return RecommendOut.from_domain(rec)

    @app.get("/v1/manifest", response_model=ManifestOut, responses=ERRORS,
             summary="The model bundle's manifest for this device")
    async def manifest(device_id: str = Query(...), model_version: str = Query(""),
                       x_api_key: str | None = Header(None),
                       authorization: str | None = Header(None)) -> ManifestOut:
        m = await service.get_manifest(model_version, device_id,
                                       credentials(x_api_key, authorization))
        return ManifestOut.from_domain(m)

    @app.get("/v1/artifacts/{name}", responses=ERRORS, response_class=StreamingResponse,
             summary="Download one bundle file (verify its sha256 against the manifest)")
    async def artifact(name: str, device_id: str = Query(...), model_version: str = Query(""),
                       x_api_key: str | None = Header(None),
                       authorization: str | None = Header(None)) -> StreamingResponse:
        chunks = await service.artifact_chunks(model_version, name, device_id,
                                               credentials(x_api_key, authorization))

        async def body() -> AsyncIterator[bytes]:
            async for data, _, _ in chunks:
                yield data
        return StreamingResponse(body(), media_type="application/octet-stream")

    @app.post("/v1/admin/publish", response_model=RegistryStatusOut, responses=ERRORS,
              summary="Publish a bundle as the current version or as a canary")
    async def publish(body: PublishIn, x_admin_key: str | None = Header(None),
                      x_api_key: str | None = Header(None),
                      authorization: str | None = Header(None)) -> RegistryStatusOut:
        state = await service.publish(body.bundle_dir, body.canary_share,
                                      credentials(x_api_key, authorization, x_admin_key))
        return RegistryStatusOut.from_domain(state)

    @app.get("/v1/admin/registry", response_model=RegistryStatusOut, responses=ERRORS)
    async def registry(x_admin_key: str | None = Header(None)) -> RegistryStatusOut:
        state = await service.registry_state(credentials(None, None, x_admin_key))
        return RegistryStatusOut.from_domain(state)

    @app.get("/healthz", summary="Liveness: the process answers")
    async def healthz() -> dict:
        return {"status": "ok"}

    @app.get("/readyz", summary="Readiness: a model is loaded and warmed up")
    async def readyz() -> Response:
        body = service.health()
        return JSONResponse(body, status_code=200 if body["ready"] else 503)

    @app.get("/metrics", response_class=PlainTextResponse, summary="Prometheus metrics")
    async def metrics() -> Response:
        return Response(service.metrics.exposition(),
                        media_type="text/plain; version=0.0.4; charset=utf-8")

    return app
