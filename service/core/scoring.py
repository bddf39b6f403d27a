"""From logits to the scores a bundle's users act on.

The rule is transformers' text-classification pipeline (see
``service.core.manifest.score_function``): regression values stay raw, multi-label
and one-logit models get a sigmoid per output, other classifiers a softmax.
Zero-shot scores follow transformers' zero-shot-classification pipeline.
"""

from __future__ import annotations

import numpy as np

from service.core.manifest import IDENTITY, SIGMOID, ZeroShotIds, score_function


def softmax(logits: np.ndarray) -> np.ndarray:
    exp = np.exp(logits - logits.max(axis=-1, keepdims=True))
    exp /= exp.sum(axis=-1, keepdims=True)  # in place: one array fewer per call
    return exp


def sigmoid(logits: np.ndarray) -> np.ndarray:
    # exp of a large negative logit overflows to inf, which still gives 0; only the warning is noise.
    with np.errstate(over="ignore"):
        return 1.0 / (1.0 + np.exp(-logits))


def probabilities(logits: np.ndarray, problem_type: str) -> np.ndarray:
    """Scores for a ``(texts, outputs)`` array of logits; the output count is its last axis."""
    function = score_function(problem_type, logits.shape[-1])
    if function == IDENTITY:
        return logits
    if function == SIGMOID:
        return sigmoid(logits)
    return softmax(logits)


def decisions(scores: np.ndarray, threshold: float) -> np.ndarray:
    """Per-output yes/no of sigmoid scores (multi-label sets, one-logit classifiers)."""
    return scores >= threshold


def zero_shot_scores(logits: np.ndarray, ids: ZeroShotIds, *, multi_label: bool) -> np.ndarray:
    """Scores of ``(texts, candidate_labels, nli_outputs)`` logits, one per candidate label.

    Each row holds the logits of the pairs (text, hypothesis for label j). As in
    transformers: with ``multi_label`` (or one candidate) each label is scored on
    its own, softmax over [contradiction, entailment]; otherwise the entailment
    logits are softmaxed across the candidate labels, so the scores sum to 1.
    """
    if logits.ndim != 3:
        raise ValueError(f"expected (texts, labels, outputs) logits, got shape {logits.shape}")
    if multi_label or logits.shape[1] == 1:
        pair = logits[..., [ids.contradiction, ids.entailment]]
        return softmax(pair)[..., 1]
    return softmax(logits[..., ids.entailment])
