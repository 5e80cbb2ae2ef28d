"""`tandem serve` and `tandem publish`: run a cloud replica, move the registry's pointer."""

from __future__ import annotations

import asyncio
import json
import logging
import os
from pathlib import Path
from typing import Annotated, Any

import typer

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
        help="Shared Redis for several replicas ($TANDEM_CLOUD_REDIS_URL); none = in-process "
             "store, one replica.")] = None,
    no_auth: Annotated[bool, typer.Option(
        "--no-auth", help="Accept requests without credentials (local demos only).")] = False,
) -> None:
    """Serve the cloud over gRPC and HTTP (one core, both transports) until Ctrl-C.

    Every setting is also a TANDEM_CLOUD_* environment variable (see cloud_service/settings.py);
    device keys, the token secret and the admin key are only read from the environment.
    """
    from pydantic import ValidationError

    from cloud_service.errors import ServiceError
    from cloud_service.server import serve as run
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
        asyncio.run(run(settings))
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
    from tandemrec.bundle import BundleError, verify_pair

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
