"""Prometheus metrics, in a registry owned by one app (no process-global state).

Every series carries a ``model`` label (empty on routes that serve no model, such
as ``/health``). An engine records through its own ``ModelMetrics`` view, which
fills in its model's name, so the engine never knows about labels. Gauges of
batcher state are read at scrape time from the views of the versions loaded
now: during a version swap both engines count, and a retired engine's gauges go
away with it (``Metrics.forget``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily

from service.core.batcher import BatchStats

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
_TOKEN_BUCKETS = (16, 64, 256, 1024, 2048, 4096, 8192, 16384, 32768)
_DEVIATION_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)

CONTENT_TYPE = CONTENT_TYPE_LATEST

# attribute of the view -> (metric name, help, how the engines of one model combine)
_GAUGES: dict[str, tuple[str, str, Callable[[list[float]], float]]] = {
    "queue_depth": ("classifier_queue_depth", "Inputs waiting for inference", sum),
    "admitted": (
        "classifier_admitted_inputs",
        "Inputs admitted and not yet answered (queued, tokenizing or running)",
        sum,
    ),
    "admitted_peak": (
        "classifier_admitted_inputs_peak",
        "Most inputs ever admitted at once by a loaded version; never above MAX_QUEUE_SIZE",
        max,
    ),
    "dropped": (
        "classifier_dropped_inputs",
        "Inputs dropped before running because their client had gone, since the loaded versions started",
        sum,
    ),
    "cache_entries": ("classifier_cache_entries", "Entries in the response cache", sum),
    "verified": (
        "classifier_verified",
        "1 when the loaded version passed its re-verification on this CPU at load, 0 when it failed and is served "
        "anyway (ON_FAILED_VERIFICATION=warn); absent for a bundle without a reference set",
        min,
    ),
    "drift_label": (
        "classifier_drift_label_psi",
        "Population stability index of the predicted labels of the last DRIFT_WINDOW inputs against the bundle's "
        "reference set (classifiers with a reference set; for a sigmoid model each decided label counts, and inputs "
        "with none in a bin of their own)",
        max,
    ),
    "drift_top_score": (
        "classifier_drift_top_score_psi",
        "Population stability index of the top scores of the last DRIFT_WINDOW inputs (ten bins) against the "
        "bundle's reference set",
        max,
    ),
    "verified_agreement": (
        "classifier_verified_agreement",
        "Agreement with the original model on the bundle's reference set, measured on this CPU at load",
        min,
    ),
}


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "classifier_requests",
            "Requests by protocol (http, grpc), endpoint, status (HTTP's numbers, for gRPC too) and model",
            ["protocol", "endpoint", "status", "model"],
            registry=self.registry,
        )
        self.phase_seconds = Histogram(
            "classifier_phase_seconds",
            "Per-request time by phase",
            ["model", "phase"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.request_seconds = Histogram(
            "classifier_request_seconds",
            "End-to-end request time by protocol and endpoint",
            ["protocol", "endpoint", "model"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "classifier_batch_size",
            "Inputs per inference batch",
            ["model"],
            buckets=_BATCH_BUCKETS,
            registry=self.registry,
        )
        self.batch_tokens = Histogram(
            "classifier_batch_tokens",
            "Padded tokens per inference batch",
            ["model"],
            buckets=_TOKEN_BUCKETS,
            registry=self.registry,
        )
        self.cache_hits = Counter(
            "classifier_cache_hits", "Response cache hits (CACHE_SIZE > 0)", ["model"], registry=self.registry
        )
        self.cache_misses = Counter(
            "classifier_cache_misses", "Response cache misses", ["model"], registry=self.registry
        )
        self.inputs = Counter("classifier_inputs", "Texts classified", ["model"], registry=self.registry)
        self.predictions = Counter(
            "classifier_predictions",
            "Predicted labels: the top label of a softmax model, each label decided at the threshold of a sigmoid one",
            ["model", "label"],
            registry=self.registry,
        )
        self.top_score = Histogram(
            "classifier_top_score",
            "The top score of each classified input",
            ["model"],
            buckets=tuple(round(0.1 * step, 1) for step in range(1, 11)),
            registry=self.registry,
        )
        self.low_confidence = Counter(
            "classifier_low_confidence_inputs",
            "Inputs whose top score is under LOW_CONFIDENCE",
            ["model"],
            registry=self.registry,
        )
        self.truncated = Counter(
            "classifier_truncated_inputs",
            "Inputs of which the model did not read every token (cut at its max length or at MAX_WINDOWS windows)",
            ["model"],
            registry=self.registry,
        )
        self.deadline_exceeded = Counter(
            "classifier_deadline_exceeded",
            "Requests whose deadline passed before their inputs ran, by where they were: waiting to be tokenized "
            "(tokenize) or queued for a batch (queue); their inputs were dropped unrun",
            ["model", "stage"],
            registry=self.registry,
        )
        self.windows = Counter(
            "classifier_windows",
            "Windows run for inputs read whole in windows (one per window, so a long document counts several)",
            ["model"],
            registry=self.registry,
        )
        self.shadow_inputs = Counter(
            "classifier_shadow_inputs",
            "Inputs run on a shadow version and compared with the serving version's answers",
            ["model", "version"],
            registry=self.registry,
        )
        self.shadow_agreements = Counter(
            "classifier_shadow_agreements",
            "Shadow inputs on which the shadow predicted the serving version's label (softmax) or labels (sigmoid)",
            ["model", "version"],
            registry=self.registry,
        )
        self.shadow_agreement = Gauge(
            "classifier_shadow_agreement",
            "classifier_shadow_agreements / classifier_shadow_inputs since the shadow was attached",
            ["model", "version"],
            registry=self.registry,
        )
        self.shadow_deviation = Histogram(
            "classifier_shadow_score_deviation",
            "Per shadow input, the largest |score difference| from the serving version over the labels both have",
            ["model", "version"],
            buckets=_DEVIATION_BUCKETS,
            registry=self.registry,
        )
        self.shadow_seconds = Histogram(
            "classifier_shadow_seconds",
            "Time a shadow version took for the inputs mirrored from one call (its queue, tokenizing and inference)",
            ["model", "version"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.shadow_skipped = Counter(
            "classifier_shadow_skipped_inputs",
            "Inputs picked for a shadow but not run on it, by reason: busy (the serving queue held inputs), budget "
            "(SHADOW_CPU_BUDGET spent), backlog (a batch of shadow inputs already pending), failed",
            ["model", "version", "reason"],
            registry=self.registry,
        )
        self.engine_fallbacks = Counter(
            "classifier_engine_fallbacks",
            "Loads on which the engine ENGINE=auto chose could not serve (it failed to load, or its answers failed "
            "the reference set) and ONNX Runtime served instead, by the engine that failed and why",
            ["model", "engine", "reason"],
            registry=self.registry,
        )
        self._views: list[ModelMetrics] = []
        # Routes x statuses x models: as many entries as the series prometheus_client keeps anyway.
        self._request_children: dict[tuple[str, str, str, str], tuple[Any, Any]] = {}
        self.registry.register(_LoadedGauges(self._views))

    def for_model(self, model: str) -> ModelMetrics:
        """A view for one loaded version of ``model``; its gauges count until ``forget``."""
        view = ModelMetrics(self, model)
        self._views.append(view)
        return view

    def forget(self, view: ModelMetrics) -> None:
        if view in self._views:
            self._views.remove(view)

    def for_shadow(self, model: str, version: str) -> ShadowView:
        return ShadowView(self, model, version)

    def record_request(self, protocol: str, endpoint: str, status: str, model: str, seconds: float) -> None:
        """Count one request and its duration (the series children are looked up once, then reused)."""
        key = (protocol, endpoint, status, model)
        children = self._request_children.get(key)
        if children is None:
            children = self._request_children[key] = (
                self.requests.labels(protocol, endpoint, status, model),
                self.request_seconds.labels(protocol, endpoint, model),
            )
        children[0].inc()
        children[1].observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _Labelled:
    """A labelled metric with the model filled in: ``labels(phase)`` as the engine calls it."""

    def __init__(self, metric: Any, model: str) -> None:
        self._metric = metric
        self._model = model
        self._children: dict[tuple[str, ...], Any] = {}

    def labels(self, *values: str) -> Any:
        child = self._children.get(values)
        if child is None:
            child = self._children[values] = self._metric.labels(self._model, *values)
        return child


class _Slot:
    """Where an engine hands a gauge its reading function."""

    def __init__(self) -> None:
        self.read: Callable[[], float] | None = None

    def set_function(self, read: Callable[[], float]) -> None:
        self.read = read


class ModelMetrics:
    """What one engine records, under its model's label (the attributes an ``Engine`` uses)."""

    def __init__(self, metrics: Metrics, model: str) -> None:
        self.model = model
        self.phase_seconds = _Labelled(metrics.phase_seconds, model)
        self.inputs = metrics.inputs.labels(model)
        self.predictions = _Labelled(metrics.predictions, model)
        self.top_score = metrics.top_score.labels(model)
        self.low_confidence = metrics.low_confidence.labels(model)
        self.truncated = metrics.truncated.labels(model)
        self.windows = metrics.windows.labels(model)
        self.deadline_exceeded = _Labelled(metrics.deadline_exceeded, model)
        self.cache_hits = metrics.cache_hits.labels(model)
        self.cache_misses = metrics.cache_misses.labels(model)
        self._batch_size = metrics.batch_size.labels(model)
        self._batch_tokens = metrics.batch_tokens.labels(model)
        self.gauges = {name: _Slot() for name in _GAUGES}
        self.queue_depth, self.admitted, self.admitted_peak, self.dropped, self.cache_entries = (
            self.gauges[name] for name in ("queue_depth", "admitted", "admitted_peak", "dropped", "cache_entries")
        )
        self.verified, self.verified_agreement = self.gauges["verified"], self.gauges["verified_agreement"]
        self.drift_label, self.drift_top_score = self.gauges["drift_label"], self.gauges["drift_top_score"]
        self.engine_fallbacks = _Labelled(metrics.engine_fallbacks, model)
        # (engine, precision) of the loaded version: classifier_engine_info, read at scrape time.
        self.engine: tuple[str, str] | None = None

    def observe_batch(self, stats: BatchStats) -> None:
        self._batch_size.observe(stats.size)
        self._batch_tokens.observe(stats.padded_tokens)


