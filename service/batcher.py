"""Dynamic micro-batching: admit first, then batch in arrival order.

A request first asks for admission (``admit``): it gets slots for its inputs, or
``QueueFull`` before any tokenizing is spent on it. Slots are held until each
input has run or been dropped, so queued plus running inputs never exceed
``max_queue_size``.

One worker builds one batch at a time from the front of the queue: inputs join
in arrival order until the next one would break the size or padded-token
budget, or would leave less than half the batch's padded tokens real (one
256-token text would otherwise pad every short query beside it to 256); that
one waits at the front for the next batch. So no input waits
behind work that arrived after it, and a long text cannot be overtaken forever.
Inputs whose caller has gone (a cancelled future) are dropped before they run.
The batch runs on a dedicated thread, never on the event loop.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from service.classifier import Encoded
from service.failures import QueueFull, ShuttingDown

RunBatch = Callable[[Sequence[Encoded]], np.ndarray]
# Real tokens over padded tokens below which a batch is cut rather than grown.
MIN_FILL = 0.5


@dataclass
class _Item:
    encoded: Encoded
    future: asyncio.Future
    queued_at: float = field(default_factory=time.perf_counter)


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

    def __init__(self, batcher: MicroBatcher, count: int) -> None:
        self._batcher = batcher
        self.count = count

    def __enter__(self) -> Admission:
        return self

    def __exit__(self, *exc: object) -> None:
        self._batcher._release(self.count)
        self.count = 0


class MicroBatcher:
    def __init__(
        self,
        run_batch: RunBatch,
        *,
        max_batch_tokens: int,
        max_batch_size: int,
        max_wait_ms: float,
        max_queue_size: int,
        on_batch: Callable[[BatchStats], None] = lambda _: None,
    ) -> None:
        self._run_batch = run_batch
        self.max_batch_tokens = max_batch_tokens
        self.max_batch_size = max_batch_size
        self.max_wait = max_wait_ms / 1000
        self.max_queue_size = max_queue_size
        self._on_batch = on_batch
        self._pending: deque[_Item] = deque()
        self._wakeup = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="inference")
        self._worker: asyncio.Task | None = None
        self.admitted = 0  # queued + running inputs (and those being tokenized)
        self.admitted_peak = 0
        self.dropped = 0  # inputs whose caller left before they ran

    @property
    def queue_depth(self) -> int:
        return len(self._pending)

    def start(self) -> None:
        self._worker = asyncio.get_running_loop().create_task(self._loop(), name="micro-batcher")

    async def stop(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            try:
                await self._worker
            except asyncio.CancelledError:
                pass
        for item in self._pending:
            if not item.future.done():
                item.future.set_exception(ShuttingDown())
        self._executor.shutdown(wait=True)

    def admit(self, count: int) -> Admission:
        """Reserve ``count`` slots or raise QueueFull; use as a context manager."""
        if self.admitted + count > self.max_queue_size:
            raise QueueFull(self.admitted, count, self.max_queue_size)
        self.admitted += count
        self.admitted_peak = max(self.admitted_peak, self.admitted)
        return Admission(self, count)

    def _release(self, count: int) -> None:
        self.admitted -= count

    async def submit(self, inputs: Sequence[Encoded], admission: Admission) -> list[ItemResult]:
        """Queue admitted inputs and wait for their results, in order."""
        if len(inputs) > admission.count:
            raise ValueError("more inputs than admitted slots")
        loop = asyncio.get_running_loop()
        items = [_Item(encoded, loop.create_future()) for encoded in inputs]
        # From here each queued item owns its slot until it has run or been dropped.
        admission.count -= len(items)
        self._pending.extend(items)
        self._wakeup.set()
        return list(await asyncio.gather(*(item.future for item in items)))

    async def _loop(self) -> None:
        while True:
            if not self._pending:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            if self.max_wait:
                await self._wait_for_company()
            batch = self.next_batch()
            if batch:
                await self._run(batch)

    async def _wait_for_company(self) -> None:
        deadline = self._pending[0].queued_at + self.max_wait
        while len(self._pending) < self.max_batch_size and (delay := deadline - time.perf_counter()) > 0:
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), timeout=delay)
            except asyncio.TimeoutError:
                return

    def next_batch(self) -> list[_Item]:
        """Take inputs from the front, in arrival order, while they fit the budgets."""
        batch: list[_Item] = []
        longest = real = 0
        while self._pending:
            item = self._pending[0]
            if item.future.done():  # the caller has gone: drop it without running it
                self._pending.popleft()
                self.dropped += 1
                self._release(1)
                continue
            width = max(longest, item.encoded.length)
            padded = (len(batch) + 1) * width
            if batch and (
                len(batch) >= self.max_batch_size
                or padded > self.max_batch_tokens
                or real + item.encoded.length < MIN_FILL * padded
            ):
                break
            batch.append(self._pending.popleft())
            longest, real = width, real + item.encoded.length
        return batch

    async def _run(self, batch: list[_Item]) -> None:
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        encoded = [i.encoded for i in batch]
        try:
            logits = await loop.run_in_executor(self._executor, self._run_batch, encoded)
        except Exception as exc:  # one failed batch fails its callers, never the worker
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(exc)
            return
        finally:
            self._release(len(batch))
        elapsed = time.perf_counter() - started
        longest = max(e.length for e in encoded)
        self._on_batch(BatchStats(len(batch), len(batch) * longest, elapsed))
        for row, item in enumerate(batch):
            if not item.future.done():
                item.future.set_result(ItemResult(logits[row], started - item.queued_at, elapsed))
