"""Domain types of the cloud core: what the transports convert their messages to and from.

Item ids on the wire are the bundle's dense item indices (1..N); the bundle's item table maps
them to the app's own ids. Intent tokens are the codebook's level-1 codes (1..K).

Both wires name their fields as these types do (the HTTP schemas mirror the protos field for
field), so `from_fields` and `to_fields` are the one mapping the two converter modules share.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

D = TypeVar("D", bound="DataclassInstance")


@dataclass(frozen=True)
class Credentials:
    """What the caller presented: a device API key, an HMAC device token, or an admin key."""

    api_key: str = ""
    device_token: str = ""
    admin_key: str = ""


@dataclass(frozen=True)
class Principal:
    """Who a request acts for, as authenticated; every per-device key is built from it.

    `device`: a device token's own device; its session history, bucket and canary side.
    `app`: a shared app API key; stateless (no stored history), rate-limited per key.
    `open`: auth is off (local demos); the body's device id is trusted as is.
    `admin`: the admin key; registry operations only, no device state.
    """

    kind: str  # "device" | "app" | "open" | "admin"
    device_id: str = ""  # device and open: the device whose state the request may touch
    key_id: str = ""  # app: a short digest of the API key, never the key itself

    @property
    def stateful(self) -> bool:
        """Whether the request may read or write per-device state (history)."""
        return self.kind in ("device", "open")

    @property
    def scope(self) -> str:
        """The namespace of this principal's rate bucket, cache entries and canary side."""
        return f"key:{self.key_id}" if self.kind == "app" else f"dev:{self.device_id}"

    @property
    def route_id(self) -> str:
        """What canary routing hashes: the device (same side as before), or the whole key."""
        return self.scope if self.kind == "app" else self.device_id


@dataclass(frozen=True)
class RecommendRequest:
    """Collaborative mode: intent tokens only, never an item id."""

    device_id: str
    intent_tokens: tuple[int, ...]
    intent_weights: tuple[float, ...]
    coarse_history: tuple[int, ...] = ()  # intent tokens of the last L interactions, oldest first
    k: int = 10
    model_version: str = ""  # "" = whichever version the registry routes this device to
    request_id: str = ""


@dataclass(frozen=True)
class RecommendFullRequest:
    """Cloud-full mode: the raw item history goes upstream (the privacy-costly baseline)."""

    device_id: str
    item_history: tuple[int, ...]
    k: int = 10
    model_version: str = ""
    request_id: str = ""


@dataclass(frozen=True)
class ManifestRequest:
    """Which bundle manifest a device asks for."""

    device_id: str
    model_version: str = ""  # "" = whichever version the registry routes this device to


@dataclass(frozen=True)
class ArtifactRequest:
    """One file of a bundle, by the name its manifest lists."""

    device_id: str
    name: str
    model_version: str = ""


class ArtifactChunk(NamedTuple):
    """A piece of an artifact's bytes and where it sits in the file."""

    data: bytes
    offset: int
    total_size: int


@dataclass(frozen=True)
class PublishRequest:
    """Admin: a bundle directory to serve as the current version or as a canary."""

    bundle_dir: str
    canary_share: float = 0.0  # 0 = make it current; (0, 1) = route this share of devices to it


@dataclass(frozen=True)
class RetireRequest:
    """Admin: a live version, other than the current one, to forget."""

    version: str


@dataclass(frozen=True)
class Recommendation:
    """Top items with the teacher's scores, best first, and the version that produced them."""

    item_ids: tuple[int, ...]
    scores: tuple[float, ...]
    model_version: str
    request_id: str = ""
    cached: bool = False
    item_intents: tuple[int, ...] = ()  # collaborative: intent token of each item
    catalog_size: int = 0  # collaborative: the catalog the scores' log-probabilities cover
    # Collaborative: each item's semantic id, flattened (code_levels codes per item, level 1
    # first), and which items the paired device model never trained on (empty: none).
    item_codes: tuple[int, ...] = ()
    code_levels: int = 0
    item_new: tuple[bool, ...] = ()


@dataclass(frozen=True)
class ArtifactInfo:
    name: str
    sha256: str
    size: int


@dataclass(frozen=True)
class ManifestInfo:
    """A bundle's manifest as served to devices (the file itself is an artifact too)."""

    version: str
    dataset: str
    created_at: str
    files: tuple[ArtifactInfo, ...]
    manifest_json: str  # the exact manifest.json bytes, decoded, for verification on the device
    n_items: int = 0
    n_intents: int = 0


@dataclass(frozen=True)
class RegistryState:
    """Live versions and routing: the current version and an optional canary with its share."""

    current: str = ""
    canary: str = ""
    canary_share: float = 0.0
    versions: dict[str, str] = field(default_factory=dict)  # version -> bundle directory
    revision: int = 0


def from_fields(cls: type[D], message: object) -> D:
    """A domain value read from a wire message naming the same fields (pydantic or protobuf)."""
    return cls(**{f.name: tuple(getattr(message, f.name)) if str(f.type).startswith("tuple")
                  else getattr(message, f.name) for f in dataclasses.fields(cls)})


def to_fields(value: DataclassInstance) -> dict[str, Any]:
    """A domain value as its wire message's keyword arguments (the same for both wires).

    Tuples go out as lists (a manifest's artifacts as dicts), a mapping as its sorted keys:
    the registry's versions are listed, their bundle directories stay in the cloud.
    """
    out: dict[str, Any] = {}
    for f in dataclasses.fields(value):
        v = getattr(value, f.name)
        if isinstance(v, dict):
            v = sorted(v)
        elif isinstance(v, tuple):  # one kind per tuple: test the first, not all 600
            v = [to_fields(x) for x in v] if v and isinstance(v[0], ArtifactInfo) else list(v)
        out[f.name] = v
    return out
