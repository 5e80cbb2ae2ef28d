"""Domain types of the cloud core: what the transports convert their messages to and from.

Item ids on the wire are the bundle's dense item indices (1..N); the bundle's item table maps
them to the app's own ids. Intent tokens are the codebook's level-1 codes (1..K).
"""

from __future__ import annotations

from dataclasses import dataclass, field


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
    """

    kind: str  # "device" | "app" | "open"
    device_id: str = ""  # device and open: the device whose state the request may touch
    key_id: str = ""  # app: a short digest of the API key, never the key itself

    @property
    def stateful(self) -> bool:
        """Whether the request may read or write per-device state (history)."""
        return self.kind != "app"

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
class Recommendation:
    """Top items with the teacher's scores, best first, and the version that produced them."""

    item_ids: tuple[int, ...]
    scores: tuple[float, ...]
    model_version: str
    request_id: str = ""
    cached: bool = False
    item_intents: tuple[int, ...] = ()  # collaborative: intent token of each item
    catalog_size: int = 0  # collaborative: the catalog the scores' log-probabilities cover


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
