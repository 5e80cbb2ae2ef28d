"""Device and admin authentication: API keys, or device tokens (JWTs) bound to a device id.

A device token is a JWT signed with HS256 under `TANDEM_CLOUD_DEVICE_TOKEN_SECRET`, whose `sub`
is the device id and `exp` its expiry (both required). An app backend mints one per install
(`make_token`, or any JWT library with the same secret), so the cloud never stores per-device
secrets and a leaked token expires on its own. Only a token proves which device is calling; an
app API key is shared by all installs.

Both transports read credentials with `read_credentials` and authenticate them once per request
(`authenticate`, before the body is parsed); the operations take the resulting `Principal`.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Mapping

import jwt

from cloud_service.domain import Credentials, Principal
from cloud_service.errors import PermissionDenied, Unauthenticated
from cloud_service.settings import CloudSettings

ALGORITHM = "HS256"
DEVICE_NOT_ADMIN = "device credentials cannot perform admin operations"


def make_token(secret: str, device_id: str, ttl_s: int = 30 * 86400,
               now: float | None = None) -> str:
    """Mint a device token valid for `ttl_s` seconds (run by the app's backend, not the device)."""
    if not secret:
        raise ValueError("a device token secret is required to mint tokens")
    issued = int(time.time() if now is None else now)
    return jwt.encode({"sub": device_id, "iat": issued, "exp": issued + ttl_s}, secret,
                      algorithm=ALGORITHM)


def token_device(secret: str, token: str) -> str:
    """The device id (`sub`) a valid token was minted for; Unauthenticated if forged or expired."""
    if token.startswith("v1."):
        raise Unauthenticated("old token format: ask the app backend for a new JWT")
    try:
        claims = jwt.decode(token, secret, algorithms=[ALGORITHM],
                            options={"require": ["sub", "exp"]})
    except jwt.ExpiredSignatureError as exc:
        raise Unauthenticated("device token expired: ask the app backend for a new one") from exc
    except jwt.InvalidSignatureError as exc:
        raise Unauthenticated("device token signature does not match") from exc
    except jwt.MissingRequiredClaimError as exc:
        raise Unauthenticated(f"device token lacks the {exc.claim!r} claim") from exc
    except jwt.InvalidTokenError as exc:
        raise Unauthenticated(f"malformed device token: expected a JWT signed with "
                              f"{ALGORITHM} ({exc})") from exc
    device = claims["sub"]
    if not isinstance(device, str) or not device:
        raise Unauthenticated("malformed device token: sub must be the device id")
    return device


def key_id(api_key: str) -> str:
    """A stable, non-secret name for an API key (rate buckets and logs never hold the key)."""
    return hashlib.sha256(api_key.encode()).hexdigest()[:16]


def read_credentials(fields: Mapping[str, str]) -> Credentials:
    """The one reading of credentials, from lowercase HTTP header or gRPC metadata names.

    x-api-key (a device API key), 'authorization: Bearer <device token>', x-admin-key.
    """
    authorization = fields.get("authorization", "")
    token = authorization[7:].strip() if authorization.lower().startswith("bearer ") else ""
    return Credentials(api_key=fields.get("x-api-key", ""), device_token=token,
                       admin_key=fields.get("x-admin-key", ""))


def authenticate(creds: Credentials, settings: CloudSettings, admin: bool) -> Principal:
    """Credentials -> the principal a request acts as; a device token is decoded here, once."""
    return check_admin(creds, settings) if admin else authenticate_device(creds, settings)


def authenticate_device(creds: Credentials, settings: CloudSettings) -> Principal:
    """A device call's principal, before the body names a device (see `acting_for`).

    A device token is its own device; an app API key is shared by every install of the app,
    so it proves no device identity and gets the stateless principal.
    """
    if not settings.auth_required:
        return Principal("open")
    secret = settings.device_token_secret.get_secret_value()
    if creds.device_token and secret:
        return Principal("device", device_id=token_device(secret, creds.device_token))
    if creds.api_key:
        keys = [k.get_secret_value() for k in settings.device_api_keys]
        if any(hmac.compare_digest(creds.api_key, k) for k in keys):
            return Principal("app", key_id=key_id(creds.api_key))
        raise Unauthenticated("unknown device API key")
    raise Unauthenticated("missing credentials: send an x-api-key header or a "
                          "'authorization: Bearer <device token>' header")


def acting_for(who: Principal, device_id: str) -> Principal:
    """The principal of a device operation on `device_id` (the id the request names).

    A device token acts only for the device it was minted for: another device id is
    PermissionDenied. With auth off the named device is trusted.
    """
    if who.kind == "open":
        return Principal("open", device_id=device_id)
    if who.kind == "device" and who.device_id != device_id:
        raise PermissionDenied("this device token acts only for the device it was minted "
                               "for; the request names another device_id")
    if who.kind == "admin":
        raise PermissionDenied("the admin key acts for no device: send device credentials")
    return who


def check_device(creds: Credentials, device_id: str, settings: CloudSettings) -> Principal:
    """Authenticate a device call and say whom it acts for (see `Principal`)."""
    return acting_for(authenticate_device(creds, settings), device_id)


def check_admin(creds: Credentials, settings: CloudSettings) -> Principal:
    """Admin operations (publish, registry changes) need the admin key, whatever else is sent."""
    admin = settings.admin_api_key.get_secret_value()
    if not admin:
        raise PermissionDenied("admin operations are disabled: set TANDEM_CLOUD_ADMIN_API_KEY")
    if not creds.admin_key:
        if creds.api_key or creds.device_token:
            raise PermissionDenied(DEVICE_NOT_ADMIN)
        raise Unauthenticated("missing admin key: send an x-admin-key header")
    if not hmac.compare_digest(creds.admin_key, admin):
        raise Unauthenticated("wrong admin key")
    return Principal("admin")


def require_admin(who: Principal) -> None:
    """An admin operation's check of the principal `check_admin` authenticated."""
    if who.kind != "admin":
        raise PermissionDenied(DEVICE_NOT_ADMIN)
