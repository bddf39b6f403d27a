"""How the batcher cuts the queue into batches: arrival order, budgets, padding, departed callers."""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass

import numpy as np
import pytest

from service.core.batcher import MicroBatcher, _Item
from service.core.failures import QueueFull, VersionUnloaded


@dataclass(frozen=True)
class FakeEncoded:
    """Stands in for service.core.classifier.Encoded: the batcher reads only ``length``."""

    length: int


def plan(lengths: list[int], **budgets: int) -> list[list[int]]:
    """The batches next_batch forms from inputs of these lengths, queued in this order: the short
    lane's, then the long lane's (each lane has its own worker)."""

    async def run() -> list[list[int]]:
        batcher = MicroBatcher(
            lambda batch: np.zeros((len(batch), 1)),
            max_wait_ms=0,
            max_queue_size=1000,
            **{"max_batch_tokens": 1000, "max_batch_size": 64, **budgets},
        )
        loop = asyncio.get_running_loop()
        with batcher.admit(len(lengths)) as admission:
            futures = [loop.create_future() for _ in lengths]
            with batcher._ready:
                batcher._enqueue([_Item(FakeEncoded(n), f) for n, f in zip(lengths, futures)])  # type: ignore[arg-type]
            admission.count = 0
        batches = []
        for long in (False, True):
            while batch := batcher.next_batch(long=long):
                batches.append([item.encoded.length for item in batch])
        return batches

    return asyncio.run(run())


@pytest.mark.parametrize(
    "lengths, budgets, batches",
    [
        pytest.param([5, 3, 9, 4], {}, [[5, 3, 9, 4]], id="all-fit"),
        pytest.param([5, 3, 9, 4], {"max_batch_size": 3}, [[5, 3, 9], [4]], id="size"),
        pytest.param([10, 10, 10, 30], {"max_batch_tokens": 40}, [[10, 10, 10], [30]], id="tokens"),
        pytest.param([20, 10, 3, 20], {"max_batch_tokens": 60}, [[20, 10, 3], [20]], id="order-kept-not-sorted"),
        pytest.param([256, 13, 13, 13], {"max_batch_tokens": 4096}, [[256, 13], [13, 13]], id="long-does-not-pad-many"),
        pytest.param(
            [13, 13, 13, 256, 13], {"max_batch_tokens": 4096}, [[13, 13, 13], [256, 13]], id="long-waits-at-front"
        ),
    ],
)
def test_batches_in_arrival_order_under_budgets(lengths, budgets, batches):
    assert plan(lengths, **budgets) == batches


@pytest.mark.parametrize(
    "lengths, budgets, batches",
    [
        pytest.param(
            [100, 100, 100, 10, 10, 100, 10],
            {"long_input_tokens": 50, "long_batch_tokens": 200},
            [[10, 10, 10], [100, 100], [100, 100]],
            id="short-first-then-long-under-its-budget",
        ),
        pytest.param(
            [100, 10, 100, 10, 100, 10, 100, 10],
            {"long_input_tokens": 50, "long_batch_tokens": 100, "max_batch_size": 2},
            [[10, 10], [10, 10], [100], [100], [100], [100]],
            id="each-lane-in-arrival-order",
        ),
        pytest.param(
            [100, 60, 100],
            {"long_input_tokens": 50, "long_batch_tokens": 5000, "max_batch_tokens": 300},
            [[100, 60, 100]],
            id="long-budget-at-most-max-batch-tokens",
        ),
        pytest.param(
            [300, 10],
            {"long_input_tokens": 50, "long_batch_tokens": 100},
            [[10], [300]],
            id="one-long-input-over-the-budget-still-runs",
        ),
    ],
)
def test_long_inputs_have_their_own_lane(lengths, budgets, batches):
    assert plan(lengths, **budgets) == batches


