"""Dynamic micro-batching: admit first, then batch in arrival order.

A request first asks for admission (``admit``): it gets slots for its inputs, or
``QueueFull`` before any tokenizing is spent on it. Slots are held until each
input has run or been dropped, so queued plus running inputs never exceed
``max_queue_size``.

The queue has two lanes: inputs of at most ``long_input_tokens`` tokens (queries,
short texts) and longer ones (long texts, the windows of a whole document), each
with a worker of its own. A worker builds one batch at a time from the front of
its lane: inputs join in arrival order until the next one would break the size or
padded-token budget (``long_batch_tokens`` for long inputs), or would leave less
than half the batch's padded tokens real; that one waits at the front for the
next batch. Within a lane no input waits behind one of its priority level (or a lower
one) that arrived after it: a lane holds a queue per level (``service.core.urgency``), and
a batch takes the highest waiting level's inputs, and only that level's (a quarter of
``max_batch_size`` at most while a higher level has been active in the last
``PRIORITY_RECENT_SECONDS``, so that a high-priority input waits behind short batches).
So that a lower level cannot starve, a batch first takes one input of a lower level whose oldest has waited
``PRIORITY_AGING_SECONDS`` (the longest waiting first): under any load from higher
levels, the k-th input of a level waits at most that long plus k batches.
Short queries come first: a batch of long inputs starts only when no short one is
queued or running, or once it has yielded for ``LONG_YIELD_SECONDS`` (so long work
cannot starve), and a short batch never waits for a long one to end: it runs
beside it, the two sharing the cores for at most one long batch (a 256-token
window costs about ten short queries). Inputs whose caller has gone (a cancelled
future) are dropped before they run.

Each worker is a dedicated thread: it forms a batch, runs it, and hands the
results back to the loop in one call, with no task, executor future or extra
loop turn in between. One case skips even that hand-off each way: when the
transport says nobody else can be waiting on the event loop (``sole_caller``: one
open connection, nothing else served), the batcher holds no other input and no
batching window is set, a single input runs on the loop itself. Nothing could
have joined its batch, and the two thread wake-ups cost more than blocking a
loop nobody else uses.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from service.core.classifier import Encoded
from service.core.failures import Failure, PayloadTooLarge, QueueFull, ShuttingDown
from service.core.tracing import OFF, Tracing
from service.core.urgency import LEVELS, LOW, NORMAL

log = logging.getLogger("service.core.batcher")
RunBatch = Callable[[Sequence[Encoded]], np.ndarray]
# Real tokens over padded tokens below which a batch is cut rather than grown.
MIN_FILL = 0.5
# How long a batch of long inputs waits for short ones to be done before it runs beside them anyway.
LONG_YIELD_SECONDS = 0.2
# How long a lower priority level's oldest input waits before it takes a place in the next batch.
PRIORITY_AGING_SECONDS = 0.5
# The share of the queue bound low-priority inputs may fill: the rest stays free for the levels above.
LOW_PRIORITY_QUEUE_SHARE = 0.75
# While a higher level has had inputs this recently, a lower level's batches hold at most this share of
# max_batch_size: a high-priority input then waits behind a short batch, not a full one.
PRIORITY_RECENT_SECONDS = 1.0
PRIORITY_BATCH_SHARE = 0.25


@dataclass
class _Item:
    encoded: Encoded
    future: asyncio.Future[ItemResult]
    queued_at: float = field(default_factory=time.perf_counter)
    priority: int = NORMAL
    trace: Any = None  # the span context of the request it belongs to, when tracing


class _Lane:
    """One lane's queued inputs: a queue per priority level, each in arrival order."""

    def __init__(self) -> None:
        self.levels: dict[int, deque[_Item]] = {level: deque() for level in LEVELS}
        self.last_seen: dict[int, float] = {level: -math.inf for level in LEVELS}  # when each level last queued

    def __len__(self) -> int:
        return sum(len(queue) for queue in self.levels.values())

    def __bool__(self) -> bool:
        return any(self.levels.values())

    def append(self, item: _Item) -> None:
        self.levels[item.priority].append(item)
        self.last_seen[item.priority] = item.queued_at

    def higher_level_recently(self, level: int, now: float) -> bool:
        return any(now - self.last_seen[above] < PRIORITY_RECENT_SECONDS for above in LEVELS if above < level)

    def first(self) -> _Item:
        """The input that has waited longest, of any level."""
        return min((queue[0] for queue in self.levels.values() if queue), key=lambda item: item.queued_at)

    def next_queue(self) -> deque[_Item] | None:
        """The queue whose front goes next: the highest level that has inputs."""
        return next((queue for queue in self.levels.values() if queue), None)

    def aged_queue(self, now: float) -> deque[_Item] | None:
        """A level below the highest waiting one whose front has waited PRIORITY_AGING_SECONDS (the longest first)."""
        waiting = [queue for queue in self.levels.values() if queue]
        aged = [queue for queue in waiting[1:] if now - queue[0].queued_at >= PRIORITY_AGING_SECONDS]
        return min(aged, key=lambda queue: queue[0].queued_at) if aged else None

    def take_all(self) -> list[_Item]:
        items = [item for queue in self.levels.values() for item in queue]
        for queue in self.levels.values():
            queue.clear()
        return items


