"""Deadlines and priorities as the transports read them, and a deadline kept by a real engine."""

from __future__ import annotations

import asyncio
import threading

import pytest

from service.core import urgency
from service.core.engine import Engine
from service.core.failures import BadRequest, DeadlineExceeded
from service.core.manifest import load_verified
from service.core.metrics import Metrics, ModelMetrics
from service.settings import Settings
from tests.conftest import needs_export


@pytest.mark.parametrize(
    "read, value, expected",
    [
        pytest.param(urgency.priority_header, "high", urgency.HIGH, id="header-name"),
        pytest.param(urgency.priority_header, " LOW ", urgency.LOW, id="header-case"),
        pytest.param(urgency.priority_header, "2", urgency.NORMAL, id="header-number"),
        pytest.param(urgency.priority_parameter, 0, urgency.NORMAL, id="parameter-default"),
        pytest.param(urgency.priority_parameter, 1, urgency.HIGH, id="parameter-high"),
        pytest.param(urgency.priority_parameter, 3, urgency.LOW, id="parameter-low"),
    ],
)
def test_priorities_in_each_transports_words(read, value, expected):
    assert read(value) == expected


@pytest.mark.parametrize(
    "read, value, message",
    [
        pytest.param(urgency.priority_header, "urgent", "x-priority must be high, normal or low", id="header"),
        pytest.param(urgency.priority_parameter, 4, "parameter 'priority' must be 1 (high)", id="parameter"),
        pytest.param(urgency.priority_parameter, True, "parameter 'priority' must be 1 (high)", id="bool"),
        pytest.param(urgency.timeout_header, "0", "x-request-timeout must be a number of seconds above 0", id="zero"),
        pytest.param(urgency.timeout_header, "nan", "x-request-timeout must be a number", id="nan"),
        pytest.param(urgency.timeout_header, "1e9", "and at most 86400", id="huge"),
        pytest.param(urgency.timeout_parameter, -1, "parameter 'timeout' must be a whole number", id="negative"),
        pytest.param(urgency.timeout_parameter, 0.5, "parameter 'timeout' must be a whole number", id="float"),
    ],
)
def test_bad_urgency_is_a_bad_request(read, value, message):
    with pytest.raises(BadRequest, match=message.replace("(", r"\(").replace(")", r"\)")):
        read(value)


def test_timeouts_become_deadlines_on_one_clock():
    before = urgency.now()
    assert before + 2.5 <= urgency.timeout_header("2.5") <= urgency.now() + 2.5
    assert urgency.timeout_parameter(0) is None  # Triton's "no timeout"
    deadline = urgency.timeout_parameter(1_500_000)
    assert deadline is not None and before + 1.5 <= deadline <= urgency.now() + 1.5


@needs_export
def test_an_input_whose_deadline_passes_in_the_queue_is_dropped_unrun(tiny_bundle):
    """A real engine whose one worker is held in a batch: a request queued behind it with a deadline gets
    DeadlineExceeded at that deadline, its input is dropped without running, and the metric says where."""
    bundle = tiny_bundle("bert")
    metrics = Metrics()

    async def run() -> tuple[list[int], int]:
        engine = Engine(Settings(bundle=str(bundle)), ModelMetrics(metrics, "m"), load_verified(bundle))
        await engine.start()
        assert engine.batcher is not None
        running, release = threading.Event(), threading.Event()
        real_run = engine.batcher._run_batch
        sizes: list[int] = []

        def held_run(batch):
            sizes.append(len(batch))
            running.set()
            assert release.wait(10)
            return real_run(batch)

        engine.batcher._run_batch = held_run
        first = asyncio.create_task(engine.classify(["first"], truncate=True))
        await asyncio.to_thread(running.wait, 10)
        with pytest.raises(DeadlineExceeded, match="waited in the queue; none of them ran"):
            await engine.classify(["late"], truncate=True, deadline=urgency.deadline_after(0.05))
        with pytest.raises(DeadlineExceeded, match="waited to be tokenized"):
            await engine.classify(["later"], truncate=True, deadline=urgency.now())
        release.set()
        await first
        # The next request runs alone: the late input left the queue without running.
        await engine.classify(["next"], truncate=True)
        dropped = engine.batcher.dropped
        await engine.stop()
        return sizes, dropped

    sizes, dropped = asyncio.run(run())
    assert sizes == [1, 1] and dropped == 1
    text = metrics_text(metrics)
    assert 'classifier_deadline_exceeded_total{model="m",stage="queue"} 1.0' in text
    assert 'classifier_deadline_exceeded_total{model="m",stage="tokenize"} 1.0' in text


@needs_export
def test_request_timeout_is_the_default_deadline(tiny_bundle):
    bundle = tiny_bundle("bert")

    async def run() -> None:
        engine = Engine(
            Settings(bundle=str(bundle), request_timeout=1e-9), ModelMetrics(Metrics(), "m"), load_verified(bundle)
        )
        await engine.start()
        with pytest.raises(DeadlineExceeded):
            await engine.classify(["too late"], truncate=True)
        result = await engine.classify(["in time"], truncate=True, deadline=urgency.deadline_after(60))
        assert result.logits.shape[0] == 1
        await engine.stop()

    asyncio.run(run())


def metrics_text(metrics: Metrics) -> str:
    from prometheus_client import generate_latest

    return generate_latest(metrics.registry).decode()
