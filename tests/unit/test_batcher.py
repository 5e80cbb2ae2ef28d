"""The adaptive MicroBatcher: who goes in which batch, and that nobody waits out a long timer.

The scoring function is a fake that records each batch and can be held in flight, so the tests
assert on batch composition; time only appears as generous `wait_for` limits (a policy that
waited out the hour-long `max_wait_s` would fail them, a slow machine would not).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable

import numpy as np
import pytest

from cloud_service import batcher as batcher_module
from cloud_service.batcher import MicroBatcher

pytestmark = pytest.mark.unit
HOUR = 3600.0
LIMIT_S = 120.0  # far above any dispatch even on a starved CPU, far below the hour of a timer


class Model:
    """A fake teacher: records each batch; the first call can be held until `release()`."""

    def __init__(self, hold_first: bool = False, fail_batch: int | None = None) -> None:
        self.batches: list[list[int]] = []
        self.entered = threading.Event()
        self._gate = threading.Event()
        self.hold_first, self.fail_batch = hold_first, fail_batch
        if not hold_first:
            self._gate.set()

    def __call__(self, key: str, rows: list[np.ndarray]) -> np.ndarray:
        self.batches.append([int(r[0]) for r in rows])
        self.entered.set()
        if len(self.batches) == 1:
            self._gate.wait(LIMIT_S)
        if self.fail_batch == len(self.batches):
            raise ValueError("the model broke")
        return np.stack([r * 10 for r in rows])

    def release(self) -> None:
        self._gate.set()

    async def in_flight(self) -> None:
        """Until the first batch has entered the model."""
        assert await asyncio.to_thread(self.entered.wait, LIMIT_S)


def run(body: Callable[[], Awaitable[object]]) -> object:
    return asyncio.run(asyncio.wait_for(body(), LIMIT_S))


async def submit_all(b: MicroBatcher[str], ids: range) -> list[asyncio.Task]:
    tasks = [asyncio.create_task(b.submit("m", np.array([i]))) for i in ids]
    await asyncio.sleep(0)  # each task queues its row
    return tasks


async def behind_a_batch(b: MicroBatcher[str], model: Model,
                         ids: range) -> tuple[asyncio.Task, list[asyncio.Task]]:
    """Row 0 goes in and is held in the model; then rows `ids` queue behind it."""
    first = asyncio.create_task(b.submit("m", np.array([0])))
    await model.in_flight()
    return first, await submit_all(b, ids)


def test_a_lone_request_is_dispatched_at_once_whatever_the_wait_bound():
    model = Model()

    async def main() -> None:
        b: MicroBatcher[str] = MicroBatcher(model, max_size=64, max_wait_s=HOUR)
        for i in range(3):  # each arrives at an idle model
            out = await asyncio.wait_for(b.submit("m", np.array([i])), LIMIT_S)
            assert int(out[0]) == 10 * i
        await b.close()

    run(main)
    assert model.batches == [[0], [1], [2]]


def test_rows_arriving_during_a_batch_form_the_next_one():
    model = Model(hold_first=True)

    async def main() -> list[np.ndarray]:
        b: MicroBatcher[str] = MicroBatcher(model, max_size=8, max_wait_s=HOUR)
        first, rest = await behind_a_batch(b, model, range(1, 6))
        model.release()
        out = await asyncio.gather(first, *rest)
        await b.close()
        return out

    out = run(main)
    assert model.batches == [[0], [1, 2, 3, 4, 5]]
    assert [int(o[0]) for o in out] == [0, 10, 20, 30, 40, 50]  # each caller its own row


def test_the_next_batch_waits_for_the_callers_of_the_last_and_goes_once_they_are_back(
        monkeypatch):
    # The bound would be the whole hour: only the expected company can end the wait.
    monkeypatch.setattr(batcher_module, "WAIT_SHARE", 1e9)
    model = Model(hold_first=True)

    async def main() -> None:
        b: MicroBatcher[str] = MicroBatcher(model, max_size=8, max_wait_s=HOUR)
        first, early = await behind_a_batch(b, model, range(1, 3))
        model.release()
        await first  # row 0's caller is answered; rows 1 and 2 queued meanwhile
        while b._lanes["m"].need != 3:  # so the worker waits for 0's caller to come back
            await asyncio.sleep(0.001)
        back = await submit_all(b, range(3, 4))
        await asyncio.gather(*early, *back)
        await b.close()

    run(main)
    assert model.batches == [[0], [1, 2, 3]]


def test_a_batch_that_fills_while_waiting_for_company_goes_at_once(monkeypatch):
    monkeypatch.setattr(batcher_module, "WAIT_SHARE", 1e9)
    model = Model(hold_first=True)

    async def main() -> None:
        b: MicroBatcher[str] = MicroBatcher(model, max_size=4, max_wait_s=HOUR)
        first, early = await behind_a_batch(b, model, range(1, 5))
        model.release()  # five rows expected, four fit: a full batch does not wait
        await asyncio.gather(first, *early)
        await b.close()

    run(main)
    assert model.batches == [[0], [1, 2, 3, 4]]


def test_the_wait_for_company_is_capped_by_the_observed_service_time():
    model = Model(hold_first=True)

    async def main() -> None:
        b: MicroBatcher[str] = MicroBatcher(model, max_size=64, max_wait_s=HOUR)
        assert b.wait_bound("m") == 0  # nothing timed yet: no waiting at all
        first, rest = await behind_a_batch(b, model, range(1, 3))
        model.release()
        await asyncio.gather(first, *rest)  # far short of the hour, never full
        assert 0 < b.wait_bound("m") < HOUR
        await b.close()

    run(main)
    assert model.batches == [[0], [1, 2]]


async def trickle(b: MicroBatcher[str], ids: range, gap_s: float) -> list[np.ndarray]:
    """Rows `ids` arriving `gap_s` apart, as a batch's callers come back one by one."""
    tasks = []
    for i in ids:
        tasks.append(asyncio.create_task(b.submit("m", np.array([i]))))
        await asyncio.sleep(gap_s)
    return await asyncio.gather(*tasks)


