"""Settings of the edge deployable: every knob is a `TANDEM_EDGE_*` environment variable.

An app usually builds `EdgeSettings(...)` in code; `get_settings()` reads the environment once
(cached) for the simulator and tests. Unset serving knobs fall back to the values the bundle
was evaluated with (its manifest's "serving" section).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class EdgeSettings(BaseSettings):
    """One device (or the simulated fleet's devices)."""

    model_config = SettingsConfigDict(env_prefix="TANDEM_EDGE_", extra="ignore")

    transport: Literal["grpc", "http"] = "grpc"
    cloud_target: str = Field("127.0.0.1:50051", description="gRPC host:port")
    cloud_url: str = Field("http://127.0.0.1:8000", description="HTTP base URL")
    api_key: str = ""
    device_token: str = ""

    deadline_ms: float = Field(150.0, gt=0, description="budget for the cloud, per request")
    retries: int = Field(1, ge=0, description="retries of retryable errors within the deadline")
    breaker_failures: int = Field(3, ge=1, description="failures that open the breaker")
    breaker_reset_s: float = Field(2.0, gt=0, description="open time before a trial call")

    policy: Literal["always", "shift"] = Field(
        "always", description="ask the cloud every time, or only when the intent shifted "
        "(a semantic-id bundle asks every time)")
    shift_overlap: float = Field(
        0.3, ge=0, le=1, description="shift policy: ask again when the top intents overlap "
        "(Jaccard) the ones of the last cloud call less than this")
    shift_rank_overlap: float = Field(
        0.1, ge=0, le=1, description="shift policy: ask again when the device's top 10 over "
        "the cached candidates shares less than this with the cached teacher's top 10")

    fusion_weight: float | None = Field(None, ge=0, le=1, description="teacher share in fusion")
    device_top: int | None = Field(
        None, ge=0, description="the device's own top items ranked beside the cloud's")
    top_intents: int | None = Field(None, ge=1)
    coarse_history: int | None = Field(None, ge=0, description="L: 0 sends no history")
    n_candidates: int | None = Field(None, ge=1, description="candidates asked of the cloud")
    threads: int = Field(1, ge=1, description="ONNX Runtime threads (a phone spares one)")


@lru_cache(maxsize=1)
def get_settings() -> EdgeSettings:
    return EdgeSettings()
