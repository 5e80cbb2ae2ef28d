"""The cloud's retry hint on the device: read from either transport, honoured by the breaker."""

from __future__ import annotations

import asyncio

import pytest

from edge_client.resilience import CircuitBreaker, CloudUnavailable, RetryPolicy, call_with_retries
from edge_client.transport import CloudError, retry_after

pytestmark = pytest.mark.unit


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize(("value", "seconds"), [
    ("1.000", 1.0), ("1", 1.0), (b"0.25", 0.25), ("0", None), ("-3", None), ("nan", None),
    ("Wed, 21 Oct 2026 07:28:00 GMT", None), (None, None), ("1e9", 3600.0)])
def test_retry_after_reads_seconds_and_ignores_what_is_not(value, seconds):
    assert retry_after(value) == seconds


def test_hold_keeps_the_breaker_open_as_long_as_the_cloud_asked():
    clock = FakeClock()
    b = CircuitBreaker(failure_threshold=3, reset_timeout_s=5.0, clock=clock)
    b.hold(1.0)
    assert b.state == "open" and not b.allow()
    clock.now += 1.0
    assert b.state == "half_open" and b.allow()  # one trial call, as after failures
    b.record_success()
    assert b.state == "closed"
    b.record_failure()
    b.record_failure()
    b.record_failure()  # open for its own 5 s: a shorter hint does not cut that short
    b.hold(1.0)
    clock.now += 4.9
    assert not b.allow()
    b.hold(3.0)  # a longer one extends it
    clock.now += 2.9
    assert not b.allow()
    clock.now += 0.1
    assert b.allow()


def test_a_refusal_with_a_hint_is_not_retried_and_holds_the_breaker():
    clock = FakeClock()
    breaker = CircuitBreaker(failure_threshold=3, reset_timeout_s=5.0, clock=clock)
    calls = 0

    async def refused(remaining_s: float) -> None:
        nonlocal calls
        calls += 1
        raise CloudError("RESOURCE_EXHAUSTED: at its limit", code="RESOURCE_EXHAUSTED",
                         retryable=True, retry_after_s=1.0)

    async def ask() -> None:
        await call_with_retries(refused, deadline_s=10.0, policy=RetryPolicy(retries=3),
                                is_retryable=lambda e: True, breaker=breaker)

    with pytest.raises(CloudUnavailable, match="no call in the next 1.000s"):
        asyncio.run(ask())
    assert calls == 1  # retries left and a long deadline, yet the cloud said wait
    with pytest.raises(CloudUnavailable, match="breaker is open"):
        asyncio.run(ask())
    assert calls == 1  # the next request never went out
    clock.now += 1.0
    with pytest.raises(CloudUnavailable):
        asyncio.run(ask())
    assert calls == 2  # the hint has passed: a trial call goes out
