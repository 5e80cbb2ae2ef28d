"""Calling the cloud without hanging the device: deadlines, bounded retries, a circuit breaker.

When the cloud is slow or down the device must fall back to its own model quickly, so every
cloud call here has one overall deadline and fails fast while the breaker is open. A failure
that carries the cloud's retry hint (`retry_after_s`: a replica at its limit, a rate limit)
is not retried, and holds the breaker open until the hint has passed: the device ranks on its
own meanwhile rather than adding to the load of a cloud that asked it to wait.
"""

from __future__ import annotations

import asyncio
import random
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal, TypeVar

T = TypeVar("T")
BreakerState = Literal["closed", "open", "half_open"]


class _Timeout:
    """``asyncio.timeout`` for Python 3.10, as far as `call_with_deadline` uses it.

    Cancels the task when the delay runs out and turns that cancellation into TimeoutError;
    ``expired()`` tells this backstop apart from a TimeoutError the awaited call raised itself.
    """

    def __init__(self, delay: float) -> None:
        self._delay, self._expired = delay, False
        self._handle: asyncio.TimerHandle | None = None

    def expired(self) -> bool:
        return self._expired

    def _fire(self, task: asyncio.Task[Any]) -> None:
        self._expired = True
        task.cancel()

    async def __aenter__(self) -> _Timeout:
        task = asyncio.current_task()
        assert task is not None, "a timeout needs a running task"
        self._handle = asyncio.get_running_loop().call_later(self._delay, self._fire, task)
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        if self._handle is not None:
            self._handle.cancel()
        if self._expired and exc_type is asyncio.CancelledError:
            raise TimeoutError from exc


# asyncio.timeout where there is one (3.11+), else the backport above.
if sys.version_info >= (3, 11):
    _timeout = asyncio.timeout
else:
    _timeout = _Timeout


