"""The classifier behind the routes: load, warm up, tokenize, batch, score.

Routes call ``Engine.classify``; the engine never sees a request or a response.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Sequence

import numpy as np

from service.batcher import MicroBatcher
from service.classifier import OnnxClassifier, probabilities
from service.errors import NotReady, ValidationFailed
from service.manifest import Manifest
from service.metrics import Metrics
from service.settings import Settings

log = logging.getLogger("service.engine")
WARMUP_TEXTS = ("warm up", "warm up with a somewhat longer text " * 8)


@dataclass(frozen=True)
class Classified:
    logits: np.ndarray
    tokenize_seconds: float
    queue_seconds: float
    inference_seconds: float


class Engine:
    def __init__(self, settings: Settings, metrics: Metrics, manifest: Manifest) -> None:
        self.settings = settings
        self.metrics = metrics
        self.manifest = manifest
        self.classifier: OnnxClassifier | None = None
        self.batcher: MicroBatcher | None = None
        self.not_ready_reason = "model is loading"

    @property
    def ready(self) -> bool:
        return self.batcher is not None

    async def start(self) -> None:
        """Load the session and warm it up off the event loop; readiness follows."""
        try:
            self.classifier = await asyncio.to_thread(self._load_and_warm)
        except Exception as exc:  # the reason is served by /health; the process stays up for probes
            self.not_ready_reason = f"model failed to load: {str(exc).splitlines()[0]}"
            log.error(self.not_ready_reason)
            return
        self.batcher = MicroBatcher(
            self.classifier.run,
            max_batch_tokens=self.settings.max_batch_tokens,
            max_batch_size=self.settings.max_batch_size,
            max_wait_ms=self.settings.max_wait_ms,
            max_queue_size=self.settings.max_queue_size,
            on_batch=self.metrics.observe_batch,
        )
        self.batcher.start()
        self.metrics.queue_depth.set_function(lambda: self.batcher.queue_depth if self.batcher else 0)
        log.info("ready")

    def _load_and_warm(self) -> OnnxClassifier:
        bundle = Path(self.settings.bundle)
        classifier = OnnxClassifier(
            bundle / "model.onnx",
            bundle / "tokenizer.json",
            self.manifest,
            intra_op_threads=self.settings.intra_op_threads,
            inter_op_threads=self.settings.inter_op_threads,
        )
        encoded = classifier.encode(list(WARMUP_TEXTS))
        for size in (1, 8):  # first runs allocate arenas; do it before taking traffic
            classifier.run([encoded[i % len(encoded)] for i in range(size)])
        return classifier

    async def stop(self) -> None:
        if self.batcher is not None:
            await self.batcher.stop()

    async def classify(self, texts: Sequence[str], *, truncate: bool) -> Classified:
        if self.batcher is None or self.classifier is None:
            raise NotReady(self.not_ready_reason)
        if self.settings.log_inputs:
            log.debug("inputs", extra={"fields": {"texts": list(texts)}})
        started = time.perf_counter()
        encoded = await asyncio.to_thread(partial(self.classifier.encode, texts, count_full=not truncate))
        tokenize_seconds = time.perf_counter() - started
        if not truncate:
            too_long = [(i, e.full_length) for i, e in enumerate(encoded) if (e.full_length or 0) > e.length]
            if too_long:
                index, count = too_long[0]
                raise ValidationFailed(
                    f"input {index} has {count} tokens, more than the model's limit of "
                    f"{self.classifier.max_length}; send shorter text or set truncate to true"
                )
        results = await self.batcher.submit(encoded)
        self.metrics.inputs.inc(len(texts))
        queue = max(r.queue_seconds for r in results)
        inference = max(r.inference_seconds for r in results)
        self.metrics.phase_seconds.labels("tokenize").observe(tokenize_seconds)
        self.metrics.phase_seconds.labels("queue").observe(queue)
        self.metrics.phase_seconds.labels("inference").observe(inference)
        return Classified(np.stack([r.logits for r in results]), tokenize_seconds, queue, inference)

    def scores(self, logits: np.ndarray, raw: bool) -> np.ndarray:
        return logits if raw else probabilities(logits.astype(np.float64), self.manifest.problem_type)
