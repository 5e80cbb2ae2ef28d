"""The HTTP transport: FastAPI routes over the shared `RecommendationService`.

Routes only convert (`http_convert`) and call the core, with the `Principal` RequestGuard
authenticated (`Device` / `Admin`); the behaviour lives in the core.
Every error, including malformed JSON, router 404s and unexpected failures, leaves as a JSON
body `{"error": {"code", "message"}}` with a 4xx status (5xx only for `UNAVAILABLE` and bugs).
`RequestGuard` (http_guard.py) wraps the app: body limits, early auth, drain accounting.
Swagger UI's assets come from the installed `fastapi-offline` package, so /docs works offline.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated, Any

import fastapi_offline
from fastapi import Depends, FastAPI, Header, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import (
    HTMLResponse,
    JSONResponse,
    Response,
    StreamingResponse,
)
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException

from cloud_service.domain import Credentials, Principal
from cloud_service.errors import ServiceError
from cloud_service.http_convert import (
    artifact_chunk_to_http,
    artifact_request_from_http,
    credentials_from_http,
    manifest_request_from_http,
    manifest_to_http,
    publish_request_from_http,
    recommend_full_request_from_http,
    recommend_request_from_http,
    recommendation_to_http,
    registry_status_to_http,
    retire_request_from_http,
)
from cloud_service.http_guard import RequestGuard, unexpected
from cloud_service.http_schemas import (
    ErrorOut,
    ManifestOut,
    PublishIn,
    RecommendFullIn,
    RecommendIn,
    RecommendOut,
    RegistryStatusOut,
    RetireIn,
)
from cloud_service.service import RecommendationService

STATIC = Path(fastapi_offline.__file__).parent / "static"  # Swagger UI and ReDoc, offline
# gRPC code names for the statuses starlette's router and FastAPI's body parser raise.
HTTP_CODES = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED",
              404: "NOT_FOUND", 405: "UNIMPLEMENTED", 408: "DEADLINE_EXCEEDED",
              413: "RESOURCE_EXHAUSTED", 415: "INVALID_ARGUMENT", 429: "RESOURCE_EXHAUSTED",
              503: "UNAVAILABLE"}
ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorOut} for status in (400, 401, 403, 404, 413, 429, 503)}
# The credential headers, declared on the routes' principal so that /docs lists them; their
# values are read by the one reader, `credentials_from_http`, in RequestGuard or `_principal`.
ApiKey = Annotated[str | None, Header(description="a device API key")]
Authorization = Annotated[str | None, Header(description="'Bearer <device token>'")]
AdminKey = Annotated[str | None, Header(description="the admin API key")]


def _principal(request: Request, admin: bool) -> Principal:
    """The principal RequestGuard authenticated before the body was read: no second decode."""
    who = getattr(request.state, "principal", None)
    if who is None:  # a route the guard does not list is authenticated here, never skipped
        service: RecommendationService = request.app.state.service
        who = service.authenticate(credentials_from_http(request.headers), admin)
    return who


async def _device(request: Request, x_api_key: ApiKey = None,
                  authorization: Authorization = None) -> Principal:
    """Device operations: a device API key (x-api-key) or a device token (Bearer)."""
    return _principal(request, admin=False)


async def _admin(request: Request, x_admin_key: AdminKey = None, x_api_key: ApiKey = None,
                 authorization: Authorization = None) -> Principal:
    """Admin operations: the admin key (x-admin-key); device credentials are refused."""
    return _principal(request, admin=True)


Device = Annotated[Principal, Depends(_device)]
Admin = Annotated[Principal, Depends(_admin)]


def _error(status: int, code: str, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status,
                        headers=headers)


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for e in exc.errors()[:5]:
        where = ".".join(str(p) for p in e.get("loc", ()) if p != "body") or "body"
        parts.append(f"{where}: {e.get('msg', 'invalid')}")
    return "; ".join(parts) or "malformed request"


def create_app(service: RecommendationService) -> RequestGuard:
    """The guarded FastAPI application; the caller starts and stops `service` around it."""
    return RequestGuard(_fastapi_app(service), service, service.settings.max_body_bytes)


def _fastapi_app(service: RecommendationService) -> FastAPI:
    app = FastAPI(title="tandemrec cloud", version="1", docs_url=None, redoc_url=None,
                  description="Device-cloud collaborative recommendation. The same operations "
                  "are served over gRPC (protos/tandem/v1).")
    app.state.service = service
    _add_error_handlers(app)
    _add_docs(app)
    if service.settings.metrics_port is None:
        _add_metrics(app, service)
    _add_routes(app, service)
    return app


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ServiceError)
    async def service_error(_: Request, exc: ServiceError) -> JSONResponse:
        retry = exc.retry_after_header()
        headers = None if retry is None else {"Retry-After": retry}
        return _error(exc.http_status, exc.grpc_code, exc.message, headers)

    @app.exception_handler(RequestValidationError)
    async def bad_request(_: Request, exc: RequestValidationError) -> JSONResponse:
        return _error(400, "INVALID_ARGUMENT", _validation_message(exc))

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, exc: HTTPException) -> JSONResponse:
        # Router 404/405 and FastAPI's body parser (non-UTF-8, deep nesting, huge integers).
        code = HTTP_CODES.get(exc.status_code,
                              "INTERNAL" if exc.status_code >= 500 else "INVALID_ARGUMENT")
        return _error(exc.status_code, code, str(exc.detail),
                      dict(exc.headers) if exc.headers else None)

    @app.exception_handler(Exception)
    async def last_resort(_: Request, exc: Exception) -> JSONResponse:
        error = unexpected(exc)  # the traceback stays in the server log
        return _error(error.http_status, error.grpc_code, error.message)


def _add_docs(app: FastAPI) -> None:
    app.mount("/static/docs", StaticFiles(directory=STATIC), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    async def swagger() -> HTMLResponse:
        return get_swagger_ui_html(openapi_url="/openapi.json", title=f"{app.title} - docs",
                                   swagger_js_url="/static/docs/swagger-ui-bundle.js",
                                   swagger_css_url="/static/docs/swagger-ui.css",
                                   swagger_favicon_url="/static/docs/favicon.png")

    @app.get("/redoc", include_in_schema=False)
    async def redoc() -> HTMLResponse:
        return get_redoc_html(openapi_url="/openapi.json", title=f"{app.title} - ReDoc",
                              redoc_js_url="/static/docs/redoc.standalone.js",
                              redoc_favicon_url="/static/docs/favicon.png",
                              with_google_fonts=False)


def _metrics_response(service: RecommendationService) -> Response:
    return Response(service.metrics.exposition(),
                    media_type="text/plain; version=0.0.4; charset=utf-8")


async def _metrics_access(request: Request, x_admin_key: AdminKey = None,
                          authorization: Authorization = None) -> None:
    """/metrics takes the admin key as x-admin-key or as a Bearer token (what Prometheus sends)."""
    service: RecommendationService = request.app.state.service
    if service.settings.auth_required:
        creds = credentials_from_http(request.headers)
        service.authenticate(Credentials(admin_key=creds.admin_key or creds.device_token),
                             admin=True)


def _add_metrics(app: FastAPI, service: RecommendationService) -> None:
    @app.get("/metrics", response_class=Response, responses={**ERRORS, 200: {
        "description": "Prometheus text exposition",
        "content": {"text/plain": {"schema": {"type": "string"}}}}},
             summary="Prometheus metrics (admin key: x-admin-key or a Bearer token)",
             dependencies=[Depends(_metrics_access)])
    async def metrics() -> Response:
        return _metrics_response(service)


def metrics_app(service: RecommendationService) -> FastAPI:
    """/metrics alone, without a key, for a separate port (`TANDEM_CLOUD_METRICS_PORT`)."""
    app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)

    @app.get("/metrics")
    async def metrics() -> Response:
        return _metrics_response(service)
    return app


def _add_routes(app: FastAPI, service: RecommendationService) -> None:
    """The operations of `tandem.v1.TandemService`, named as its methods: convert, call, convert."""
    @app.post("/v1/recommend", response_model=RecommendOut, responses=ERRORS,
              summary="Collaborative recommendation from intent tokens (no item ids)")
    async def recommend(body: RecommendIn, who: Device) -> RecommendOut:
        rec = await service.recommend(recommend_request_from_http(body), who)
        return recommendation_to_http(rec)

    @app.post("/v1/recommend-full", response_model=RecommendOut, responses=ERRORS,
              summary="Cloud-full baseline: the raw item history goes upstream")
    async def recommend_full(body: RecommendFullIn, who: Device) -> RecommendOut:
        rec = await service.recommend_full(recommend_full_request_from_http(body), who)
        return recommendation_to_http(rec)

    @app.get("/v1/manifest", response_model=ManifestOut, responses=ERRORS,
             summary="The model bundle's manifest for this device")
    async def get_manifest(who: Device, device_id: str = Query(...),
                           model_version: str = Query("")) -> ManifestOut:
        req = manifest_request_from_http(device_id, model_version)
        return manifest_to_http(await service.get_manifest(req, who))

    @app.get("/v1/artifacts/{name:path}", responses=ERRORS, response_class=StreamingResponse,
             summary="Download one bundle file (verify its sha256 against the manifest)")
    async def download_artifact(name: str, who: Device, device_id: str = Query(...),
                                model_version: str = Query("")) -> StreamingResponse:
        req = artifact_request_from_http(name, device_id, model_version)
        chunks = await service.download_artifact(req, who)

        async def body() -> AsyncIterator[bytes]:
            async for chunk in chunks:
                yield artifact_chunk_to_http(chunk)
        return StreamingResponse(body(), media_type="application/octet-stream")

    @app.post("/v1/admin/publish", response_model=RegistryStatusOut, responses=ERRORS,
              summary="Publish a bundle as the current version or as a canary")
    async def publish(body: PublishIn, who: Admin) -> RegistryStatusOut:
        state = await service.publish(publish_request_from_http(body), who)
        return registry_status_to_http(state)

    @app.get("/v1/admin/registry", response_model=RegistryStatusOut, responses=ERRORS,
             summary="The registry as this replica serves it")
    async def get_registry_status(who: Admin) -> RegistryStatusOut:
        return registry_status_to_http(await service.get_registry_status(who))

    @app.post("/v1/admin/promote", response_model=RegistryStatusOut, responses=ERRORS,
              summary="Make the running canary the current version for every device")
    async def promote(who: Admin) -> RegistryStatusOut:
        return registry_status_to_http(await service.promote(who))

    @app.post("/v1/admin/retire", response_model=RegistryStatusOut, responses=ERRORS,
              summary="Forget a version that is not current (ends its canary if it is one)")
    async def retire(body: RetireIn, who: Admin) -> RegistryStatusOut:
        state = await service.retire(retire_request_from_http(body), who)
        return registry_status_to_http(state)

    @app.get("/healthz", summary="Liveness: the process answers")
    async def healthz() -> dict:
        return {"status": "ok"}

    @app.get("/readyz", summary="Readiness: a model is loaded and warmed up")
    async def readyz() -> Response:
        body = service.health()
        return JSONResponse(body, status_code=200 if body["ready"] else 503)
