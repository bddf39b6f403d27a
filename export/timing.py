"""Latency of each variant that passed, on this CPU: for the export's report (``--variant auto`` does not
choose by it)."""

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
