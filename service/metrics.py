"""Prometheus metrics, in a registry owned by one app (no process-global state)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import CONTENT_TYPE_LATEST

from service.batcher import BatchStats

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
_TOKEN_BUCKETS = (16, 64, 256, 1024, 2048, 4096, 8192, 16384, 32768)

CONTENT_TYPE = CONTENT_TYPE_LATEST


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "classifier_requests", "HTTP requests by endpoint and status", ["endpoint", "status"], registry=self.registry
        )
        self.phase_seconds = Histogram(
            "classifier_phase_seconds", "Per-request time by phase", ["phase"], buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.request_seconds = Histogram(
            "classifier_request_seconds", "End-to-end request time by endpoint", ["endpoint"],
            buckets=_LATENCY_BUCKETS, registry=self.registry,
        )
        self.batch_size = Histogram(
            "classifier_batch_size", "Inputs per inference batch", buckets=_BATCH_BUCKETS, registry=self.registry
        )
        self.batch_tokens = Histogram(
            "classifier_batch_tokens", "Padded tokens per inference batch", buckets=_TOKEN_BUCKETS,
            registry=self.registry,
        )
        self.queue_depth = Gauge("classifier_queue_depth", "Inputs waiting for inference", registry=self.registry)
        self.admitted = Gauge(
            "classifier_admitted_inputs", "Inputs admitted and not yet answered (queued, tokenizing or running)",
            registry=self.registry,
        )
        self.admitted_peak = Gauge(
            "classifier_admitted_inputs_peak", "Most inputs ever admitted at once; never above MAX_QUEUE_SIZE",
            registry=self.registry,
        )
        self.dropped = Gauge(
            "classifier_dropped_inputs", "Inputs dropped before running because their client had gone",
            registry=self.registry,
        )
        self.cache_hits = Counter("classifier_cache_hits", "Response cache hits (CACHE_SIZE > 0)", registry=self.registry)
        self.cache_misses = Counter("classifier_cache_misses", "Response cache misses", registry=self.registry)
        self.cache_entries = Gauge("classifier_cache_entries", "Entries in the response cache", registry=self.registry)
        self.inputs = Counter("classifier_inputs", "Texts classified", registry=self.registry)

    def observe_batch(self, stats: BatchStats) -> None:
        self.batch_size.observe(stats.size)
        self.batch_tokens.observe(stats.padded_tokens)

    def render(self) -> bytes:
        return generate_latest(self.registry)