async def idle_lane(b: MicroBatcher[str], expect: int, service_s: float) -> None:
    """A lane whose last batch just ended, held `expect` rows and took `service_s`."""
    await b.submit("m", np.array([0]))
    lane = b._lanes["m"]
    lane.expect, lane.service_s = expect, service_s
    lane.idle_since = asyncio.get_running_loop().time()


def test_company_that_keeps_coming_is_waited_for_past_the_bound(monkeypatch):
    # Twelve rows 0.1 s apart take longer than the 1 s bound, but none comes 1 s after the
    # one before it: counted from the batch's end, the bound would leave the last ones out.
    monkeypatch.setattr(batcher_module, "WAIT_SHARE", 1e9)
    model = Model()

    async def main() -> None:
        b: MicroBatcher[str] = MicroBatcher(model, max_size=64, max_wait_s=1.0)
        await idle_lane(b, expect=12, service_s=HOUR)
        await trickle(b, range(1, 13), 0.1)
        await b.close()

    run(main)
    assert model.batches == [[0], list(range(1, 13))]


def test_a_gap_longer_than_the_bound_ends_the_wait():
    model = Model()

    async def main() -> None:
        b: MicroBatcher[str] = MicroBatcher(model, max_size=64, max_wait_s=0.05)
        await idle_lane(b, expect=3, service_s=HOUR)
        await trickle(b, range(1, 2), 0.0)
        await trickle(b, range(2, 3), 0.0)  # after row 1's batch: its wait ended without it
        await b.close()

    run(main)
    assert model.batches == [[0], [1], [2]]


def test_the_wait_ends_one_service_time_past_the_batch_however_company_keeps_coming(
        monkeypatch):
    monkeypatch.setattr(batcher_module, "WAIT_SHARE", 1e9)
    model = Model()

    async def main() -> None:
        b: MicroBatcher[str] = MicroBatcher(model, max_size=64, max_wait_s=0.5)
        await idle_lane(b, expect=40, service_s=0.5)  # at the latest 1 s after it ended
        await trickle(b, range(1, 31), 0.1)  # 3 s of rows, each well within 0.5 s of the last
        await b.close()

    run(main)
    assert model.batches[0] == [0] and len(model.batches) >= 3
    assert sorted(sum(model.batches[1:], [])) == list(range(1, 31))  # every row, once


