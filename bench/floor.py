"""The in-process floor: what the bundle costs with no server around it.

Same bundle, same texts as the load tool (bench/workload.py, same seed), on the
engine the service would run (``--engine``, chosen by service.core.loading) with
the service's own options. Three figures:

- p50/p99 of tokenize + ``session.run`` for one short query: what a request at
  concurrency 1 cannot go below; the service's p50 minus this is its overhead;
- texts per second in batches of 32 (tokenize + run): roughly what the service
  can reach under load when its batches fill;
- windows per second for the load tool's whole documents (bench/workload.py
  ``DOCUMENTS``, windowed as the service windows them by default), run in batches
  of ``WINDOW_BATCH`` windows, the fastest size measured on the 2-core machine of the
  report (28 ms a window alone, 26 in fours, 32 in sixteens).

    .venv-serve/bin/python -m bench.floor --bundle bundles/default --duration 10
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Sequence
from pathlib import Path

from bench.workload import DOCUMENTS, Mix
from service.core.classifier import OnnxClassifier
from service.core.loading import load_classifier
from service.core.manifest import load_verified
from service.settings import Settings

BATCH = 32
WINDOW_BATCH = 4
WARMUP_SECONDS = 0.5


def _short_texts(count: int) -> list[str]:
    mix = Mix()
    texts = []
    for _ in range(count):
        _, inputs = mix.draw()
        assert isinstance(inputs, str), "a Mix with no batch fraction draws single texts"
        texts.append(inputs)
    return texts


def single_latencies(classifier: OnnxClassifier, duration: float) -> list[float]:
    """Milliseconds of tokenize + run for one short query, one after another for ``duration`` seconds."""
    texts = _short_texts(1000)
    timings: list[float] = []
    deadline = time.perf_counter() + duration
    while time.perf_counter() < deadline:
        text = texts[len(timings) % len(texts)]
        started = time.perf_counter()
        classifier.run(classifier.encode([text]))
        timings.append((time.perf_counter() - started) * 1000)
    return timings


def batched_throughput(classifier: OnnxClassifier, duration: float) -> tuple[int, float]:
    """Texts and seconds, tokenizing and running batches of ``BATCH`` short queries for ``duration`` seconds."""
    texts = _short_texts(BATCH * 32)
    classifier.logits(texts[:BATCH], batch_size=BATCH)
    done = 0
    started = time.perf_counter()
    while time.perf_counter() - started < duration:
        offset = done % len(texts)
        classifier.logits(texts[offset : offset + BATCH], batch_size=BATCH)
        done += BATCH
    return done, time.perf_counter() - started


def window_throughput(classifier: OnnxClassifier, duration: float) -> tuple[int, float]:
    """Windows and seconds, tokenizing the documents and running their windows for ``duration`` seconds."""
    settings = Settings()
    done = documents = 0
    started = time.perf_counter()
    while time.perf_counter() - started < duration:
        (windowed,) = classifier.encode_windows(
            [DOCUMENTS[documents % len(DOCUMENTS)]], overlap=settings.window_overlap, max_windows=settings.max_windows
        )
        for start in range(0, len(windowed.windows), WINDOW_BATCH):
            classifier.run(windowed.windows[start : start + WINDOW_BATCH])
        done += len(windowed.windows)
        documents += 1
    return done, time.perf_counter() - started


def measure(bundle: str, duration: float, engine: str = "auto") -> dict:
    """The raw samples of one slice on the engine ``engine`` picks, as the service picks it (re-verified
    first, outside the timings): ``summarize`` pools the slices of a run."""
    loaded = load_classifier(Path(bundle), load_verified(Path(bundle)), engine=engine)
    classifier = loaded.classifier
    single_latencies(classifier, WARMUP_SECONDS)
    latencies = single_latencies(classifier, duration)
    texts, seconds = batched_throughput(classifier, duration)
    windows, window_seconds = window_throughput(classifier, duration)
    return {
        "single_ms": latencies,
        "batch_texts": texts,
        "batch_seconds": seconds,
        "windows": windows,
        "window_seconds": window_seconds,
        "engine": loaded.engine(),
    }


def summarize(slices: list[dict]) -> dict[str, float]:
    latencies = [ms for part in slices for ms in part["single_ms"]]
    quantiles = statistics.quantiles(latencies, n=100, method="inclusive")
    return {
        "single_p50_ms": round(quantiles[49], 3),
        "single_p99_ms": round(quantiles[98], 3),
        "single_runs": len(latencies),
        "batch_size": BATCH,
        "batch_texts_per_s": round(sum(p["batch_texts"] for p in slices) / sum(p["batch_seconds"] for p in slices), 1),
        "window_batch": WINDOW_BATCH,
        "windows_per_s": round(sum(p["windows"] for p in slices) / sum(p["window_seconds"] for p in slices), 1),
        "engine": slices[0]["engine"]["engine"],
        "precision": slices[0]["engine"]["precision"],
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.floor", description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", default="bundles/default")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds for each of the two figures")
    parser.add_argument("--raw", action="store_true", help="print the samples, not the summary")
    parser.add_argument("--engine", default="auto", choices=("auto", "onnxruntime", "openvino"), help="as ENGINE")
    args = parser.parse_args(argv)
    samples = measure(args.bundle, args.duration, args.engine)
    print(json.dumps(samples if args.raw else summarize([samples])))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
