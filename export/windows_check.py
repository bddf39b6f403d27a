"""Chunked classification, checked: the bundle reading long inputs in windows against the original
PyTorch model run window by window and aggregated the same way.

The original's windows come from its own tokenizer (transformers' ``return_overflowing_tokens``
with ``stride``); its scores are combined here in plain probability space, independently of
``service.core.windows``, which combines the bundle's in log space. Both answers are then turned
into the logits that give them and held to the bundle's own gate (``service.core.gate``): the same
thresholds the export verified the model with.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from export.sources import Source
from export.texts import builtin_texts
from service.core.classifier import OnnxClassifier, TextInput
from service.core.gate import Thresholds, VariantReport, compare
from service.core.manifest import IDENTITY, SIGMOID, Manifest
from service.core.scoring import probabilities
from service.core.windows import FIRST, MAX, SECOND, aggregate, default_aggregation

# Keeps log(p) and log(1 - p) finite for scores that round to 0 or 1.
_EPSILON = 1e-12


@dataclass(frozen=True)
class WindowsCheck:
    report: VariantReport
    windows: list[int]  # per input, as the bundle read it
    reference_windows: list[int]  # per input, as the original's tokenizer made them

    @property
    def passed(self) -> bool:
        return not self.failures

    @property
    def failures(self) -> list[str]:
        failures = list(self.report.failures)
        if self.windows != self.reference_windows:
            failures.append(f"window counts differ: bundle {self.windows}, original {self.reference_windows}")
        return failures


def reference_scores(logits: np.ndarray, tokens: np.ndarray, function: str, how: str) -> np.ndarray:
    """One input's scores from its windows', the plain way: each window's scores, then their
    token-weighted mean or each output's maximum (renormalised for softmax)."""
    scores = probabilities(logits.astype(np.float64), _problem_of(function))
    if how == MAX:
        combined = scores.max(axis=0)
        return combined if function != "softmax" else combined / combined.sum()
    return (tokens[:, np.newaxis] * scores).sum(axis=0) / tokens.sum()


def as_logits(scores: np.ndarray, function: str) -> np.ndarray:
    """The logits whose scores these are (softmax: log-probabilities)."""
    if function == IDENTITY:
        return scores
    clipped = np.clip(scores, _EPSILON, 1 - _EPSILON)
    if function == SIGMOID:
        return np.log(clipped) - np.log1p(-clipped)
    return np.log(clipped)


def check_windows(
    source: Source,
    classifier: OnnxClassifier,
    inputs: Sequence[TextInput],
    *,
    overlap: int,
    side: str = SECOND,
    aggregation: str | None = None,
) -> WindowsCheck:
    """Read ``inputs`` in windows with the bundle and with the original, and gate the difference."""
    if source.window_reference is None:
        raise ValueError(f"{source.kind} sources cannot be run window by window")
    manifest = classifier.manifest
    function = manifest.score_function
    how = aggregation or default_aggregation(function)
    windowed = classifier.encode_windows(inputs, overlap=overlap, max_windows=2**31, side=side)
    ours = []
    for item in windowed:
        logits = classifier.run(item.windows)
        tokens = np.array([window.length for window in item.windows])
        ours.append(
            as_logits(
                probabilities(aggregate(logits, tokens, function, how)[np.newaxis], manifest.problem_type)[0], function
            )
        )
    # Each input with the overlap the bundle could give it (less than asked when a window has little room).
    window_reference = source.window_reference
    original = [window_reference([item], windows.overlap, side)[0] for item, windows in zip(inputs, windowed)]
    theirs = [as_logits(reference_scores(logits, tokens, function, how), function) for logits, tokens in original]
    report = compare(
        manifest.variant,
        np.stack(theirs),
        np.stack(ours),
        manifest.problem_type,
        _thresholds(manifest),
        threshold=manifest.threshold,
    )
    return WindowsCheck(report, [len(item.windows) for item in windowed], [len(logits) for logits, _ in original])


def documents(tokenizer: Tokenizer, window_length: int, *, count: int = 8) -> list[str]:
    """``count`` long documents of the built-in texts, from one and a half to twelve windows long, each
    starting at a different text so they differ in content as well as in length."""
    texts = builtin_texts()
    documents = []
    for index, windows in enumerate(np.linspace(1.5, 12, count)):
        target, tokens = int(windows * window_length), 0
        parts: list[str] = []
        while tokens < target:
            text = texts[(index * 37 + len(parts)) % len(texts)]
            parts.append(text)
            tokens += len(tokenizer.encode(text, add_special_tokens=False).ids)
        documents.append(" ".join(parts))
    return documents


def check_bundle_windows(source: Source, bundle: Path, *, overlap: int, aggregation: str | None) -> list[WindowsCheck]:
    """The bundle against its original on long documents: alone for a text model; for a pair model as
    the second text after a short query, and, for a zero-shot model, as the premise of a hypothesis."""
    classifier = OnnxClassifier.from_bundle(bundle)
    texts = documents(classifier.tokenizer, classifier.window_length)
    manifest = classifier.manifest
    if not manifest.is_pair:
        return [check_windows(source, classifier, texts, overlap=overlap, aggregation=aggregation)]
    queries = builtin_texts()
    checks = [
        check_windows(
            source,
            classifier,
            [(queries[i], text) for i, text in enumerate(texts)],
            overlap=overlap,
            aggregation=aggregation,
        )
    ]
    if manifest.zero_shot is not None:
        pairs = [(text, f"This example is {label}.") for text in texts for label in ("travel", "banking")]
        checks.append(check_windows(source, classifier, pairs, overlap=overlap, side=FIRST, aggregation=aggregation))
    return checks


def _thresholds(manifest: Manifest) -> Thresholds:
    recorded = manifest.verification.get("thresholds") or {}
    return Thresholds(**{name: value for name, value in recorded.items() if name in Thresholds.__dataclass_fields__})


def _problem_of(function: str) -> str:
    """A problem type whose scores ``probabilities`` makes with ``function``."""
    return {IDENTITY: "regression", SIGMOID: "multi_label_classification"}.get(function, "single_label_classification")
