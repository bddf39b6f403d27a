"""Shadow versions: a candidate version answers a share of live inputs beside the serving one, and is compared.

A shadow never answers a client. After the serving version has answered a call, a
``Shadow`` picks SHADOW_FRACTION of its inputs (evenly: every input adds the fraction to
a credit, and an input is picked each time the credit reaches one, so over any run of
inputs the share is exact to one input) and runs them on the candidate in a task of its
own, off the request's path. Then it compares, input by input, what the two versions
predicted: the same label (softmax), the same decisions (sigmoid), by label name so that
versions may order or add labels; and the largest score difference over the labels they
share.

The shadow is the first work to go: picked inputs are skipped, and counted by reason,

* ``busy``: inputs are waiting in the serving version's queue;
* ``budget``: the shadow has spent its CPU budget (SHADOW_CPU_BUDGET: a share of
  wall-clock time its tokenizing and inference may take, refilled continuously);
* ``backlog``: the candidate already holds a batch's worth of shadow inputs;
* ``failed``: the candidate could not run them (it is being unloaded, say).

The candidate runs on its own session with SHADOW_THREADS threads (one by default), so
a shadow batch leaves the serving session the other cores.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import numpy as np

from service.core.classifier import TextInput
from service.core.failures import Failure
from service.core.manifest import IDENTITY, SIGMOID, Manifest
from service.core.scoring import decisions, probabilities
from service.core.windows import Reading

log = logging.getLogger("service.core.shadow")
# The budget's bucket holds at most this many seconds of refill, so a shadow idle for an
# hour cannot then spend minutes at once.
BURST_SECONDS = 5.0


class Held(Protocol):
    """A loaded version a task may keep from being stopped (``service.core.loaded.Loaded``)."""

    engine: Any

    def acquire(self) -> None: ...

    def release(self) -> None: ...


class Sampler:
    """Picks ``fraction`` of the inputs offered to it, spread evenly."""

    def __init__(self, fraction: float) -> None:
        self.fraction = fraction
        self._credit = 0.0

    def pick(self, count: int) -> list[int]:
        picked = []
        for index in range(count):
            self._credit += self.fraction
            if self._credit >= 1.0:
                self._credit -= 1.0
                picked.append(index)
        return picked


class CpuBudget:
    """Seconds of work allowed: refilled at ``share`` seconds per second, up to ``share`` x BURST_SECONDS."""

    def __init__(self, share: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.share = share
        self._clock = clock
        self._capacity = share * BURST_SECONDS
        self._left = self._capacity
        self._at = clock()

    def _refill(self) -> None:
        now = self._clock()
        self._left = min(self._capacity, self._left + (now - self._at) * self.share)
        self._at = now

    def available(self) -> bool:
        self._refill()
        return self._left > 0

    def spend(self, seconds: float) -> None:
        self._refill()
        self._left -= seconds


def compare(
    served: np.ndarray, served_by: Manifest, shadowed: np.ndarray, shadowed_by: Manifest
) -> tuple[np.ndarray | None, np.ndarray]:
    """Per input: whether the two versions predicted the same (None for regression, which predicts no
    label), and the largest score difference over the labels both have."""
    first = probabilities(served.astype(np.float64), served_by.problem_type)
    second = probabilities(shadowed.astype(np.float64), shadowed_by.problem_type)
    shared = [label for label in served_by.labels if label in shadowed_by.labels]
    columns = [shadowed_by.labels.index(label) for label in shared]
    own = [served_by.labels.index(label) for label in shared]
    deviation = np.abs(first[:, own] - second[:, columns]).max(axis=1) if shared else np.ones(len(first))
    function = served_by.score_function
    if function == IDENTITY or shadowed_by.score_function == IDENTITY:
        return None, deviation
    if function == SIGMOID:
        first_sets = [_names(row, served_by.labels) for row in decisions(first, served_by.threshold)]
        second_sets = [_names(row, shadowed_by.labels) for row in decisions(second, shadowed_by.threshold)]
        return np.array([a == b for a, b in zip(first_sets, second_sets)]), deviation
    top = [served_by.labels[i] for i in first.argmax(axis=1)]
    other = [shadowed_by.labels[i] for i in second.argmax(axis=1)]
    return np.array([a == b for a, b in zip(top, other)]), deviation


def _names(row: np.ndarray, labels: list[str]) -> frozenset[str]:
    return frozenset(labels[i] for i in np.flatnonzero(row))


class ShadowMetrics(Protocol):
    def ran(self, seconds: float, agreed: np.ndarray | None, deviation: np.ndarray) -> None: ...

    def skipped(self, reason: str, count: int) -> None: ...

    def close(self) -> None: ...


class Shadow:
    """Mirrors a share of one serving engine's inputs onto a candidate version."""

    def __init__(
        self,
        serving: Any,
        candidate: Held,
        *,
        fraction: float,
        cpu_budget: float,
        metrics: ShadowMetrics,
    ) -> None:
        self.serving = serving
        self.candidate = candidate
        self.sampler = Sampler(fraction)
        self.budget = CpuBudget(cpu_budget)
        self.metrics = metrics
        self.backlog = 0
        self._tasks: set[asyncio.Task] = set()

    def offer(self, texts: Sequence[TextInput], reading: Reading, logits: np.ndarray) -> None:
        """Called by the serving engine once it has answered ``texts``, read as ``reading`` says, with ``logits``."""
        picked = self.sampler.pick(len(texts))
        if not picked:
            return
        reason = self._skip_reason(len(picked))
        if reason is not None:
            self.metrics.skipped(reason, len(picked))
            return
        self.backlog += len(picked)
        items = [texts[i] for i in picked]
        task = asyncio.get_running_loop().create_task(self._run(items, logits[picked], reading))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _skip_reason(self, count: int) -> str | None:
        batcher = self.serving.batcher
        if batcher is not None and batcher.queue_depth > 0:
            return "busy"
        if not self.budget.available():
            return "budget"
        if self.backlog + count > self.serving.settings.max_batch_size:
            return "backlog"
        return None

    async def _run(self, items: list[TextInput], served: np.ndarray, reading: Reading) -> None:
        engine = self.candidate.engine
        self.candidate.acquire()
        started = time.perf_counter()
        try:
            result = await engine.classify(
                items,
                truncate=reading.truncate,
                direction=reading.direction,
                windowing=reading.windowing,
                side=reading.side,
            )
        except Failure:
            self.metrics.skipped("failed", len(items))
            return
        except Exception:  # a shadow's fault must never reach the serving path; it is logged and counted
            log.exception("shadow version failed on mirrored inputs")
            self.metrics.skipped("failed", len(items))
            return
        finally:
            self.candidate.release()
            self.backlog -= len(items)
        self.budget.spend(result.tokenize_seconds + result.inference_seconds)
        agreed, deviation = compare(served, self.serving.manifest, result.logits, engine.manifest)
        self.metrics.ran(time.perf_counter() - started, agreed, deviation)

    async def settle(self) -> None:
        """Wait for the shadow work under way (tests, and a clean stop)."""
        await asyncio.gather(*list(self._tasks), return_exceptions=True)
