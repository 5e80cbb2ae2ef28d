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
