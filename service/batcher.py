"""Dynamic micro-batching: merge concurrent requests into few, well-packed batches.

Callers submit already-tokenized inputs and await their own logits. One worker
collects what is queued (waiting at most ``max_wait_ms`` for company), sorts it
by length so little padding is wasted, cuts it into batches that fit the token
budget, and runs each batch on a dedicated thread, never on the event loop.
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
from service.errors import Overloaded

RunBatch = Callable[[Sequence[Encoded]], np.ndarray]


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
        self.in_flight = 0

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
            item.future.cancel()
        self._executor.shutdown(wait=True)

    async def submit(self, inputs: Sequence[Encoded]) -> list[ItemResult]:
        if len(self._pending) + len(inputs) > self.max_queue_size:
            raise Overloaded(
                f"inference queue is full ({len(self._pending)} inputs waiting, limit {self.max_queue_size})",
                headers={"Retry-After": "1"},
            )
        loop = asyncio.get_running_loop()
        items = [_Item(encoded, loop.create_future()) for encoded in inputs]
        self._pending.extend(items)
        self._wakeup.set()
        return list(await asyncio.gather(*(item.future for item in items)))

    async def _loop(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            if not self._pending:
                continue
            # Give concurrent callers a moment to join, unless a full batch is already waiting.
            deadline = self._pending[0].queued_at + self.max_wait
            while len(self._pending) < self.max_batch_size and (delay := deadline - time.perf_counter()) > 0:
                try:
                    await asyncio.wait_for(self._wakeup.wait(), timeout=delay)
                    self._wakeup.clear()
                except asyncio.TimeoutError:
                    break
            taken = [self._pending.popleft() for _ in range(min(len(self._pending), self.max_queue_size))]
            taken = [item for item in taken if not item.future.cancelled()]
            for batch in self.plan(taken):
                await self._run(batch)
            if self._pending:
                self._wakeup.set()

    def plan(self, items: list[_Item]) -> list[list[_Item]]:
        """Sort by length and cut into batches within the size and padded-token budgets."""
        batches: list[list[_Item]] = []
        current: list[_Item] = []
        for item in sorted(items, key=lambda i: i.encoded.length):
            # Sorted ascending, so this item is the longest of the batch it joins.
            padded = (len(current) + 1) * item.encoded.length
            if current and (len(current) >= self.max_batch_size or padded > self.max_batch_tokens):
                batches.append(current)
                current = []
            current.append(item)
        if current:
            batches.append(current)
        return batches

    async def _run(self, batch: list[_Item]) -> None:
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        self.in_flight += len(batch)
        try:
            logits = await loop.run_in_executor(self._executor, self._run_batch, [i.encoded for i in batch])
        except Exception as exc:  # one failed batch fails its callers, never the worker
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(exc)
            return
        finally:
            self.in_flight -= len(batch)
        elapsed = time.perf_counter() - started
        self._on_batch(BatchStats(len(batch), len(batch) * batch[-1].encoded.length, elapsed))
        for row, item in enumerate(batch):
            if not item.future.done():
                item.future.set_result(ItemResult(logits[row], started - item.queued_at, elapsed))