class ShadowView:
    """What one shadow version records (``service.core.shadow.ShadowMetrics``)."""

    def __init__(self, metrics: Metrics, model: str, version: str) -> None:
        self._labels = (model, version)
        self._metrics = metrics
        self._inputs = metrics.shadow_inputs.labels(model, version)
        self._agreements = metrics.shadow_agreements.labels(model, version)
        self._deviation = metrics.shadow_deviation.labels(model, version)
        self._seconds = metrics.shadow_seconds.labels(model, version)
        self._compared = self._agreed = 0

    def ran(self, seconds: float, agreed: np.ndarray | None, deviation: np.ndarray) -> None:
        self._seconds.observe(seconds)
        self._inputs.inc(len(deviation))
        for value in deviation:
            self._deviation.observe(float(value))
        if agreed is not None:
            self._compared += len(agreed)
            self._agreed += int(agreed.sum())
            self._agreements.inc(int(agreed.sum()))
            # Set at the first comparison, never before: an agreement of 0 before any would read as total disagreement.
            self._metrics.shadow_agreement.labels(*self._labels).set(self._agreed / self._compared)

    def skipped(self, reason: str, count: int) -> None:
        self._metrics.shadow_skipped.labels(*self._labels, reason).inc(count)

    def close(self) -> None:
        """The shadow is detached: its agreement gauge goes (its counters stay, as counters do)."""
        try:
            self._metrics.shadow_agreement.remove(*self._labels)
        except KeyError:
            pass


class _LoadedGauges:
    """A collector reading the gauges of the loaded versions at scrape time."""

    def __init__(self, views: list[ModelMetrics]) -> None:
        self._views = views

    def collect(self) -> Iterator[GaugeMetricFamily]:
        for attribute, (name, documentation, combine) in _GAUGES.items():
            family = GaugeMetricFamily(name, documentation, labels=["model"])
            readings: dict[str, list[float]] = {}
            for view in self._views:
                read = view.gauges[attribute].read
                if read is not None:
                    readings.setdefault(view.model, []).append(float(read()))
            for model, values in sorted(readings.items()):
                family.add_metric([model], combine(values))
            yield family
        engines = GaugeMetricFamily(
            "classifier_engine_info",
            "1 for each engine and precision serving a loaded version of the model (ENGINE; /info says why)",
            labels=["model", "engine", "precision"],
        )
        for model, engine, precision in sorted({(view.model, *view.engine) for view in self._views if view.engine}):
            engines.add_metric([model, engine, precision], 1.0)
        yield engines
