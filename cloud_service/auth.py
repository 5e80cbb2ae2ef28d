"""Device and admin authentication: API keys, or HMAC-signed device tokens bound to a device id.

A device token is `v1.<device id, base64url>.<expiry, unix seconds>.<hex HMAC-SHA256>`, signed
with `TANDEM_CLOUD_DEVICE_TOKEN_SECRET`. An app backend mints one per install (`make_token`), so
the cloud never stores per-device secrets and a leaked token expires on its own.
Only a token proves which device is calling; an app API key is shared by all installs.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time

from cloud_service.domain import Credentials, Principal
from cloud_service.errors import PermissionDenied, Unauthenticated
from cloud_service.settings import CloudSettings


def _sign(secret: str, body: str) -> str:
    return hmac.new(secret.encode(), body.encode(), hashlib.sha256).hexdigest()


def make_token(secret: str, device_id: str, ttl_s: int = 30 * 86400,
               now: float | None = None) -> str:
    """Mint a device token valid for `ttl_s` seconds (run by the app's backend, not the device)."""
    if not secret:
        raise ValueError("a device token secret is required to mint tokens")
    expiry = int((time.time() if now is None else now) + ttl_s)
    dev = base64.urlsafe_b64encode(device_id.encode()).decode().rstrip("=")
    body = f"v1.{dev}.{expiry}"
    return f"{body}.{_sign(secret, body)}"


def token_device(secret: str, token: str, now: float | None = None) -> str:
    """The device id a valid token was minted for; Unauthenticated if forged or expired."""
    parts = token.split(".")
    if len(parts) != 4 or parts[0] != "v1" or not parts[2].isdigit():
        raise Unauthenticated("malformed device token: expected v1.<device>.<expiry>.<signature>")
    body = ".".join(parts[:3])
    if not hmac.compare_digest(_sign(secret, body), parts[3]):
        raise Unauthenticated("device token signature does not match")
    if int(parts[2]) < (time.time() if now is None else now):
        raise Unauthenticated("device token expired: ask the app backend for a new one")
    padded = parts[1] + "=" * (-len(parts[1]) % 4)
    try:
        return base64.urlsafe_b64decode(padded).decode()
    except (ValueError, UnicodeDecodeError) as exc:
        raise Unauthenticated("malformed device token: bad device id") from exc


def key_id(api_key: str) -> str:
    """A stable, non-secret name for an API key (rate buckets and logs never hold the key)."""
    return hashlib.sha256(api_key.encode()).hexdigest()[:16]


def check_device(creds: Credentials, device_id: str, settings: CloudSettings) -> Principal:
    """Authenticate a device call and say whom it acts for (see `Principal`).

    A device token acts only for the device it was minted for: another device id in the body
    is PermissionDenied. An app API key is shared by every install of the app, so it proves
    no device identity and gets the stateless principal.
    """
    if not settings.auth_required:
        return Principal("open", device_id=device_id)
    secret = settings.device_token_secret.get_secret_value()
    if creds.device_token and secret:
        own = token_device(secret, creds.device_token)
        if own != device_id:
            raise PermissionDenied("this device token acts only for the device it was minted "
                                   "for; the request names another device_id")
        return Principal("device", device_id=own)
    if creds.api_key:
        keys = [k.get_secret_value() for k in settings.device_api_keys]
        if any(hmac.compare_digest(creds.api_key, k) for k in keys):
            return Principal("app", key_id=key_id(creds.api_key))
        raise Unauthenticated("unknown device API key")
    raise Unauthenticated("missing credentials: send an x-api-key header or a "
                          "'authorization: Bearer <device token>' header")


def check_admin(creds: Credentials, settings: CloudSettings) -> None:
    """Admin operations (publish, registry changes) need the admin key, whatever else is sent."""
    admin = settings.admin_api_key.get_secret_value()
    if not admin:
        raise PermissionDenied("admin operations are disabled: set TANDEM_CLOUD_ADMIN_API_KEY")
    if not creds.admin_key:
        if creds.api_key or creds.device_token:
            raise PermissionDenied("device credentials cannot perform admin operations")
        raise Unauthenticated("missing admin key: send an x-admin-key header")
    if not hmac.compare_digest(creds.admin_key, admin):
        raise Unauthenticated("wrong admin key")
