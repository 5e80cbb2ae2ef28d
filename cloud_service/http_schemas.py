"""Pydantic models of the HTTP API: the protos' messages, field for field, as JSON.

Plain schemas: `http_convert` converts them to and from the core's domain types.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

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


class RecommendFullIn(BaseModel):
    """Cloud-full request: uploads the raw item history (the privacy-costly baseline)."""

    model_config = _STRICT
    request_id: str = Field("", max_length=128)
    device_id: str
    item_history: list[int] = Field(..., description="dense item ids, oldest first")
    k: int = 10
    model_version: str = ""


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
    item_codes: list[int] = Field(
        default_factory=list, description="collaborative: each item's semantic id, flattened "
        "(code_levels codes per item, level 1 first)")
    code_levels: int = Field(0, description="collaborative: levels of each semantic id")
    item_new: list[bool] = Field(
        default_factory=list, description="collaborative: per item, whether the paired device "
        "model never trained on it; empty = no item is new")


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


class ErrorBody(BaseModel):
    code: str = Field(..., description="the gRPC status code name, same on both transports")
    message: str


class ErrorOut(BaseModel):
    error: ErrorBody

