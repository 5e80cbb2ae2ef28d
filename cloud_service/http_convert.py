"""HTTP wire <-> domain: the JSON API's schemas and headers, to and from the core's types.

The same operations, named alike, as `grpc_convert` (a test holds the two sets equal); the
field mapping both share is `domain.from_fields` / `domain.to_fields`.
"""

from __future__ import annotations

from collections.abc import Mapping

from cloud_service import domain
from cloud_service import http_schemas as schemas
from cloud_service.auth import read_credentials
from cloud_service.domain import from_fields, to_fields


def credentials_from_http(headers: Mapping[str, str]) -> domain.Credentials:
    """Request headers (lowercase names, or starlette's case-blind Headers) -> credentials."""
    return read_credentials(headers)


def recommend_request_from_http(m: schemas.RecommendIn) -> domain.RecommendRequest:
    return from_fields(domain.RecommendRequest, m)


def recommend_full_request_from_http(
        m: schemas.RecommendFullIn) -> domain.RecommendFullRequest:
    return from_fields(domain.RecommendFullRequest, m)


def recommendation_to_http(r: domain.Recommendation) -> schemas.RecommendOut:
    return schemas.RecommendOut(**to_fields(r))


def manifest_request_from_http(device_id: str, model_version: str) -> domain.ManifestRequest:
    """GET /v1/manifest's query parameters."""
    return domain.ManifestRequest(device_id=device_id, model_version=model_version)


def manifest_to_http(m: domain.ManifestInfo) -> schemas.ManifestOut:
    return schemas.ManifestOut(**to_fields(m))


def artifact_request_from_http(name: str, device_id: str,
                               model_version: str) -> domain.ArtifactRequest:
    """GET /v1/artifacts/{name}'s path and query parameters."""
    return domain.ArtifactRequest(device_id=device_id, name=name, model_version=model_version)


def artifact_chunk_to_http(c: domain.ArtifactChunk) -> bytes:
    """The response body's next bytes: HTTP streams the file itself, offsets implied."""
    return c.data


def publish_request_from_http(m: schemas.PublishIn) -> domain.PublishRequest:
    return from_fields(domain.PublishRequest, m)


def retire_request_from_http(m: schemas.RetireIn) -> domain.RetireRequest:
    return from_fields(domain.RetireRequest, m)


def registry_status_to_http(s: domain.RegistryState) -> schemas.RegistryStatusOut:
    return schemas.RegistryStatusOut(**to_fields(s))
