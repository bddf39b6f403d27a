"""What a model predicts, as metrics: per label, how sure, and how far from what it predicted at export.

For every classified input: its predicted labels (the top label of a softmax model; the labels
decided at the threshold of a sigmoid model), its top score, and whether that score is under
LOW_CONFIDENCE. Drift is the population stability index (PSI) of the last DRIFT_WINDOW inputs
against the bundle's reference set (``service.core.reverify``): of the predicted-label
distribution, and of the top score's distribution over ten bins. For a sigmoid model the
label distribution counts every decided label, plus one bin for inputs with none. PSI = Σ (p − q) · ln(p / q);
under 0.1 is usually read as no shift, 0.1-0.25 as a moderate one, above 0.25 as a large one.
Regression models get no label or score metrics; bundles without a reference set get no drift.
"""

from __future__ import annotations

import json
import threading
from collections import deque
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from service.core.manifest import IDENTITY, SIGMOID, SOFTMAX, Manifest
from service.core.scoring import probabilities

SCORE_BINS = np.linspace(0.0, 1.0, 11)
# Added to every share, so that a label never seen on one side does not make the index infinite.
_FLOOR = 1e-4


def psi(observed: np.ndarray, expected: np.ndarray) -> float:
    """Population stability index of two histograms (counts or shares) over the same bins."""
    p = observed / max(observed.sum(), 1) + _FLOOR
    q = expected / max(expected.sum(), 1) + _FLOOR
    return float(np.sum((p - q) * np.log(p / q)))


class PredictionMonitor:
    """Counts one model version's predictions and keeps the window its drift is measured on."""

    def __init__(self, manifest: Manifest, directory: Path, metrics: Any, *, window: int, low_confidence: float):
        self.function = manifest.score_function
        self.problem_type = manifest.problem_type
        self.threshold = manifest.threshold
        self.labels = manifest.labels
        self.low_confidence = low_confidence
        self._metrics = metrics
        self._counted = [metrics.predictions.labels(label) for label in self.labels]
        self._lock = threading.Lock()  # the window is read at scrape time, on another thread
        self._labels: deque[tuple[int, ...]] = deque(maxlen=window)  # each input's predicted labels
        self._scores: deque[float] = deque(maxlen=window)
        self.expected_labels: np.ndarray | None = None
        self.expected_scores: np.ndarray | None = None
        # A sigmoid model's inputs may have no label at all: that is one more bin.
        self.bins = len(self.labels) + (self.function == SIGMOID)
        if manifest.reference_set is not None and self.function != IDENTITY:
            data = json.loads((directory / manifest.reference_set).read_text(encoding="utf-8"))
            scores = probabilities(np.asarray(data["logits"], dtype=np.float64), self.problem_type)
            self.expected_labels = self._count(self._predicted(scores))
            self.expected_scores = np.histogram(scores.max(axis=1), SCORE_BINS)[0]
            metrics.drift_label.set_function(self.label_drift)
            metrics.drift_top_score.set_function(self.score_drift)

    def _predicted(self, scores: np.ndarray) -> list[tuple[int, ...]]:
        """Each input's predicted labels; a sigmoid input with none gets the extra bin."""
        if self.function == SOFTMAX:
            return [(int(index),) for index in scores.argmax(axis=1)]
        nothing = (len(self.labels),)
        return [tuple(int(i) for i in np.flatnonzero(row)) or nothing for row in scores >= self.threshold]

    def _count(self, predicted: Iterable[tuple[int, ...]]) -> np.ndarray:
        flat = np.fromiter((index for labels in predicted for index in labels), dtype=np.int64)
        return np.bincount(flat, minlength=self.bins)

    def observe(self, logits: np.ndarray) -> None:
        if self.function == IDENTITY:
            return
        scores = probabilities(logits.astype(np.float64), self.problem_type)
        top = scores.max(axis=1)
        predicted = self._predicted(scores)
        for labels in predicted:
            for index in labels:
                if index < len(self._counted):  # not the no-label bin
                    self._counted[index].inc()
        with self._lock:
            self._labels.extend(predicted)
            self._scores.extend(float(score) for score in top)
        for score in top:
            self._metrics.top_score.observe(score)
        self._metrics.low_confidence.inc(int(np.count_nonzero(top < self.low_confidence)))

    def label_drift(self) -> float:
        assert self.expected_labels is not None
        with self._lock:
            seen = self._count(self._labels)
        return psi(seen, self.expected_labels) if seen.sum() else 0.0

    def score_drift(self) -> float:
        assert self.expected_scores is not None
        with self._lock:
            seen = np.histogram(np.fromiter(self._scores, dtype=np.float64), SCORE_BINS)[0]
        return psi(seen, self.expected_scores) if seen.sum() else 0.0
