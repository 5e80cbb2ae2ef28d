"""Pydantic models of the HTTP API: the protos' messages, field for field, as JSON.

Converters to and from the core's domain types live here too, so the FastAPI routes stay
one line each.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from cloud_service.domain import (
    Credentials,
    ManifestInfo,
    Recommendation,
    RecommendFullRequest,
    RecommendRequest,
    RegistryState,
)

# A misspelt field is an error, not silently dropped; `true` or "1" is no integer.
_STRICT = ConfigDict(extra="forbid", strict=True)


class RecommendIn(BaseModel):
    """Collaborative request: intent tokens only. No field of it can carry an item id."""

    model_config = _STRICT
    request_id: str = Field("", max_length=128)
    device_id: str = Field(..., description="pseudonymous device id", examples=["device-42"])
    intent_tokens: list[int] = Field(..., description="the device's top intent tokens")
    intent_weights: list[float] = Field(..., description="one weight per intent token")
    coarse_history: list[int] = Field(
        default_factory=list, description="intent tokens of the last L interactions, oldest "
        "first; empty = use the history this session sent before")
    k: int = Field(10, description="how many candidates to return")
    model_version: str = Field("", description="empty = the version routed to this device")

    def to_domain(self) -> RecommendRequest:
        return RecommendRequest(device_id=self.device_id,
                                intent_tokens=tuple(self.intent_tokens),
                                intent_weights=tuple(self.intent_weights),
                                coarse_history=tuple(self.coarse_history), k=self.k,
                                model_version=self.model_version, request_id=self.request_id)


class RecommendFullIn(BaseModel):
    """Cloud-full request: uploads the raw item history (the privacy-costly baseline)."""

    model_config = _STRICT
    request_id: str = Field("", max_length=128)
    device_id: str
    item_history: list[int] = Field(..., description="dense item ids, oldest first")
    k: int = 10
    model_version: str = ""

    def to_domain(self) -> RecommendFullRequest:
        return RecommendFullRequest(device_id=self.device_id,
                                    item_history=tuple(self.item_history), k=self.k,
                                    model_version=self.model_version,
                                    request_id=self.request_id)


class RecommendOut(BaseModel):
    item_ids: list[int]
    scores: list[float]
    model_version: str
    request_id: str
    cached: bool
    item_intents: list[int] = Field(
        default_factory=list, description="collaborative: the intent token of each item")
    catalog_size: int = Field(
        0, description="collaborative: the catalog the scores' log-probabilities cover")

    @classmethod
    def from_domain(cls, r: Recommendation) -> RecommendOut:
        return cls(item_ids=list(r.item_ids), scores=list(r.scores),
                   model_version=r.model_version, request_id=r.request_id, cached=r.cached,
                   item_intents=list(r.item_intents), catalog_size=r.catalog_size)


class ArtifactOut(BaseModel):
    name: str
    sha256: str
    size: int


class ManifestOut(BaseModel):
    version: str
    dataset: str
    created_at: str
    files: list[ArtifactOut]
    manifest_json: str
    n_items: int
    n_intents: int

    @classmethod
    def from_domain(cls, m: ManifestInfo) -> ManifestOut:
        return cls(version=m.version, dataset=m.dataset, created_at=m.created_at,
                   files=[ArtifactOut(name=f.name, sha256=f.sha256, size=f.size)
                          for f in m.files],
                   manifest_json=m.manifest_json, n_items=m.n_items, n_intents=m.n_intents)


class PublishIn(BaseModel):
    model_config = _STRICT
    bundle_dir: str = Field(..., description="bundle directory, as seen by the server")
    canary_share: float = Field(0.0, description="0 = make current; (0, 1) = canary share")


class RetireIn(BaseModel):
    model_config = _STRICT
    version: str = Field(..., description="a live version other than the current one")


class RegistryStatusOut(BaseModel):
    current: str
    canary: str
    canary_share: float
    versions: list[str]
    revision: int

    @classmethod
    def from_domain(cls, s: RegistryState) -> RegistryStatusOut:
        return cls(current=s.current, canary=s.canary, canary_share=s.canary_share,
                   versions=sorted(s.versions), revision=s.revision)


class ErrorBody(BaseModel):
    code: str = Field(..., description="the gRPC status code name, same on both transports")
    message: str


class ErrorOut(BaseModel):
    error: ErrorBody


def credentials(api_key: str | None, authorization: str | None,
                admin_key: str | None = None) -> Credentials:
    """Headers -> credentials: x-api-key, 'authorization: Bearer <device token>', x-admin-key."""
    token = ""
    if authorization and authorization.lower().startswith("bearer "):
        token = authorization[7:].strip()
    return Credentials(api_key=api_key or "", device_token=token, admin_key=admin_key or "")