def test_a_short_query_does_not_wait_for_long_work():
    """Long work running (a slow batch of windows), a short query runs beside it on its lane's worker."""
    long_started = threading.Event()
    release_long = threading.Event()

    def run_batch(batch):
        if batch[0].length > 50:
            long_started.set()
            assert release_long.wait(10), "the long batch was never released"
        return np.full((len(batch), 1), float(batch[0].length), dtype=np.float32)

    async def run() -> list[str]:
        batcher = MicroBatcher(
            run_batch,
            max_batch_tokens=1000,
            max_batch_size=8,
            max_wait_ms=0,
            max_queue_size=10,
            long_input_tokens=50,
            long_batch_tokens=100,
        )
        batcher.start()
        finished = []

        async def request(length: int) -> None:
            with batcher.admit(1) as admission:
                (result,) = await batcher.submit([FakeEncoded(length)], admission)  # type: ignore[list-item]
            finished.append(f"{length}: {float(result.logits[0]):g}")

        long = asyncio.create_task(request(100))
        await asyncio.to_thread(long_started.wait, 10)
        await asyncio.wait_for(request(5), 5)  # answered while the long batch still runs
        release_long.set()
        await long
        await batcher.stop()
        return finished

    assert asyncio.run(run()) == ["5: 5", "100: 100"]


def test_admission_counts_queued_and_running_inputs():
    async def run() -> None:
        batcher = MicroBatcher(
            lambda batch: np.zeros((len(batch), 1)),
            max_batch_tokens=100,
            max_batch_size=8,
            max_wait_ms=0,
            max_queue_size=5,
        )
        with batcher.admit(3):
            with pytest.raises(QueueFull, match=r"\(3 inputs queued or running, 3 more asked for, limit 5\)"):
                batcher.admit(3)
            with batcher.admit(2):
                assert batcher.admitted == 5
        assert (batcher.admitted, batcher.admitted_peak) == (0, 5)

    asyncio.run(run())


def threads_that_ran(
    alone_on_loop, inputs_per_request: list[int], hold_one_back: bool = False, max_wait_ms: float = 0
) -> list[str]:
    """Submit requests at once and return the name of the thread each batch ran on."""
    ran = []

    def run_batch(batch):
        ran.append(threading.current_thread().name)
        return np.arange(len(batch), dtype=np.float32).reshape(-1, 1)

    async def run() -> None:
        batcher = MicroBatcher(
            run_batch,
            max_batch_tokens=100,
            max_batch_size=8,
            max_wait_ms=max_wait_ms,
            max_queue_size=10,
            sole_caller=alone_on_loop,
        )
        batcher.start()

        async def request(count: int) -> list[float]:
            with batcher.admit(count) as admission:
                results = await batcher.submit([FakeEncoded(3)] * count, admission)
            return [float(result.logits[0]) for result in results]

        other = batcher.admit(1) if hold_one_back else None  # another request, still tokenizing
        answers = await asyncio.gather(*(request(count) for count in inputs_per_request))
        assert answers == [[float(i) for i in range(count)] for count in inputs_per_request]
        if other is not None:
            other.__exit__()
        assert batcher.admitted == 0
        await batcher.stop()

    asyncio.run(run())
    return ran


@pytest.mark.parametrize(
    "alone_on_loop, inputs_per_request, hold_one_back, max_wait_ms, threads",
    [
        pytest.param(lambda: True, [1], False, 0, ["MainThread"], id="alone"),
        pytest.param(lambda: True, [1, 1], False, 0, ["MainThread", "MainThread"], id="alone-one-after-another"),
        pytest.param(lambda: False, [1], False, 0, ["inference"], id="other-clients"),
        pytest.param(None, [1], False, 0, ["inference"], id="no-check-offered"),
        pytest.param(lambda: True, [2], False, 0, ["inference"], id="two-inputs"),
        pytest.param(lambda: True, [1], True, 0, ["inference"], id="another-request-admitted"),
        pytest.param(lambda: True, [1], False, 5, ["inference"], id="batching-window-set"),
    ],
)
def test_a_lone_input_runs_on_the_loop_only_when_nobody_else_can_wait(
    alone_on_loop, inputs_per_request, hold_one_back, max_wait_ms, threads
):
    assert threads_that_ran(alone_on_loop, inputs_per_request, hold_one_back, max_wait_ms) == threads