class CloudUnavailable(Exception):
    """The cloud could not answer in time (or is assumed down); serve the offline fallback."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class CircuitBreaker:
    """Stops calling a failing cloud for ``reset_timeout_s``, then lets one trial call probe it.

    closed -> open after ``failure_threshold`` consecutive failures, or for as long as the cloud
    asked (`hold`); open -> half_open once that time has passed; the single half-open trial
    closes the breaker on success or reopens it.
    """

    def __init__(self, failure_threshold: int = 3, reset_timeout_s: float = 5.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if failure_threshold < 1:
            raise ValueError(f"failure_threshold must be >= 1, got {failure_threshold}")
        if reset_timeout_s < 0:
            raise ValueError(f"reset_timeout_s must be >= 0, got {reset_timeout_s}")
        self.failure_threshold = failure_threshold
        self.reset_timeout_s = reset_timeout_s
        self._clock = clock
        self._lock = threading.Lock()
        self._state: BreakerState = "closed"
        self._failures = 0
        self._open_until = 0.0
        self._trial_in_flight = False
        self.opened_count = 0

    def _refresh(self) -> None:
        """Move open -> half_open once the timeout has passed (caller holds the lock)."""
        if self._state == "open" and self._clock() >= self._open_until:
            self._state = "half_open"
            self._trial_in_flight = False

    def _open(self, for_s: float | None = None) -> None:
        self._state = "open"
        self._open_until = self._clock() + (self.reset_timeout_s if for_s is None else for_s)
        self._trial_in_flight = False
        self.opened_count += 1

    @property
    def state(self) -> BreakerState:
        with self._lock:
            self._refresh()
            return self._state

    def allow(self) -> bool:
        """Whether a call may go out now; in half_open only the first caller gets the trial."""
        with self._lock:
            self._refresh()
            if self._state == "closed":
                return True
            if self._state == "half_open" and not self._trial_in_flight:
                self._trial_in_flight = True
                return True
            return False

    def record_success(self) -> None:
        with self._lock:
            if self._state == "half_open":
                self._state = "closed"
                self._trial_in_flight = False
            # A late success from a call sent before the breaker opened proves little: ignored.
            if self._state == "closed":
                self._failures = 0

    def record_failure(self) -> None:
        with self._lock:
            if self._state == "half_open":
                self._open()
            elif self._state == "closed":
                self._failures += 1
                if self._failures >= self.failure_threshold:
                    self._failures = 0
                    self._open()

    def hold(self, seconds: float) -> None:
        """The cloud asked for no calls for `seconds` (a retry hint): open at least that long."""
        with self._lock:
            if self._state == "open":
                self._open_until = max(self._open_until, self._clock() + seconds)
            else:
                self._open(seconds)

    def release(self) -> None:
        """End a call that says nothing about the cloud (e.g. cancelled): frees the trial slot."""
        with self._lock:
            self._trial_in_flight = False


@dataclass(frozen=True)
class RetryPolicy:
    """How many times to retry and how long to back off: exponential, capped, jittered.

    ``jitter`` is the random fraction taken off each delay: 0 is none, 1 is full jitter
    (uniform in [0, backoff]); it keeps many devices from retrying in lockstep.
    """

    retries: int = 2
    base_backoff_s: float = 0.02
    max_backoff_s: float = 0.2
    jitter: float = 0.5

    def __post_init__(self) -> None:
        if self.retries < 0:
            raise ValueError(f"retries must be >= 0, got {self.retries}")
        if not 0 <= self.base_backoff_s <= self.max_backoff_s:
            raise ValueError("need 0 <= base_backoff_s <= max_backoff_s, got "
                             f"{self.base_backoff_s} and {self.max_backoff_s}")
        if not 0 <= self.jitter <= 1:
            raise ValueError(f"jitter must be in [0, 1], got {self.jitter}")

    def delays(self, rng: random.Random) -> Iterator[float]:
        """One delay (seconds) per retry, before it is sent."""
        for attempt in range(self.retries):
            backoff = min(self.max_backoff_s, self.base_backoff_s * 2.0**attempt)
            yield backoff * (1.0 - self.jitter * rng.random())


async def call_with_retries(
    fn: Callable[[float], Awaitable[T]],
    *,
    deadline_s: float,
    policy: RetryPolicy,
    is_retryable: Callable[[BaseException], bool],
    breaker: CircuitBreaker | None = None,
    rng: random.Random | None = None,
) -> T:
    """Await ``fn(remaining_s)`` with retries, all within ``deadline_s`` from now.

    Retryable failures (per ``is_retryable``) and running out of time count against the
    breaker and end in ``CloudUnavailable``; any other error means the cloud answered (the
    request was at fault), so it counts as a breaker success and is re-raised unchanged. A
    retryable failure with a `retry_after_s` hint is not retried: the call ends at once and
    the breaker stays open for the hint, so no call goes out before the cloud asked.
    """
    rng = rng or random.Random()
    deadline = time.monotonic() + deadline_s
    delays = policy.delays(rng)
    attempts = 0
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise CloudUnavailable(f"deadline of {deadline_s:.3f}s spent after {attempts} attempts")
        if breaker is not None and not breaker.allow():
            raise CloudUnavailable("circuit breaker is open")
        attempts += 1
        scope = _timeout(remaining)
        try:
            # fn should honour remaining_s itself; the timeout is the backstop if it does not.
            async with scope:
                result = await fn(remaining)
        except Exception as exc:
            if isinstance(exc, TimeoutError) and scope.expired():
                if breaker is not None:
                    breaker.record_failure()
                raise CloudUnavailable(
                    f"deadline of {deadline_s:.3f}s spent in attempt {attempts}") from exc
            if not is_retryable(exc):
                if breaker is not None:
                    breaker.record_success()
                raise
            if breaker is not None:
                breaker.record_failure()
            if (hint := retry_hint(exc)) is not None:
                if breaker is not None:
                    breaker.hold(hint)
                raise CloudUnavailable(f"the cloud asked for no call in the next {hint:.3f}s "
                                       f"(attempt {attempts}): {exc!r}") from exc
            error = exc
        except BaseException:
            # Cancelled: says nothing about the cloud, but must not hold the half-open trial.
            if breaker is not None:
                breaker.release()
            raise
        else:
            if breaker is not None:
                breaker.record_success()
            return result

        if breaker is not None and breaker.state == "open":
            raise CloudUnavailable(f"circuit breaker opened after {attempts} attempts: "
                                   f"{error!r}") from error
        delay = next(delays, None)
        if delay is None:
            raise CloudUnavailable(f"gave up after {attempts} attempts: {error!r}") from error
        # Sleeping into the deadline would leave no time for the retry: give up now instead.
        if delay >= deadline - time.monotonic():
            raise CloudUnavailable(
                f"deadline of {deadline_s:.3f}s leaves no time to retry after {attempts} "
                f"attempts: {error!r}") from error
        await asyncio.sleep(delay)


def retry_hint(exc: BaseException) -> float | None:
    """The seconds a failure's `retry_after_s` asks to wait before calling again, if any."""
    hint = getattr(exc, "retry_after_s", None)
    return float(hint) if isinstance(hint, int | float) and hint > 0 else None
