"""Whole documents: how a text longer than the model reads is split into windows, and how the
windows' answers become one.

A window is what the model reads at once (its ``max_length`` tokens, special tokens
included); consecutive windows share ``overlap`` tokens so no sentence is only ever seen
cut in two. The tokenizer makes the windows (its own overflow support), so each carries
the special tokens the model expects; for a pair, one side is kept whole in every window
and the other is windowed.

The windows' answers are combined in score space, then turned back into the logits that
give those scores, so everything after the engine (probabilities, labels, zero-shot,
rerank, raw scores) works on one row per input as before:

- ``mean``: the mean of the windows' scores weighted by each window's tokens (a short last
  window counts for less). For softmax models the mean of the probabilities; for sigmoid
  models the mean of each label's probability; for regression the weighted mean value.
- ``max``: each output's largest score over the windows. For a sigmoid model: a label
  present anywhere is present; for a one-logit reranker: the best window's score. For a
  softmax model the per-label maxima are renormalised to sum to 1.

The defaults per kind (``default_aggregation``): ``mean`` for softmax classifiers and
regression (the whole document's distribution, not its most extreme passage), ``max`` for
sigmoid ones (multi-label and one-logit models: a label or a match found in any passage
counts, as Elasticsearch ranks a chunked document by its best chunk).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from service.core.manifest import IDENTITY, SIGMOID, SOFTMAX

MEAN, MAX = "mean", "max"
AGGREGATIONS = (MEAN, MAX)
# The windowed side's share of a window that the kept side of a pair may take; a longer kept
# side (a very long query) is cut to it, so every window still holds a useful stretch of the other.
KEPT_SIDE_SHARE = 0.5
FIRST, SECOND = "first", "second"


@dataclass(frozen=True)
class Windowing:
    """How one call treats inputs longer than the model's window.

    ``enabled`` off: a long input is cut to the first window (or refused without truncation).
    On: it is read in windows of the model's length sharing ``overlap`` tokens, at most
    ``max_windows`` of them (beyond that it is cut, or refused without truncation), and the
    windows' answers are combined by ``aggregation`` (None: the model kind's default).
    """

    enabled: bool = False
    overlap: int = 32
    max_windows: int = 32
    aggregation: str | None = None

    def overridden(
        self, *, enabled: bool | None = None, overlap: int | None = None, aggregation: str | None = None
    ) -> Windowing:
        """These defaults with whatever a request asked for instead."""
        return replace(
            self,
            enabled=self.enabled if enabled is None else enabled,
            overlap=self.overlap if overlap is None else overlap,
            aggregation=self.aggregation if aggregation is None else aggregation,
        )

    def key(self) -> tuple:
        """What changes an answer, for the response cache."""
        return (self.overlap, self.max_windows, self.aggregation) if self.enabled else ()


@dataclass(frozen=True)
class Reading:
    """How one call reads its inputs: what is too long is cut (``truncate``, at ``direction``'s end) or
    refused, and read whole in windows or not; of a pair, ``side`` is the one windowed."""

    truncate: bool
    direction: str
    windowing: Windowing
    side: str = SECOND

    def key(self) -> tuple:
        """What changes an answer, for the response cache."""
        return (self.truncate, self.direction, self.side, *self.windowing.key())


@dataclass(frozen=True)
class InputReport:
    """What happened to one input: whether part of it went unread, in how many windows, how many tokens."""

    truncated: bool
    windows: int
    tokens: int

    def to_dict(self) -> dict[str, object]:
        return {"truncated": self.truncated, "windows": self.windows, "tokens": self.tokens}


def default_aggregation(function: str) -> str:
    """``max`` for sigmoid models, ``mean`` for softmax and regression ones (see the module's docstring)."""
    return MAX if function == SIGMOID else MEAN


def aggregate(logits: np.ndarray, tokens: np.ndarray, function: str, how: str) -> np.ndarray:
    """One row of logits for ``(windows, outputs)`` logits of one input: those whose scores are the
    windows' scores combined by ``how``, ``tokens`` being each window's real tokens (the weights)."""
    logits = logits.astype(np.float64)
    if len(logits) == 1:
        return logits[0]
    weights = tokens.astype(np.float64) / tokens.sum()
    if function == IDENTITY:
        return logits.max(axis=0) if how == MAX else weights @ logits
    if function == SIGMOID:
        if how == MAX:  # the sigmoid is increasing: the largest logit has the largest score
            return logits.max(axis=0)
        # log of the weighted mean of p and of 1 - p, in log space so no probability rounds to 0 or 1
        log_yes = _log_mean(-np.logaddexp(0.0, -logits), weights)
        log_no = _log_mean(-np.logaddexp(0.0, logits), weights)
        return log_yes - log_no
    if function != SOFTMAX:
        raise ValueError(f"unknown score function {function!r}")
    log_probabilities = logits - np.logaddexp.reduce(logits, axis=1, keepdims=True)
    if how == MAX:
        return log_probabilities.max(axis=0)  # softmax renormalises these maxima to sum to 1
    return _log_mean(log_probabilities, weights)


def _log_mean(log_values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """log(sum_w weights[w] * exp(log_values[w])) per output, without leaving log space."""
    return np.logaddexp.reduce(log_values + np.log(weights)[:, np.newaxis], axis=0)