def test_a_failed_run_on_the_loop_reaches_its_caller():
    def run_batch(batch):
        raise RuntimeError("session failed")

    async def run() -> None:
        batcher = MicroBatcher(
            run_batch,
            max_batch_tokens=100,
            max_batch_size=8,
            max_wait_ms=0,
            max_queue_size=10,
            sole_caller=lambda: True,
        )
        batcher.start()
        with batcher.admit(1) as admission, pytest.raises(RuntimeError, match="session failed"):
            await batcher.submit([FakeEncoded(3)], admission)
        assert batcher.admitted == 0
        await batcher.stop()

    asyncio.run(run())


@pytest.mark.parametrize(
    "why, message",
    [
        pytest.param(None, "the server is shutting down; retry on another replica", id="process-stops"),
        pytest.param(
            VersionUnloaded("model 'm' version '1' was unloaded while this request ran; retry it"),
            "model 'm' version '1' was unloaded while this request ran; retry it",
            id="version-unloaded",
        ),
    ],
)
def test_inputs_still_queued_at_stop_fail_with_the_reason(why, message):
    running, release = threading.Event(), threading.Event()

    def run_batch(batch):
        running.set()
        assert release.wait(60), "the running batch was never released"
        return np.zeros((len(batch), 1), dtype=np.float32)

    async def run() -> None:
        batcher = MicroBatcher(run_batch, max_batch_tokens=100, max_batch_size=1, max_wait_ms=0, max_queue_size=10)
        batcher.start()
        with batcher.admit(2) as admission:
            submitted = asyncio.ensure_future(batcher.submit([FakeEncoded(3), FakeEncoded(3)], admission))
            await asyncio.to_thread(running.wait)  # the first input runs (and waits), the second stays queued
            assert batcher.queue_depth == 1
            stopping = asyncio.ensure_future(batcher.stop(why))
            await asyncio.sleep(0)  # stop's first step marks the batcher stopping before the batch ends
            release.set()
            await stopping
            with pytest.raises(Exception) as raised:
                await submitted
        assert str(raised.value) == message

    asyncio.run(run())


def test_long_work_yields_to_short_queries_for_a_bounded_time():
    """A long input waits while a short batch runs, but not longer than LONG_YIELD_SECONDS: then it runs
    beside it, so a stream of short queries cannot starve it. The batcher's clock is the test's."""
    from service.core.batcher import LONG_YIELD_SECONDS

    short_started, release_short, long_started = threading.Event(), threading.Event(), threading.Event()
    clock, long_worker_read_the_clock = [0.0], threading.Event()

    def read_clock() -> float:
        if threading.current_thread().name == "inference-long":  # its first read sets the yield's deadline
            long_worker_read_the_clock.set()
        return clock[0]

    def run_batch(batch):
        if batch[0].length > 50:
            long_started.set()
        else:
            short_started.set()
            assert release_short.wait(60), "the short batch was never released"
        return np.zeros((len(batch), 1), dtype=np.float32)

    async def run() -> tuple[bool, bool]:
        batcher = MicroBatcher(
            run_batch,
            max_batch_tokens=1000,
            max_batch_size=8,
            max_wait_ms=0,
            max_queue_size=10,
            long_input_tokens=50,
            long_batch_tokens=100,
            clock=read_clock,
        )
        batcher.start()

        async def request(length: int) -> None:
            with batcher.admit(1) as admission:
                await batcher.submit([FakeEncoded(length)], admission)  # type: ignore[list-item]

        short = asyncio.create_task(request(5))
        await asyncio.to_thread(short_started.wait, 60)
        long = asyncio.create_task(request(100))
        await asyncio.to_thread(long_worker_read_the_clock.wait, 60)  # yielding, its deadline set at 0
        # Just short of the yield, the long input is still held, however long the test looks (the worker wakes
        # at least every LONG_YIELD_SECONDS of real time to read the clock again).
        clock[0] = LONG_YIELD_SECONDS * 0.99
        held = not await asyncio.to_thread(long_started.wait, 3 * LONG_YIELD_SECONDS)
        clock[0] = LONG_YIELD_SECONDS
        ran_beside = await asyncio.to_thread(long_started.wait, 60)
        release_short.set()
        await asyncio.gather(short, long)
        await batcher.stop()
        return held, ran_beside

    held, ran_beside = asyncio.run(run())
    assert held  # the short batch was running: the long one waited
    assert ran_beside  # and once the yield was over it ran beside the short one, which was never released


