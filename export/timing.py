"""Latency of each candidate variant on this CPU, for ``--variant auto``."""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass

from service.core.classifier import OnnxClassifier, TextInput

BATCH_SIZES = (1, 32)


@dataclass(frozen=True)
class Timing:
    variant: str
    batch1_ms: float
    batch32_ms: float


def measure(variant: str, classifier: OnnxClassifier, texts: Sequence[TextInput], repeats: int = 20) -> Timing:
    """Median wall time of one session run at batch 1 and at batch 32."""
    encoded = classifier.encode(list(texts))
    results = []
    for size in BATCH_SIZES:
        batch = [encoded[i % len(encoded)] for i in range(size)]
        classifier.run(batch)  # warm-up: first runs allocate buffers
        samples = []
        for _ in range(repeats if size == 1 else max(3, repeats // 4)):
            start = time.perf_counter()
            classifier.run(batch)
            samples.append((time.perf_counter() - start) * 1000)
        results.append(statistics.median(samples))
    return Timing(variant, *results)


def fastest(timings: Sequence[Timing]) -> Timing:
    """Lowest geometric mean of the two latencies, each relative to the best seen."""
    best1 = min(t.batch1_ms for t in timings)
    best32 = min(t.batch32_ms for t in timings)
    return min(timings, key=lambda t: (t.batch1_ms / best1) * (t.batch32_ms / best32))
