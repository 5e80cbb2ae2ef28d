"""Cloud-call resilience: breaker transitions, what is retried, and the overall deadline."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable

import pytest

from edge_client.resilience import (
    CircuitBreaker,
    CloudUnavailable,
    RetryPolicy,
    call_with_retries,
)

pytestmark = pytest.mark.unit

SLACK_S = 0.1  # a loaded CI machine wakes the event loop late; the calls alone run for seconds


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Transient(Exception):
    """Stands in for UNAVAILABLE / connection reset: worth retrying."""


class BadInput(Exception):
    """Stands in for INVALID_ARGUMENT: the cloud answered; retrying cannot help."""


def _retryable(exc: BaseException) -> bool:
    return isinstance(exc, Transient | TimeoutError)


def test_breaker_opens_after_threshold_and_half_opens_after_timeout() -> None:
    clock = FakeClock()
    b = CircuitBreaker(failure_threshold=3, reset_timeout_s=5.0, clock=clock)
    assert b.state == "closed"
    b.record_failure()
    b.record_failure()
    b.record_success()  # consecutive failures only
    b.record_failure()
    b.record_failure()
    assert b.state == "closed" and b.allow()
    b.record_failure()
    assert b.state == "open" and b.opened_count == 1
    assert not b.allow()
    clock.now += 4.9
    assert not b.allow()
    clock.now += 0.1
    assert b.state == "half_open"
    assert b.allow()  # the one trial
    assert not b.allow()  # everyone else waits for it
    b.record_success()
    assert b.state == "closed" and b.allow()


def test_breaker_half_open_failure_reopens() -> None:
    clock = FakeClock()
    b = CircuitBreaker(failure_threshold=1, reset_timeout_s=2.0, clock=clock)
    b.record_failure()
    clock.now += 2.0
    assert b.allow()
    b.record_failure()
    assert b.state == "open" and b.opened_count == 2
    assert not b.allow()
    clock.now += 1.9
    assert not b.allow()  # the timeout restarts from the reopen
    clock.now += 0.1
    assert b.allow()


def test_breaker_release_frees_the_trial() -> None:
    clock = FakeClock()
    b = CircuitBreaker(failure_threshold=1, reset_timeout_s=1.0, clock=clock)
    b.record_failure()
    clock.now += 1.0
    assert b.allow() and not b.allow()
    b.release()
    assert b.state == "half_open" and b.allow()


def test_retry_delays_are_exponential_capped_and_jittered() -> None:
    flat = list(RetryPolicy(retries=5, base_backoff_s=0.01, max_backoff_s=0.05,
                            jitter=0.0).delays(random.Random(0)))
    assert flat == pytest.approx([0.01, 0.02, 0.04, 0.05, 0.05])
    rng = random.Random(1)
    for _ in range(50):
        for d, cap in zip(RetryPolicy(retries=3, jitter=0.5).delays(rng), (0.02, 0.04, 0.08),
                          strict=True):
            assert cap * 0.5 <= d <= cap
    with pytest.raises(ValueError):
        RetryPolicy(jitter=1.5)


def test_retries_transient_errors_then_succeeds() -> None:
    calls: list[float] = []

    async def fn(remaining: float) -> str:
        calls.append(remaining)
        if len(calls) < 3:
            raise Transient("blip")
        return "ok"

    b = CircuitBreaker(failure_threshold=5)
    out = asyncio.run(call_with_retries(fn, deadline_s=1.0, policy=RetryPolicy(retries=2),
                                        is_retryable=_retryable, breaker=b,
                                        rng=random.Random(0)))
    assert out == "ok" and len(calls) == 3
    assert calls == sorted(calls, reverse=True) and calls[0] <= 1.0  # remaining time shrinks
    assert b.state == "closed"


def test_last_retryable_failure_becomes_cloud_unavailable() -> None:
    calls = 0

    async def fn(remaining: float) -> None:
        nonlocal calls
        calls += 1
        raise Transient("down")

    with pytest.raises(CloudUnavailable) as info:
        asyncio.run(call_with_retries(fn, deadline_s=1.0, policy=RetryPolicy(retries=2),
                                      is_retryable=_retryable))
    assert calls == 3
    assert "3 attempts" in info.value.reason
    assert isinstance(info.value.__cause__, Transient)


def test_non_retryable_error_is_raised_as_is_and_not_a_breaker_failure() -> None:
    calls = 0

    async def fn(remaining: float) -> None:
        nonlocal calls
        calls += 1
        raise BadInput("history too long")

    b = CircuitBreaker(failure_threshold=1)
    with pytest.raises(BadInput):
        asyncio.run(call_with_retries(fn, deadline_s=1.0, policy=RetryPolicy(retries=3),
                                      is_retryable=_retryable, breaker=b))
    assert calls == 1
    assert b.state == "closed" and b.opened_count == 0


@pytest.mark.parametrize("deadline_s", [0.1, 0.25])
def test_never_exceeds_the_deadline(deadline_s: float) -> None:
    async def slow(remaining: float) -> None:
        await asyncio.sleep(10)  # ignores its budget: the deadline must still hold

    async def failing(remaining: float) -> None:
        await asyncio.sleep(0.015)
        raise Transient("slow failure")

    policy = RetryPolicy(retries=50, base_backoff_s=0.01, max_backoff_s=0.03, jitter=0.0)

    async def timed(fn: Callable[[float], Awaitable[None]]) -> float:
        # Timed inside the loop so event-loop start-up is not charged to the call.
        start = time.monotonic()
        with pytest.raises(CloudUnavailable):
            await call_with_retries(fn, deadline_s=deadline_s, policy=policy,
                                    is_retryable=_retryable)
        return time.monotonic() - start

    for fn in (slow, failing):
        elapsed = asyncio.run(timed(fn))
        assert elapsed <= deadline_s + SLACK_S, (fn.__name__, elapsed)


def test_timeout_counts_against_the_breaker() -> None:
    async def slow(remaining: float) -> None:
        await asyncio.sleep(10)

    b = CircuitBreaker(failure_threshold=1)
    with pytest.raises(CloudUnavailable, match="deadline"):
        asyncio.run(call_with_retries(slow, deadline_s=0.02, policy=RetryPolicy(),
                                      is_retryable=_retryable, breaker=b))
    assert b.state == "open"


def test_open_breaker_fails_fast_without_calling_fn() -> None:
    calls = 0

    async def fn(remaining: float) -> str:
        nonlocal calls
        calls += 1
        return "ok"

    b = CircuitBreaker(failure_threshold=1, reset_timeout_s=60)
    b.record_failure()
    start = time.monotonic()
    with pytest.raises(CloudUnavailable, match="open"):
        asyncio.run(call_with_retries(fn, deadline_s=1.0, policy=RetryPolicy(),
                                      is_retryable=_retryable, breaker=b))
    assert calls == 0
    assert time.monotonic() - start < 0.5


def test_breaker_opening_mid_call_stops_retrying() -> None:
    calls = 0

    async def fn(remaining: float) -> None:
        nonlocal calls
        calls += 1
        raise Transient("down")

    b = CircuitBreaker(failure_threshold=2, reset_timeout_s=60)
    with pytest.raises(CloudUnavailable, match="breaker"):
        asyncio.run(call_with_retries(fn, deadline_s=1.0, policy=RetryPolicy(retries=5),
                                      is_retryable=_retryable, breaker=b))
    assert calls == 2 and b.state == "open"


def test_cancellation_releases_the_half_open_trial() -> None:
    clock = FakeClock()
    b = CircuitBreaker(failure_threshold=1, reset_timeout_s=1.0, clock=clock)
    b.record_failure()
    clock.now += 1.0

    async def hang(remaining: float) -> None:
        await asyncio.sleep(10)

    async def main() -> None:
        task = asyncio.create_task(call_with_retries(hang, deadline_s=5.0, policy=RetryPolicy(),
                                                     is_retryable=_retryable, breaker=b))
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert b.state == "half_open" and b.allow()