@dataclass(frozen=True)
class ItemResult:
    logits: np.ndarray
    queue_seconds: float
    inference_seconds: float


@dataclass(frozen=True)
class BatchStats:
    size: int
    padded_tokens: int
    seconds: float


class Admission:
    """Slots held by one request; whatever it did not hand to the queue is returned on exit."""

    def __init__(self, batcher: MicroBatcher, count: int, priority: int = NORMAL) -> None:
        self._batcher = batcher
        self.count = count
        self.priority = priority

    def __enter__(self) -> Admission:
        return self

    def __exit__(self, *exc: object) -> None:
        self._batcher._release(self.count)
        self.count = 0

    def grow(self, count: int) -> None:
        """``count`` more slots (a long document's further windows) or QueueFull; PayloadTooLarge when the
        request would need more slots than the queue has at its priority, which no wait can give it."""
        self._batcher._never_fits(self.count + count, self.priority)
        self._batcher._reserve(count, self.priority)
        self.count += count


def _stopped(batch: Sequence[Encoded]) -> np.ndarray:
    raise RuntimeError("the batcher has stopped")


class MicroBatcher:
    def __init__(
        self,
        run_batch: RunBatch,
        *,
        max_batch_tokens: int,
        max_batch_size: int,
        max_wait_ms: float,
        max_queue_size: int,
        long_input_tokens: int | None = None,
        long_batch_tokens: int | None = None,
        on_batch: Callable[[BatchStats], None] = lambda _: None,
        sole_caller: Callable[[], bool] | None = None,
        tracing: Tracing = OFF,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        """``sole_caller``: a check, made when an input is submitted, that no other caller can be
        waiting on the event loop; without it someone always might be. ``clock``: the seconds every
        wait, window and age is measured in (tests drive it by hand; waits still sleep in real time
        and check it again on waking)."""
        self._run_batch = run_batch
        self._clock = clock
        self.max_batch_tokens = max_batch_tokens
        self.max_batch_size = max_batch_size
        self.max_wait = max_wait_ms / 1000
        self.max_queue_size = max_queue_size
        # Without them every input is short: one lane, as before lanes existed.
        self.long_input_tokens = long_input_tokens if long_input_tokens is not None else max_batch_tokens
        self.long_batch_tokens = min(long_batch_tokens or max_batch_tokens, max_batch_tokens)
        self._on_batch = on_batch
        self._sole_caller = sole_caller
        self._tracing = tracing
        self._pending = _Lane()
        self._long = _Lane()
        # One lock guards both lanes and the stop flag between the event loop and the workers; each
        # worker waits on its own condition, so an input wakes the worker of its lane.
        lock = threading.Lock()
        self._ready = threading.Condition(lock)
        self._ready_long = threading.Condition(lock)
        self._stopping = False
        self._short_running = False  # a short batch is running (long work yields to it)
        self._counts = threading.Lock()  # admitted/dropped change on every thread
        self._threads: list[threading.Thread] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self.admitted = 0  # queued + running inputs (and those being tokenized)
        self.admitted_peak = 0
        self.dropped = 0  # inputs whose caller left before they ran

    @property
    def queue_depth(self) -> int:
        return len(self._pending) + len(self._long)

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._threads = [
            threading.Thread(target=self._work, args=(False,), name="inference", daemon=True),
            threading.Thread(target=self._work, args=(True,), name="inference-long", daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    async def stop(self, why: Failure | None = None) -> None:
        """Finish the running batch; inputs still queued fail with ``why`` (ShuttingDown by default)."""
        with self._ready:
            self._stopping = True
            self._ready.notify()
            self._ready_long.notify()
        for thread in self._threads:
            await asyncio.to_thread(thread.join)  # lets a running batch finish and deliver
        with self._ready:
            left = [*self._pending.take_all(), *self._long.take_all()]
        for item in left:
            if not item.future.done():
                item.future.set_exception(why or ShuttingDown())
        # Metrics callbacks may keep this batcher alive after its engine is gone: it lets go of the model it ran.
        self._run_batch = _stopped

    def _bound(self, priority: int) -> int:
        if priority == LOW:
            return max(1, int(self.max_queue_size * LOW_PRIORITY_QUEUE_SHARE))
        return self.max_queue_size

    def _never_fits(self, count: int, priority: int) -> None:
        bound = self._bound(priority)
        if count > bound:  # retrying cannot help: answered without retry advice
            raise PayloadTooLarge(
                f"the request needs {count} queue slots (one per input, or per window of a long input), more than "
                f"the queue holds at its priority ({bound}, from MAX_QUEUE_SIZE); it can never be admitted: send "
                "fewer or shorter texts, or ask for fewer windows"
            )

    def check_room(self, count: int, priority: int = NORMAL) -> None:
        """Raise QueueFull if ``count`` inputs could not be admitted now: a request refused before its
        inputs are even decoded holds its bytes for less time. ``admit`` still decides."""
        admitted = self.admitted
        if admitted + count > self._bound(priority):
            raise QueueFull(admitted, count, self._bound(priority))

    def admit(self, count: int, priority: int = NORMAL) -> Admission:
        """Reserve ``count`` slots or raise QueueFull; use as a context manager. Low-priority inputs may fill
        only ``LOW_PRIORITY_QUEUE_SHARE`` of the bound."""
        self._reserve(count, priority)
        return Admission(self, count, priority)

    def _reserve(self, count: int, priority: int = NORMAL) -> None:
        bound = self._bound(priority)
        with self._counts:
            if self.admitted + count > bound:
                raise QueueFull(self.admitted, count, bound)
            self.admitted += count
            self.admitted_peak = max(self.admitted_peak, self.admitted)

    def _release(self, count: int, dropped: int = 0) -> None:
        with self._counts:
            self.admitted -= count
            self.dropped += dropped

    async def submit(
        self, inputs: Sequence[Encoded], admission: Admission, priority: int = NORMAL, trace: Any = None
    ) -> list[ItemResult]:
        """Queue admitted inputs at a priority level and wait for their results, in order. ``trace``: the span
        context their batch's span links to."""
        if len(inputs) > admission.count:
            raise ValueError("more inputs than admitted slots")
        if self._loop is None:
            raise RuntimeError("the batcher has not been started")
        # The loop start() kept: get_running_loop would check the process id on every call.
        queued_at = self._clock()
        items = [_Item(encoded, self._loop.create_future(), queued_at, priority, trace) for encoded in inputs]
        # From here each queued item owns its slot until it has run or been dropped.
        admission.count -= len(items)
        if len(items) == 1 and self._alone(items):
            self._run(items, on_loop=True)
            return [items[0].future.result()]
        with self._ready:
            self._enqueue(items)
        if len(items) == 1:  # the common case, without gather's bookkeeping
            return [await items[0].future]
        return list(await asyncio.gather(*(item.future for item in items)))

    def _enqueue(self, items: list[_Item]) -> None:
        """Each input into its lane, by its length, and its lane's worker woken (the lock is held)."""
        for item in items:
            (self._long if item.encoded.length > self.long_input_tokens else self._pending).append(item)
        if self._pending:
            self._ready.notify()
        if self._long:
            self._ready_long.notify()

    def _alone(self, items: list[_Item]) -> bool:
        """Whether these inputs are all the batcher holds and no other client can be waiting."""
        # A batching window (max_wait) asks to wait for company, which may yet connect.
        sole_caller = self._sole_caller
        return not self.max_wait and sole_caller is not None and self.admitted == len(items) and sole_caller()

    def _work(self, long: bool) -> None:
        """A lane's worker thread: wait for inputs, cut a batch, run it, deliver; until stopped."""
        lane, ready = (self._long, self._ready_long) if long else (self._pending, self._ready)
        while True:
            with ready:
                while not lane and not self._stopping:
                    ready.wait()
                if self._stopping:
                    return
                if long:
                    self._yield_to_short_work()
                    if self._stopping:
                        return
                elif self.max_wait:
                    self._wait_for_company()
                batch = self.next_batch(long=long)
                self._short_running = not long and bool(batch)
            if batch:
                try:
                    self._run(batch)
                finally:
                    if not long:
                        with ready:
                            self._short_running = False
                            self._ready_long.notify()

    def _yield_to_short_work(self) -> None:
        """Hold long work while short inputs are queued or running, up to ``LONG_YIELD_SECONDS`` (the lock is
        held)."""
        deadline = self._clock() + LONG_YIELD_SECONDS
        while (self._pending or self._short_running) and not self._stopping and (delay := deadline - self._clock()) > 0:
            self._ready_long.wait(delay)

    def _wait_for_company(self) -> None:
        """Hold the first short input up to ``max_wait`` for others to join it (the lock is held)."""
        deadline = self._pending.first().queued_at + self.max_wait
        while (
            len(self._pending) < self.max_batch_size and not self._stopping and (delay := deadline - self._clock()) > 0
        ):
            self._ready.wait(delay)

    def next_batch(self, *, long: bool = False) -> list[_Item]:
        """The next batch of one lane (the lock is held)."""
        if long:
            return self._cut(self._long, self.long_batch_tokens)
        return self._cut(self._pending, self.max_batch_tokens)

    def _cut(self, lane: _Lane, max_tokens: int) -> list[_Item]:
        """Take inputs from the front of the lane's highest waiting level while they fit the budgets: a batch
        holds one level, so a higher level's input never runs in a batch grown with lower levels' work. An
        input of an aged lower level, if there is one, goes first, and higher levels fill the rest."""
        batch: list[_Item] = []
        longest = real = 0
        now = self._clock()
        aged = lane.aged_queue(now)
        lowest = LOW if aged is not None else None  # the lowest level this batch may take
        size = self.max_batch_size
        while (queue := aged or lane.next_queue()) is not None:
            aged = None
            item = queue[0]
            if item.future.done():  # its caller has gone (a future cancelled on the loop): dropped, unrun
                queue.popleft()
                self._release(1, dropped=1)
                continue
            if lowest is None:
                lowest = item.priority
                if lane.higher_level_recently(lowest, now):
                    size = max(1, int(self.max_batch_size * PRIORITY_BATCH_SHARE))
            elif item.priority > lowest:
                break
            width = max(longest, item.encoded.length)
            padded = (len(batch) + 1) * width
            if batch and (len(batch) >= size or padded > max_tokens or real + item.encoded.length < MIN_FILL * padded):
                break
            batch.append(queue.popleft())
            longest, real = width, real + item.encoded.length
        return batch

    def _run(self, batch: list[_Item], on_loop: bool = False) -> None:
        started = self._clock()
        encoded = [i.encoded for i in batch]
        try:
            outcome: np.ndarray | BaseException = self._run_batch(encoded)
        except Exception as exc:  # one failed batch fails its callers, never the worker
            outcome = exc
        finally:
            self._release(len(batch))
        elapsed = self._clock() - started
        if not isinstance(outcome, BaseException):
            padded = len(batch) * max(e.length for e in encoded)
            try:
                self._on_batch(BatchStats(len(batch), padded, elapsed))
                if self._tracing.on:
                    ended = time.time_ns()
                    attributes = {"batch.size": len(batch), "batch.padded_tokens": padded}
                    self._tracing.batch([i.trace for i in batch], ended - int(elapsed * 1e9), ended, attributes)
            except Exception:
                log.exception("recording a batch's metrics or span failed")
        if on_loop:
            _deliver(batch, outcome, started, elapsed)
            return
        assert self._loop is not None
        try:
            self._loop.call_soon_threadsafe(_deliver, batch, outcome, started, elapsed)
        except RuntimeError:  # the loop has closed: nobody is waiting any more
            pass


def _deliver(batch: list[_Item], outcome: np.ndarray | BaseException, started: float, elapsed: float) -> None:
    """On the event loop: hand each caller still waiting its row, or the batch's error."""
    for row, item in enumerate(batch):
        if item.future.done():
            continue
        if isinstance(outcome, BaseException):
            item.future.set_exception(outcome)
        else:
            item.future.set_result(ItemResult(outcome[row], started - item.queued_at, elapsed))