def queued(items: list[tuple[int, int, float]], **budgets: int) -> list[list[tuple[int, int]]]:
    """The batches cut from inputs (length, priority, seconds already waited) queued in this order."""

    async def run() -> list[list[tuple[int, int]]]:
        now = 1000.0  # the batcher's clock stands still: ages are exactly what the case says
        batcher = MicroBatcher(
            lambda batch: np.zeros((len(batch), 1)),
            max_wait_ms=0,
            max_queue_size=1000,
            clock=lambda: now,
            **{"max_batch_tokens": 1000, "max_batch_size": 64, **budgets},
        )
        loop = asyncio.get_running_loop()
        with batcher.admit(len(items)) as admission:
            entries = [
                _Item(FakeEncoded(n), loop.create_future(), now - waited, priority)  # type: ignore[arg-type]
                for n, priority, waited in items
            ]
            with batcher._ready:
                batcher._enqueue(entries)
            admission.count = 0
        batches = []
        while batch := batcher.next_batch():
            batches.append([(item.encoded.length, item.priority) for item in batch])
        return batches

    return asyncio.run(run())


HIGH, NORMAL, LOW = 1, 2, 3


@pytest.mark.parametrize(
    "items, budgets, batches",
    [
        pytest.param(
            [(1, LOW, 0), (2, NORMAL, 0), (3, HIGH, 0), (4, NORMAL, 0), (5, HIGH, 0)],
            {},
            [[(3, HIGH), (5, HIGH)], [(2, NORMAL), (4, NORMAL)], [(1, LOW)]],
            id="higher-levels-first-arrival-order-within-each-one-level-a-batch",
        ),
        pytest.param(
            [(1, LOW, 0), (2, HIGH, 0), (3, HIGH, 0), (4, HIGH, 0)],
            {"max_batch_size": 2},
            [[(2, HIGH), (3, HIGH)], [(4, HIGH)], [(1, LOW)]],
            id="a-high-input-never-waits-for-lower-work-to-fill-its-batch",
        ),
        pytest.param(
            [(1, LOW, 0.6), (6, LOW, 0.6), (2, HIGH, 0), (3, HIGH, 0), (4, HIGH, 0), (5, HIGH, 0)],
            {"max_batch_size": 2},
            [[(1, LOW), (2, HIGH)], [(6, LOW), (3, HIGH)], [(4, HIGH), (5, HIGH)]],
            id="an-aged-lower-level-gets-one-place-a-batch",
        ),
        pytest.param(
            [(1, HIGH, 0), *[(10, LOW, 0)] * 20],
            {},
            [[(1, HIGH)], [(10, LOW)] * 16, [(10, LOW)] * 4],
            id="after-high-inputs-lower-batches-stay-short",
        ),
        pytest.param(
            [(10, LOW, 0)] * 20,
            {},
            [[(10, LOW)] * 20],
            id="alone-a-lower-level-batches-in-full",
        ),
        pytest.param(
            [(1, LOW, 0.9), (2, NORMAL, 0.6), (3, HIGH, 0)],
            {"max_batch_size": 1},
            [[(1, LOW)], [(2, NORMAL)], [(3, HIGH)]],
            id="the-longest-waiting-aged-level-first",
        ),
    ],
)
def test_priorities_order_batches_and_no_level_starves(items, budgets, batches):
    assert queued(items, **budgets) == batches


def test_low_priority_inputs_leave_a_quarter_of_the_queue_to_the_others():
    batcher = MicroBatcher(
        lambda batch: np.zeros((len(batch), 1)), max_batch_tokens=100, max_batch_size=8, max_wait_ms=0, max_queue_size=8
    )
    with batcher.admit(6, LOW):
        with pytest.raises(QueueFull, match=r"\(6 inputs queued or running, 1 more asked for, limit 6\)"):
            batcher.admit(1, LOW)
        with batcher.admit(2, HIGH) as high, pytest.raises(QueueFull, match="limit 8"):
            high.grow(1)
    assert batcher.admitted == 0
