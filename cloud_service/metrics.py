"""Prometheus metrics of one service instance, recorded by the core for both transports.

Each service owns its registry (not the global one) so several services in one process, as in
tests, never share counters.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from cloud_service.errors import ServiceError

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class Metrics:
    """Requests by operation and outcome, latency, batch sizes, cache and store health."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("tandem_requests_total", "Requests by operation and result code",
                                ["op", "code"], registry=r)
        self.latency = Histogram("tandem_request_seconds", "Time in the service core",
                                 ["op"], buckets=LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram("tandem_batch_size", "Rows per teacher call",
                                    buckets=BATCH_BUCKETS, registry=r)
        self.cache = Counter("tandem_cache_total", "Response cache lookups", ["result"],
                             registry=r)
        self.store_errors = Counter("tandem_store_errors_total",
                                    "Store (Redis) operations that failed; served without them",
                                    ["op"], registry=r)
        self.store_up = Gauge("tandem_store_up", "1 if the last store operation succeeded",
                              registry=r)
        self.reloads = Counter("tandem_model_loads_total", "Model versions loaded", ["result"],
                               registry=r)
        self.versions = Gauge("tandem_loaded_versions", "Model versions in memory", registry=r)
        self.http_refused = Counter("tandem_http_refused_total",
                                    "HTTP requests refused at once: the replica was at its "
                                    "limit of requests in flight and waiting", registry=r)
        self.grpc_refused = Counter("tandem_grpc_refused_total",
                                    "gRPC device calls refused at once (RESOURCE_EXHAUSTED): "
                                    "the replica was at its limit", registry=r)
        self.store_up.set(1)

    @contextmanager
    def track(self, op: str) -> Iterator[None]:
        """Count and time one operation; the code is OK or the error's gRPC code name."""
        start = time.perf_counter()
        code = "OK"
        try:
            yield
        except ServiceError as exc:
            code = exc.grpc_code
            raise
        except Exception:
            code = "INTERNAL"
            raise
        finally:
            self.requests.labels(op, code).inc()
            self.latency.labels(op).observe(time.perf_counter() - start)

    def store_failed(self, op: str) -> None:
        self.store_errors.labels(op).inc()
        self.store_up.set(0)

    def exposition(self) -> bytes:
        """The text format served at /metrics."""
        return generate_latest(self.registry)
