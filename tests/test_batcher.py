"""How the batcher cuts the queue into batches: arrival order, budgets, padding, departed callers."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import numpy as np
import pytest

from service.batcher import MicroBatcher, _Item
from service.failures import QueueFull


@dataclass(frozen=True)
class FakeEncoded:
    """Stands in for service.classifier.Encoded: the batcher reads only ``length``."""

    length: int


def plan(lengths: list[int], **budgets: int) -> list[list[int]]:
    """The batches next_batch forms from inputs of these lengths, queued in this order."""

    async def run() -> list[list[int]]:
        batcher = MicroBatcher(lambda batch: np.zeros((len(batch), 1)), max_wait_ms=0, max_queue_size=1000,
                               **{"max_batch_tokens": 1000, "max_batch_size": 64, **budgets})
        loop = asyncio.get_running_loop()
        with batcher.admit(len(lengths)) as admission:
            futures = [loop.create_future() for _ in lengths]
            batcher._pending.extend(_Item(FakeEncoded(n), f) for n, f in zip(lengths, futures))
            admission.count = 0
        batches = []
        while batch := batcher.next_batch():
            batches.append([item.encoded.length for item in batch])
        return batches

    return asyncio.run(run())


@pytest.mark.parametrize("lengths, budgets, batches", [
    pytest.param([5, 3, 9, 4], {}, [[5, 3, 9, 4]], id="all-fit"),
    pytest.param([5, 3, 9, 4], {"max_batch_size": 3}, [[5, 3, 9], [4]], id="size"),
    pytest.param([10, 10, 10, 30], {"max_batch_tokens": 40}, [[10, 10, 10], [30]], id="tokens"),
    pytest.param([20, 10, 3, 20], {"max_batch_tokens": 60}, [[20, 10, 3], [20]], id="order-kept-not-sorted"),
    pytest.param([256, 13, 13, 13], {"max_batch_tokens": 4096}, [[256, 13], [13, 13]], id="long-does-not-pad-many"),
    pytest.param([13, 13, 13, 256, 13], {"max_batch_tokens": 4096}, [[13, 13, 13], [256, 13]], id="long-waits-at-front"),
])
def test_batches_in_arrival_order_under_budgets(lengths, budgets, batches):
    assert plan(lengths, **budgets) == batches


def test_admission_counts_queued_and_running_inputs():
    async def run() -> None:
        batcher = MicroBatcher(lambda batch: np.zeros((len(batch), 1)), max_batch_tokens=100, max_batch_size=8,
                               max_wait_ms=0, max_queue_size=5)
        with batcher.admit(3):
            with pytest.raises(QueueFull, match=r"\(3 inputs queued or running, 3 more asked for, limit 5\)"):
                batcher.admit(3)
            with batcher.admit(2):
                assert batcher.admitted == 5
        assert (batcher.admitted, batcher.admitted_peak) == (0, 5)

    asyncio.run(run())