def test_full_batches_split_a_burst_in_order():
    model = Model()

    async def main() -> list[np.ndarray]:
        b: MicroBatcher[str] = MicroBatcher(model, max_size=8, max_wait_s=HOUR)
        out = await asyncio.gather(*(b.submit("m", np.array([i])) for i in range(20)))
        await b.close()
        return out

    out = run(main)
    assert [int(o[0]) for o in out] == [10 * i for i in range(20)]
    assert [len(x) for x in model.batches] == [8, 8, 4]


def test_an_error_reaches_every_caller_of_its_batch_and_no_other():
    model = Model(hold_first=True, fail_batch=2)

    async def main() -> list[object]:
        b: MicroBatcher[str] = MicroBatcher(model, max_size=8, max_wait_s=HOUR)
        first, rest = await behind_a_batch(b, model, range(1, 4))
        model.release()
        out = await asyncio.gather(first, *rest, return_exceptions=True)
        after = await b.submit("m", np.array([9]))  # the worker survived the error
        await b.close()
        return [*out, after]

    out = run(main)
    assert int(out[0][0]) == 0 and int(out[-1][0]) == 90  # type: ignore[index]
    assert all(isinstance(o, ValueError) for o in out[1:4])


def test_a_caller_that_gave_up_is_left_out_of_its_batch():
    model = Model(hold_first=True)

    async def main() -> None:
        b: MicroBatcher[str] = MicroBatcher(model, max_size=8, max_wait_s=HOUR)
        first, (gone, kept) = await behind_a_batch(b, model, range(1, 3))
        gone.cancel()
        model.release()
        await asyncio.gather(first, kept)
        await b.close()

    run(main)
    assert model.batches == [[0], [2]]


def test_drop_fails_the_in_flight_batch_and_the_queue_with_its_error():
    model = Model(hold_first=True)

    async def main() -> list[object]:
        b: MicroBatcher[str] = MicroBatcher(model, max_size=8, max_wait_s=HOUR)
        first, queued = await behind_a_batch(b, model, range(1, 3))
        b.drop("m", LookupError("unloaded"))
        out = await asyncio.gather(first, *queued, return_exceptions=True)
        model.release()  # the thread itself runs to its end
        again = await b.submit("m", np.array([5]))  # a new worker for the key
        await b.close()
        return [*out, again]

    out = run(main)
    assert all(isinstance(o, LookupError) for o in out[:3])
    assert int(out[3][0]) == 50  # type: ignore[index]


def test_close_fails_callers_still_waiting():
    model = Model(hold_first=True)

    async def main() -> list[object]:
        b: MicroBatcher[str] = MicroBatcher(model, max_size=8, max_wait_s=HOUR)
        first, queued = await behind_a_batch(b, model, range(1, 3))
        await b.close()
        model.release()
        return await asyncio.gather(first, *queued, return_exceptions=True)

    out = run(main)
    assert all(isinstance(o, RuntimeError) for o in out)


def test_the_fixed_window_holds_a_lone_row_until_company_fills_the_batch():
    model = Model()

    async def main() -> None:
        b: MicroBatcher[str] = MicroBatcher(model, max_size=3, max_wait_s=HOUR, adaptive=False)
        first = await submit_all(b, range(1))
        for _ in range(20):
            await asyncio.sleep(0)
        assert model.batches == []  # an idle model, yet the row waits for company
        await asyncio.gather(*first, *await submit_all(b, range(1, 3)))
        await b.close()

    run(main)
    assert model.batches == [[0, 1, 2]]


def test_without_batching_every_row_is_its_own_call():
    model = Model()

    async def main() -> None:
        b: MicroBatcher[str] = MicroBatcher(model, max_size=1, max_wait_s=HOUR)
        await asyncio.gather(*(b.submit("m", np.array([i])) for i in range(3)))

    run(main)
    assert sorted(model.batches) == [[0], [1], [2]]
