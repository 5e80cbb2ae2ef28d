"""`tandem serve`, `tandem publish` and `tandem registry`: run a cloud replica, move the
registry's pointer, read it, promote a canary or retire a version."""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    from cloud_service.domain import RegistryState
    from cloud_service.registry import ModelRegistry

BundleArg = Annotated[Path, typer.Argument(help="Bundle pair directory, holding device/ and "
                                                "cloud/ (tandem pipeline writes "
                                                "artifacts/<dataset>/bundle).")]


def _fail(message: str) -> None:
    from tandemrec.progress import console

    console.print(f"[bold red]error:[/] {message}")
    raise typer.Exit(code=2)


def serve(
    bundle: Annotated[Path | None, typer.Option(
        help="Bundle to publish at start-up when the registry is empty "
             "(default: $TANDEM_CLOUD_BUNDLE, else artifacts/ml-100k/bundle).")] = None,
    host: Annotated[str | None, typer.Option(help="Listen address ($TANDEM_CLOUD_HOST).")] = None,
    http_port: Annotated[int | None, typer.Option(help="HTTP port; 0 picks a free one.")] = None,
    grpc_port: Annotated[int | None, typer.Option(help="gRPC port; 0 picks a free one.")] = None,
    redis_url: Annotated[str | None, typer.Option(
        help="Shared Redis for several replicas ($TANDEM_CLOUD_REDIS_URL): redis://HOST:PORT/0, "
             "or redis+cluster://HOST:PORT[,HOST:PORT...] for a Redis Cluster; none = "
             "in-process store, one replica.")] = None,
    no_auth: Annotated[bool, typer.Option(
        "--no-auth", help="Accept requests without credentials (local demos only).")] = False,
) -> None:
    """Serve the cloud over gRPC and HTTP (one core, both transports) until Ctrl-C.

    Every setting is also a TANDEM_CLOUD_* environment variable (see cloud_service/settings.py);
    device keys, the token secret and the admin key are only read from the environment.
    """
    from pydantic import ValidationError

    from cloud_service.errors import ServiceError
    from cloud_service.server import serve_until_stopped
    from cloud_service.settings import CloudSettings
    from tandemrec.paths import artifacts_dir

    overrides: dict[str, Any] = {"host": host, "http_port": http_port, "grpc_port": grpc_port,
                 "redis_url": redis_url, "bundle": str(bundle) if bundle else None}
    if no_auth:
        overrides["auth_required"] = False
    try:
        settings = CloudSettings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        _fail(f"invalid setting: {exc}")
        return
    if not settings.bundle and (artifacts_dir() / "ml-100k" / "bundle").is_dir():
        settings.bundle = str(artifacts_dir() / "ml-100k" / "bundle")
    if settings.auth_required and not (settings.device_api_keys
                                       or settings.device_token_secret.get_secret_value()):
        _fail("no device credentials configured: set TANDEM_CLOUD_DEVICE_API_KEYS or "
              "TANDEM_CLOUD_DEVICE_TOKEN_SECRET, or pass --no-auth for a local demo")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        serve_until_stopped(settings)
    except ServiceError as exc:
        _fail(exc.message)
    except OSError as exc:
        _fail(f"cannot start: {exc}")


def publish(
    bundle: BundleArg,
    url: Annotated[str | None, typer.Option(
        help="A replica's HTTP address: publish through its admin endpoint (needs "
             "$TANDEM_CLOUD_ADMIN_API_KEY).")] = None,
    redis_url: Annotated[str | None, typer.Option(
        help="Or write the shared registry directly ($TANDEM_CLOUD_REDIS_URL).")] = None,
    canary_share: Annotated[float, typer.Option(
        help="0 makes the bundle current; a share in (0, 1) routes that share of devices to "
             "it as a canary.")] = 0.0,
) -> None:
    """Publish a bundle pair: every replica loads it in the background and switches atomically.

    Both sides are verified (every checksum) and must be paired (same version, the cloud
    manifest naming the device manifest's digest) before anything is published.
    """
    from tandem_contract.bundle import BundleError, verify_pair

    try:
        version = str(verify_pair(bundle)[0]["version"])
    except BundleError as exc:
        _fail(f"bundle refused: {exc}")
        return
    redis_url = redis_url or os.environ.get("TANDEM_CLOUD_REDIS_URL", "")
    if url:
        import httpx

        key = os.environ.get("TANDEM_CLOUD_ADMIN_API_KEY", "")
        resp = httpx.post(f"{url.rstrip('/')}/v1/admin/publish", headers={"x-admin-key": key},
                          json={"bundle_dir": str(bundle.resolve()),
                                "canary_share": canary_share}, timeout=120)
        if resp.status_code != 200:
            _fail(f"publish failed ({resp.status_code}): {resp.text}")
        print(json.dumps(resp.json(), indent=2))
    elif redis_url:
        from cloud_service.errors import ServiceError
        from cloud_service.registry import ModelRegistry
        from cloud_service.store import RedisStore, StoreUnavailable

        async def go() -> None:
            store = RedisStore(redis_url)
            try:
                state = await ModelRegistry(store).publish(version, str(bundle.resolve()),
                                                           canary_share=canary_share)
                print(f"published {version}: current {state.current}, canary "
                      f"{state.canary or '-'} ({state.canary_share:.0%}), revision "
                      f"{state.revision}")
            finally:
                await store.close()
        try:
            asyncio.run(go())
        except (ServiceError, StoreUnavailable) as exc:
            _fail(str(exc))
    else:
        _fail("say where to publish: --url http://HOST:PORT (a replica's admin endpoint) or "
              "--redis-url redis://HOST:PORT/0 (the shared registry)")


