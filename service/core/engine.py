"""The classifier behind every protocol: load, warm up, tokenize, batch, score.

Protocols call ``Engine.classify``; the engine never sees a request or a response.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import numpy as np

from service.core.batcher import MicroBatcher
from service.core.cache import LogitsCache
from service.core.classifier import OnnxClassifier, TextInput, TooManyTokens, Windowed, probabilities
from service.core.failures import DeadlineExceeded, Failure, InvalidInput, NotReady
from service.core.inputs import combine, encode, refuse_cut
from service.core.loading import WARMUP_TEXTS, load_classifier
from service.core.manifest import MODEL_FILE, Manifest
from service.core.metrics import ModelMetrics
from service.core.predictions import PredictionMonitor
from service.core.reverify import BadReferenceSet, FailedVerification, Reverification, limits_of
from service.core.shadow import Shadow
from service.core.tracing import OFF, Tracing
from service.core.urgency import NORMAL, deadline_after, now
from service.core.windows import FIRST, SECOND, InputReport, Reading, Windowing, default_aggregation
from service.settings import Settings

log = logging.getLogger("service.core.engine")
# Requests whose texts add up to at most this many characters are tokenized on the
# event loop; longer ones go to a thread so the loop keeps serving others.
INLINE_TOKENIZE_CHARS = 1024
# Decoding this many ids takes well under a millisecond; more go to a thread.
INLINE_DECODE_IDS = 2048


def _chars(item: TextInput) -> int:
    return len(item) if isinstance(item, str) else len(item[0]) + len(item[1])


@dataclass(frozen=True)
class Classified:
    logits: np.ndarray
    tokenize_seconds: float
    queue_seconds: float
    inference_seconds: float
    # What happened to each input: cut or not, in how many windows, how many tokens were read.
    reports: list[InputReport]


class Engine:
    def __init__(
        self,
        settings: Settings,
        metrics: ModelMetrics,
        manifest: Manifest,
        *,
        sole_caller: Callable[[], bool] | None = None,
        tracing: Tracing = OFF,
    ) -> None:
        self.settings = settings
        self.tracing = tracing
        self._sole_caller = sole_caller
        self.metrics = metrics
        self.manifest = manifest
        self.classifier: OnnxClassifier | None = None
        self.batcher: MicroBatcher | None = None
        self.not_ready_reason = "model is loading"
        self.reverification: Reverification | None = None
        # The engine running the graph, why, and any fallback: set at load (``service.core.loading``).
        self.engine_info: dict[str, Any] | None = None
        self.predictions: PredictionMonitor | None = None
        self.failed_verification = False
        # A version that sees a share of this one's inputs (``service.core.shadow``), set by the registry.
        self.shadow: Shadow | None = None
        self._model_hash = manifest.files[MODEL_FILE]
        self.windowing = Windowing(
            settings.windows,
            settings.window_overlap,
            settings.max_windows,
            None if settings.aggregation == "auto" else settings.aggregation,
        )
        self.aggregation = default_aggregation(manifest.score_function)
        self.cache = LogitsCache(settings.cache_size, settings.cache_bytes) if settings.cache_size else None
        if self.cache is not None:
            cache = self.cache
            metrics.cache_entries.set_function(lambda: len(cache))

    @property
    def takes_pairs(self) -> bool:
        return self.manifest.is_pair

    @property
    def is_reranker(self) -> bool:
        """A text-pair model with one output, as text-embeddings-inference defines a reranker."""
        return self.manifest.can_rerank

    @property
    def ready(self) -> bool:
        return self.batcher is not None

    async def start(self) -> None:
        """Load the session and warm it up off the event loop; readiness follows."""
        try:
            self.classifier = await asyncio.to_thread(self._load_and_warm)
        except FailedVerification as exc:
            self.failed_verification = True
            self.not_ready_reason = (
                f"bundle refused: {exc}"
                if isinstance(exc, BadReferenceSet)
                else f"model failed its re-verification on this CPU: {exc}"
            )
            log.error(self.not_ready_reason, extra={"fields": {"reverification": self._reverified()}})
            return
        except Exception as exc:  # the reason is in the log and the index; the process stays up for probes
            self.not_ready_reason = f"model failed to load: {str(exc).splitlines()[0]}"
            log.error(self.not_ready_reason)
            return
        self.batcher = MicroBatcher(
            self.classifier.run,
            max_batch_tokens=self.settings.max_batch_tokens,
            max_batch_size=self.settings.max_batch_size,
            max_wait_ms=self.settings.max_wait_ms,
            max_queue_size=self.settings.max_queue_size,
            long_input_tokens=self.settings.long_input_tokens,
            long_batch_tokens=self.settings.long_batch_tokens,
            on_batch=self.metrics.observe_batch,
            sole_caller=self._sole_caller,
            tracing=self.tracing,
        )
        self.batcher.start()
        batcher = self.batcher
        self.metrics.queue_depth.set_function(lambda: batcher.queue_depth)
        self.metrics.admitted.set_function(lambda: batcher.admitted)
        self.metrics.admitted_peak.set_function(lambda: batcher.admitted_peak)
        self.metrics.dropped.set_function(lambda: batcher.dropped)
        self.predictions = PredictionMonitor(
            self.manifest,
            Path(self.settings.bundle),
            self.metrics,
            window=self.settings.drift_window,
            low_confidence=self.settings.low_confidence,
        )
        verdict = self.reverification
        if verdict is not None:
            self.metrics.verified.set_function(lambda: float(verdict.passed))
            self.metrics.verified_agreement.set_function(lambda: verdict.agreement)
        log.info("ready", extra={"fields": {"engine": self.engine_info, "reverification": self._reverified()}})

    def _reverified(self) -> dict[str, Any] | None:
        return None if self.reverification is None else self.reverification.to_dict()

    def _load_and_warm(self) -> OnnxClassifier:
        bundle = Path(self.settings.bundle)
        loaded = load_classifier(
            bundle,
            self.manifest,
            engine=self.settings.engine,
            intra_op_threads=self.settings.intra_op_threads,
            inter_op_threads=self.settings.inter_op_threads,
            limits=limits_of(self.settings),
        )
        classifier = loaded.classifier
        self.engine_info = loaded.engine()
        self.metrics.engine = (self.engine_info["engine"], self.engine_info["precision"])
        if loaded.fallback is not None:
            reason = "load" if loaded.fallback.startswith("OpenVINO failed to load") else "verification"
            self.metrics.engine_fallbacks.labels("openvino", reason).inc()
        # The windowing tokenizers are built on first use (tens of ms, holding the GIL): build them now.
        warmup = [(text, text) for text in WARMUP_TEXTS] if self.manifest.is_pair else list(WARMUP_TEXTS)
        overlap = self.settings.window_overlap
        classifier.encode_windows(warmup[:1], overlap=overlap, max_windows=1)
        if self.manifest.zero_shot is not None:
            classifier.encode_windows(warmup[:1], overlap=overlap, max_windows=1, side=FIRST)
        self.reverification = loaded.reverification
        if self.reverification is not None and not self.reverification.passed:
            failures = "; ".join(self.reverification.failures)
            if self.settings.on_failed_verification == "refuse":
                raise FailedVerification(failures)
            log.warning(
                f"model failed its re-verification on this CPU: {failures}; served anyway (ON_FAILED_VERIFICATION=warn)"
            )
        return classifier

    async def stop(self, why: Failure | None = None) -> None:
        if self.batcher is not None:
            await self.batcher.stop(why)

    def free(self) -> None:
        """Let go of the session and tokenizers of a stopped engine, so its memory can go back to the system."""
        self.classifier, self.batcher, self.predictions = None, None, None
        self.not_ready_reason = "model version was unloaded"

    def _loaded(self) -> OnnxClassifier:
        if self.classifier is None:
            raise NotReady(self.not_ready_reason)
        return self.classifier

    def check_room(self, count: int) -> None:
        """QueueFull (or NotReady) now if ``count`` inputs could not be admitted: for a transport that
        knows how many inputs a request holds before it decodes them."""
        if self.batcher is None:
            raise NotReady(self.not_ready_reason)
        self.batcher.check_room(count)

    async def classify(
        self,
        texts: Sequence[TextInput],
        *,
        truncate: bool,
        direction: str = "right",
        windowing: Windowing | None = None,
        side: str = SECOND,
        deadline: float | None = None,
        priority: int = NORMAL,
    ) -> Classified:
        """Logits for texts or (text, text_pair) pairs, one row each: admitted (or refused) before any work,
        then batched at ``priority``. An input over the max length is cut (or refused without ``truncate``),
        or read in windows (``windowing``, default the model's) whose answers are combined into its row; of a
        pair, ``side`` is the one windowed. Past ``deadline`` (``service.core.urgency.now``; REQUEST_TIMEOUT
        from now when None) inputs not yet running are dropped and DeadlineExceeded raised."""
        batcher, classifier = self.batcher, self.classifier
        if batcher is None or classifier is None:
            raise NotReady(self.not_ready_reason)
        if deadline is None and self.settings.request_timeout:
            deadline = deadline_after(self.settings.request_timeout)
        if self.settings.log_inputs:
            log.debug("inputs", extra={"fields": {"texts": list(texts)}})
        if windowing is not None and windowing.overlap != self.windowing.overlap:
            # Each overlap asked for costs a tokenizer of its own: only those that can take effect are taken.
            room = (classifier.window_length - classifier.special_tokens(False)) // 2
            if windowing.overlap > room:
                raise InvalidInput(
                    f"window_overlap {windowing.overlap} is more than half a window: at most {room} tokens "
                    "for this model"
                )
        reading = Reading(truncate, direction, windowing or self.windowing, side)
        cached = self._cached(texts, reading)
        missing = [i for i, hit in enumerate(cached) if hit is None]
        tokenize_seconds = queue = inference = 0.0
        if missing:
            tracing = self.tracing
            with tracing.span("admission", {"inputs": len(missing)}):
                admission = batcher.admit(len(missing), priority)
            with admission:
                self._check_deadline(deadline, "tokenize")
                started = time.perf_counter()
                todo = [texts[i] for i in missing]
                with tracing.span("tokenize"):
                    if sum(map(_chars, todo)) <= INLINE_TOKENIZE_CHARS:
                        windowed = encode(classifier, todo, reading)  # cheaper than a hop to a thread (~30 us
                        # against ~0.5 ms for a short query)
                    else:
                        # exclusive: bounds memory
                        windowed = await asyncio.to_thread(encode, classifier, todo, reading, exclusive=True)
                tokenize_seconds = time.perf_counter() - started
                if not truncate:
                    refuse_cut(missing, windowed, reading, classifier.max_length)
                flat = [window for item in windowed for window in item.windows]
                if len(flat) > len(todo):
                    admission.grow(len(flat) - len(todo))
                if reading.windowing.enabled:
                    self.metrics.windows.inc(len(flat))
                cut = sum(item.truncated for item in windowed)
                if cut:
                    self.metrics.truncated.inc(cut)
                self._check_deadline(deadline, "tokenize")
                submitted = batcher.submit(flat, admission, priority, tracing.current())
                if deadline is None:
                    results = await submitted
                else:
                    try:  # on time-out the wait is cancelled, and with it every input not yet running
                        results = await asyncio.wait_for(submitted, deadline - now())
                    except TimeoutError:
                        self._deadline_passed("queue")
            queue = max(r.queue_seconds for r in results)
            inference = max(r.inference_seconds for r in results)
            if tracing.on:  # the wait and the run, as they were: spans of the past
                ended = time.time_ns()
                ran = ended - int(inference * 1e9)
                tracing.record("queue", ran - int(queue * 1e9), ran)
                tracing.record("inference", ran, ended, {"windows": len(flat)})
            start = 0
            for index, item in zip(missing, windowed):
                count = len(item.windows)
                row, report = self._combined(item, results[start : start + count], reading)
                start += count
                cached[index] = (row, report)
                if self.cache is not None:
                    self.cache.put(self._key(texts[index], reading), row, report)
            self.metrics.phase_seconds.labels("tokenize").observe(tokenize_seconds)
            self.metrics.phase_seconds.labels("queue").observe(queue)
            self.metrics.phase_seconds.labels("inference").observe(inference)
        self.metrics.inputs.inc(len(texts))
        entries = [entry for entry in cached if entry is not None]  # every input has its row by now
        rows = [row for row, _ in entries]
        logits = rows[0][np.newaxis] if len(rows) == 1 else np.stack(rows)  # a view, not a copy, for one
        if self.predictions is not None:
            self.predictions.observe(logits)
        if self.shadow is not None:
            self.shadow.offer(texts, reading, logits)
        return Classified(logits, tokenize_seconds, queue, inference, [report for _, report in entries])

    def _check_deadline(self, deadline: float | None, stage: str) -> None:
        if deadline is not None and now() >= deadline:
            self._deadline_passed(stage)

    def _deadline_passed(self, stage: str) -> NoReturn:
        self.metrics.deadline_exceeded.labels(stage).inc()
        where = "to be tokenized" if stage == "tokenize" else "in the queue"
        raise DeadlineExceeded(f"the request's deadline passed while its inputs waited {where}; none of them ran")

    def _combined(self, item: Windowed, results: Sequence[Any], reading: Reading) -> tuple[np.ndarray, InputReport]:
        """One input's row of logits from its windows' results, and its report."""
        how = reading.windowing.aggregation or self.aggregation
        return combine(item, [result.logits for result in results], self.manifest.score_function, how)

    def _key(self, item: TextInput, reading: Reading) -> tuple:
        # Whatever changes the logits: the model, the exact input, and how it is read.
        return (self._model_hash, item, *reading.key())

    def _cached(self, texts: Sequence[TextInput], reading: Reading) -> list[tuple[np.ndarray, InputReport] | None]:
        if self.cache is None:
            return [None] * len(texts)
        found = [self.cache.get(self._key(text, reading)) for text in texts]
        hits = sum(hit is not None for hit in found)
        self.metrics.cache_hits.inc(hits)
        self.metrics.cache_misses.inc(len(found) - hits)
        return found

    async def tokens(self, texts: Sequence[str], *, add_special_tokens: bool) -> list[list[dict[str, Any]]]:
        """Every token of ``texts`` with its offsets, at most MAX_TOKENIZE_TOKENS of them; long texts are
        tokenized off the event loop, one such call at a time."""
        classifier = self._loaded()
        limit = self.settings.max_tokenize_tokens
        try:
            if sum(map(len, texts)) <= INLINE_TOKENIZE_CHARS:
                return classifier.tokens(texts, add_special_tokens=add_special_tokens, max_tokens=limit)
            return await asyncio.to_thread(
                classifier.tokens, texts, add_special_tokens=add_special_tokens, max_tokens=limit, exclusive=True
            )
        except TooManyTokens as exc:
            raise InvalidInput(str(exc)) from None

    async def decode(self, sequences: Sequence[Sequence[int]], *, skip_special_tokens: bool) -> list[str]:
        """Token ids back to text; many ids are decoded off the event loop."""
        classifier = self._loaded()
        if sum(map(len, sequences)) <= INLINE_DECODE_IDS:
            return classifier.decode(sequences, skip_special_tokens=skip_special_tokens)
        return await asyncio.to_thread(classifier.decode, sequences, skip_special_tokens=skip_special_tokens)

    def scores(self, logits: np.ndarray, raw: bool) -> np.ndarray:
        return logits if raw else probabilities(logits.astype(np.float64), self.manifest.problem_type)
