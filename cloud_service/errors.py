"""The one error vocabulary of the service, and its mapping to HTTP statuses and gRPC codes.

The core raises these; each transport translates them in exactly one place, so a client sees
the same kind of error and the same message whichever transport it uses.
"""

from __future__ import annotations

from typing import ClassVar


class ServiceError(Exception):
    """Base class: a message meant for the client, an HTTP status and a gRPC code name."""

    http_status: ClassVar[int] = 500
    grpc_code: ClassVar[str] = "INTERNAL"  # a grpc.StatusCode name; the core never imports grpc

    def __init__(self, message: str, *, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after_s = retry_after_s

    def retry_after_header(self) -> str | None:
        """The HTTP Retry-After value: whole seconds, at least 1 (None: no retry hint)."""
        if self.retry_after_s is None:
            return None
        return str(max(1, round(self.retry_after_s)))


class InvalidInput(ServiceError):
    """The request is malformed or out of range; retrying it unchanged cannot succeed."""

    http_status = 400
    grpc_code = "INVALID_ARGUMENT"


class Unauthenticated(ServiceError):
    """Missing, unknown or expired credentials."""

    http_status = 401
    grpc_code = "UNAUTHENTICATED"


class PermissionDenied(ServiceError):
    """Valid credentials that do not allow the operation (a device key on an admin route)."""

    http_status = 403
    grpc_code = "PERMISSION_DENIED"


class NotFound(ServiceError):
    """An unknown model version or artifact name."""

    http_status = 404
    grpc_code = "NOT_FOUND"


class RateLimited(ServiceError):
    """The device's token bucket is empty; `retry_after_s` says when a token frees up."""

    http_status = 429
    grpc_code = "RESOURCE_EXHAUSTED"


class BodyTooLarge(ServiceError):
    """The request body is over the limit: refused after at most the limit has been read.

    HTTP's own case (413) of gRPC's RESOURCE_EXHAUSTED, which `RateLimited` stands for in ERRORS.
    """

    http_status = 413
    grpc_code = "RESOURCE_EXHAUSTED"


class Overloaded(ServiceError):
    """The replica is at its limit of device requests in flight and waiting (admission).

    503 on HTTP, where Unavailable's code says the replica is going away; RESOURCE_EXHAUSTED on
    gRPC, the code gRPC gives for a server out of capacity. Both carry a retry hint.
    """

    http_status = 503
    grpc_code = "RESOURCE_EXHAUSTED"


class Unavailable(ServiceError):
    """The service cannot answer now (no model loaded yet, shutting down); retry later."""

    http_status = 503
    grpc_code = "UNAVAILABLE"


ERRORS: tuple[type[ServiceError], ...] = (
    InvalidInput, Unauthenticated, PermissionDenied, NotFound, RateLimited, Unavailable,
)