# ---- tandem registry status|promote|retire --------------------------------------------------

registry_app = typer.Typer(
    help="Read the model registry, promote its canary or retire a version: through a "
         "replica's admin endpoint (--url over HTTP, --grpc over gRPC; both need "
         "$TANDEM_CLOUD_ADMIN_API_KEY) or directly in the shared Redis (--redis-url).",
    no_args_is_help=True)
UrlOpt = Annotated[str | None, typer.Option(
    help="A replica's HTTP address, e.g. http://127.0.0.1:8000 (its admin endpoint).")]
GrpcOpt = Annotated[str | None, typer.Option(
    "--grpc", help="Or a replica's gRPC address, e.g. 127.0.0.1:50051.")]
RedisOpt = Annotated[str | None, typer.Option(
    help="Or the shared registry in Redis ($TANDEM_CLOUD_REDIS_URL).")]


def _registry_call(op: str, body: dict[str, str], url: str | None, grpc_target: str | None,
                   redis_url: str | None,
                   direct: Callable[[ModelRegistry], Awaitable[RegistryState]]) -> None:
    """Run one registry operation where the options say, and print the registry after it."""
    key = os.environ.get("TANDEM_CLOUD_ADMIN_API_KEY", "")
    redis_url = redis_url or os.environ.get("TANDEM_CLOUD_REDIS_URL", "")
    if url:
        import httpx

        base = f"{url.rstrip('/')}/v1/admin"
        try:
            resp = (httpx.get(f"{base}/registry", headers={"x-admin-key": key}, timeout=30)
                    if op == "status" else
                    httpx.post(f"{base}/{op}", headers={"x-admin-key": key}, json=body,
                               timeout=120))
        except httpx.HTTPError as exc:
            _fail(f"{op} failed: cannot reach {url}: {exc}")
            return
        if resp.status_code != 200:
            _fail(f"{op} failed ({resp.status_code}): {resp.text}")
        out = resp.json()
    elif grpc_target:
        import grpc
        from google.protobuf.json_format import MessageToDict

        from tandem_wire.v1 import recommend_pb2 as pb
        from tandem_wire.v1 import recommend_pb2_grpc as pb_grpc

        with grpc.insecure_channel(grpc_target) as channel:
            stub = pb_grpc.TandemServiceStub(channel)
            method, request = {
                "status": (stub.GetRegistryStatus, pb.GetRegistryStatusRequest()),
                "promote": (stub.Promote, pb.PromoteRequest()),
                "retire": (stub.Retire, pb.RetireRequest(**body)),
            }[op]
            try:
                reply = method(request, metadata=(("x-admin-key", key),), timeout=120)
            except grpc.RpcError as exc:
                _fail(f"{op} failed ({exc.code().name}): {exc.details()}")
                return
        out = MessageToDict(reply, preserving_proto_field_name=True,
                            always_print_fields_with_no_presence=True)
        out["revision"] = int(out["revision"])  # proto3 JSON writes int64 as a string
    elif redis_url:
        from cloud_service.errors import ServiceError
        from cloud_service.registry import ModelRegistry
        from cloud_service.store import RedisStore, StoreUnavailable

        async def go() -> RegistryState:
            store = RedisStore(redis_url)
            try:
                return await direct(ModelRegistry(store))
            finally:
                await store.close()
        try:
            state = asyncio.run(go())
        except (ServiceError, StoreUnavailable) as exc:
            _fail(f"{op} failed: {exc}")
            return
        out = {"current": state.current, "canary": state.canary,
               "canary_share": state.canary_share, "versions": sorted(state.versions),
               "revision": state.revision}
    else:
        _fail("say where the registry is: --url http://HOST:PORT (a replica's HTTP admin "
              "endpoint), --grpc HOST:PORT (its gRPC one) or --redis-url "
              "redis://HOST:PORT/0 (the shared registry)")
        return
    print(json.dumps(out, indent=2))


@registry_app.command("status")
def registry_status(url: UrlOpt = None, grpc: GrpcOpt = None, redis_url: RedisOpt = None) -> None:
    """Print the current version, the canary and its share, and every live version."""
    _registry_call("status", {}, url, grpc, redis_url, lambda reg: reg.state())


@registry_app.command("promote")
def registry_promote(url: UrlOpt = None, grpc: GrpcOpt = None,
                     redis_url: RedisOpt = None) -> None:
    """Make the running canary the current version for every device.

    The replica called switches at once, the others within their registry poll interval.
    """
    _registry_call("promote", {}, url, grpc, redis_url, lambda reg: reg.promote_canary())


@registry_app.command("retire")
def registry_retire(
    version: Annotated[str, typer.Argument(help="A live version other than the current one.")],
    url: UrlOpt = None, grpc: GrpcOpt = None, redis_url: RedisOpt = None,
) -> None:
    """Forget a version that is not current; retiring the canary ends it.

    Every device is then served the current version again (the old current stays listed
    after a promote, as a rollback target, until it is retired).
    """
    _registry_call("retire", {"version": version}, url, grpc, redis_url,
                   lambda reg: reg.retire(version))
