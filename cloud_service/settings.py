"""Settings of the cloud deployable: every knob is a `TANDEM_CLOUD_*` environment variable.

`get_settings()` is cached so the process reads its environment once; tests build a
`CloudSettings(...)` directly, or call `get_settings.cache_clear()` after changing the
environment.
"""

from __future__ import annotations

import os
from functools import lru_cache
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class CloudSettings(BaseSettings):
    """One replica of the cloud service."""

    model_config = SettingsConfigDict(env_prefix="TANDEM_CLOUD_", env_file=None, extra="ignore")

    # Where to listen.
    host: str = "127.0.0.1"
    http_port: int = Field(8000, ge=0, le=65535, description="0 picks a free port")
    grpc_port: int = Field(50051, ge=0, le=65535, description="0 picks a free port")

    # The model: a bundle directory published at start-up when the registry is empty.
    bundle: str = Field("", description="bundle directory (the pipeline's run_dir/bundle)")
    keep_versions: int = Field(3, ge=1, description="loaded versions kept in memory at once")
    registry_poll_s: float = Field(1.0, gt=0, description="how often replicas check the registry")

    # Shared state. Empty = the in-process store (the embedded default, one replica).
    redis_url: str = ""
    redis_prefix: str = "tandem:"
    history_cap: int = Field(200, ge=0, description="intent tokens kept per session")
    history_ttl_s: int = Field(1800, ge=1, description="a session's history expires after this")
    cache_ttl_s: int = Field(60, ge=0, description="response cache lifetime; 0 disables it")

    # Serving.
    # Retrieval: unset = the values the bundle was evaluated with (its manifest's "serving").
    n_retrieve: int | None = Field(None, ge=1, description="candidates retrieved per request")
    popular_share: float | None = Field(None, ge=0, le=1, description="popular candidates share")
    coarse_history: int | None = Field(None, ge=1, description="intent tokens the teacher reads")
    max_k: int = Field(1000, ge=1)
    max_intent_tokens: int = Field(64, ge=1)
    max_history: int = Field(1000, ge=1, description="longest item history for recommend-full")
    batch_max_size: int = Field(64, ge=1, description="micro-batch: most requests per call")
    batch_max_wait_ms: float = Field(2.0, ge=0, description="micro-batch: longest wait")
    batch_adaptive: bool = Field(True, description="false: every batch waits out "
                                 "batch_max_wait_ms unless full (the fixed window of old)")
    batching: bool = True
    # One intra-op thread per CPU: a batch of 32 rows ran 2.4x faster on two threads than on
    # one, and HTTP at concurrency 32 served 1.6x more (bench/cloud_load.py --compare-threads
    # measures the two in one run; docs/performance.md).
    torch_threads: int = Field(0, ge=0, description="teacher intra-op threads (torch or ONNX "
                               "Runtime); 0 = one per CPU "
                               "this process may run on")
    # ONNX Runtime ran a 32-row batch of the ML-1M ensemble in 0.54x eager torch's time, with
    # the same top 10 (bench/teacher_runtime.py); "torch" serves the checkpoint as loaded. A
    # teacher that does not export is served on torch either way (a warning says so).
    teacher_runtime: Literal["onnx", "torch"] = Field(
        "onnx", description="what runs the teacher: onnx (exported at load) or torch")
    # Spinning ONNX Runtime threads cut a lone request's p50 (1.48 against 1.77 ms) but took
    # the CPU the event loop needs under load: gRPC at 32 served 1,016 against 1,190 req/s.
    teacher_spin: bool = Field(False, description="ONNX Runtime's teacher threads spin-wait "
                               "between calls (lower latency when idle, more CPU)")

    # Auth: keys come from the environment or a secrets file, never from code.
    device_api_keys: Annotated[list[SecretStr], NoDecode] = Field(default_factory=list)
    device_token_secret: SecretStr = SecretStr("")
    admin_api_key: SecretStr = SecretStr("")
    auth_required: bool = Field(True, description="false only for local demos")

    # Rate limits: a token bucket per authenticated principal, in the store (Redis: shared by
    # replicas); while the store is away, a bucket per replica (see the README's Security).
    rate_per_s: float = Field(50.0, gt=0, description="per device token (or device, auth off)")
    rate_burst: int = Field(100, ge=1)
    # An app API key is shared by every install of the app: one bucket for all of them.
    key_rate_per_s: float = Field(1000.0, gt=0, description="per app API key")
    key_rate_burst: int = Field(2000, ge=1)

    # Admin publish: only bundle directories under this root ("" = the artifacts directory,
    # $TANDEM_ARTIFACTS_DIR, where `tandem pipeline` writes bundles).
    bundle_root: str = Field("", description="directory admin publishes must lie under")

    chunk_bytes: int = Field(256 * 1024, ge=1024, description="artifact download chunk size")
    shutdown_grace_s: float = Field(5.0, ge=0, description="time to drain in-flight requests")
    drain_delay_s: float = Field(
        1.0, ge=0, description="after SIGTERM, not ready but still serving this long, so load "
        "balancers stop routing here before new requests are refused")

    # HTTP hardening: safe without a proxy in front.
    max_body_bytes: int = Field(1 << 20, ge=1024, description="largest request body, any framing")
    http_read_timeout_s: float = Field(
        10.0, gt=0, description="a request's headers, then its body, must arrive within this")
    # Admission: past these, /v1/ device requests are refused at once (503, Retry-After) rather
    # than queued. On 2 cores 24 in flight kept 98% of HTTP's best throughput and held p99 near
    # 12 ms under overload; none waiting, because a request that waits takes a batch longer
    # (docs/performance.md).
    http_max_inflight: int = Field(24, ge=0, description="HTTP device requests handled at "
                                   "once by a replica; 0 = no limit")
    http_max_queued: int = Field(0, ge=0, description="HTTP device requests past that limit "
                                 "that wait their turn; more are refused")
    # gRPC's own (RESOURCE_EXHAUSTED past them): 32 + 32 calls took a median 29 ms at
    # concurrency 64 on 2 cores; gRPC refusals cost more than HTTP's, so some may wait.
    grpc_max_inflight: int = Field(32, ge=0, description="gRPC device calls handled at once by "
                                   "a replica; 0 = no limit")
    grpc_max_queued: int = Field(32, ge=0, description="gRPC device calls past that limit that "
                                 "wait their turn; more are refused")
    metrics_port: int | None = Field(
        None, ge=0, le=65535, description="unset: /metrics on the HTTP port behind the admin "
        "key; a port: /metrics there without a key (keep that port private)")

    @field_validator("device_api_keys", mode="before")
    @classmethod
    def _split_keys(cls, v: object) -> object:
        # A comma-separated environment variable is easier to set than a JSON list.
        if isinstance(v, str):
            return [k.strip() for k in v.split(",") if k.strip()]
        return v

    def teacher_threads(self) -> int:
        """The teacher's intra-op threads: the setting, else one per CPU the process may use."""
        if self.torch_threads:
            return self.torch_threads
        if hasattr(os, "sched_getaffinity"):  # a container's or taskset's CPUs, not the host's
            return len(os.sched_getaffinity(0))
        return os.cpu_count() or 1


@lru_cache(maxsize=1)
def get_settings() -> CloudSettings:
    """The process-wide settings, read from the environment once."""
    return CloudSettings()
