"""gRPC wire <-> domain: the `tandem.v1` messages and call metadata, to and from the core.

The same operations, named alike, as `http_convert` (a test holds the two sets equal); the
field mapping both share is `domain.from_fields` / `domain.to_fields`.
"""

from __future__ import annotations

from collections.abc import Iterable

from cloud_service import domain
from cloud_service.auth import read_credentials
from cloud_service.domain import from_fields, to_fields
from tandem_wire.v1 import recommend_pb2 as pb


def credentials_from_grpc(
        metadata: Iterable[tuple[str, str | bytes]] | None) -> domain.Credentials:
    """Invocation metadata -> credentials; binary (-bin) entries carry none."""
    return read_credentials({k.lower(): v for k, v in metadata or () if isinstance(v, str)})


def recommend_request_from_grpc(m: pb.RecommendRequest) -> domain.RecommendRequest:
    return from_fields(domain.RecommendRequest, m)


def recommend_full_request_from_grpc(
        m: pb.RecommendFullRequest) -> domain.RecommendFullRequest:
    return from_fields(domain.RecommendFullRequest, m)


def recommendation_to_grpc(r: domain.Recommendation) -> pb.RecommendResponse:
    return pb.RecommendResponse(**to_fields(r))


def manifest_request_from_grpc(m: pb.GetManifestRequest) -> domain.ManifestRequest:
    return from_fields(domain.ManifestRequest, m)


def manifest_to_grpc(m: domain.ManifestInfo) -> pb.Manifest:
    return pb.Manifest(**to_fields(m))


def artifact_request_from_grpc(m: pb.DownloadArtifactRequest) -> domain.ArtifactRequest:
    return from_fields(domain.ArtifactRequest, m)


def artifact_chunk_to_grpc(c: domain.ArtifactChunk) -> pb.ArtifactChunk:
    return pb.ArtifactChunk(data=c.data, offset=c.offset, total_size=c.total_size)


def publish_request_from_grpc(m: pb.PublishRequest) -> domain.PublishRequest:
    return from_fields(domain.PublishRequest, m)


def retire_request_from_grpc(m: pb.RetireRequest) -> domain.RetireRequest:
    return from_fields(domain.RetireRequest, m)


def registry_status_to_grpc(s: domain.RegistryState) -> pb.RegistryStatus:
    return pb.RegistryStatus(**to_fields(s))
