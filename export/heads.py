"""Classification heads on sentence embeddings, as one affine map ``x @ W.T + b``.

Covered: a scikit-learn linear classifier (``coef_``/``intercept_``: logistic
regression, linear SVM, ridge, SGD), the multi-label wrappers
``OneVsRestClassifier`` and ``MultiOutputClassifier`` around binary linear
models, and SetFit's differentiable ``SetFitHead`` (a torch linear layer scaled
by its temperature). Each comes with the head's own scoring of embeddings, the
reference the exported graph is verified against.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from export.errors import CorruptWeights, NotAClassifier, UnsupportedArchitecture
from service.core.manifest import MULTI_LABEL, SINGLE_LABEL


@dataclass
class LinearHead:
    weight: np.ndarray  # (outputs, features)
    bias: np.ndarray  # (outputs,)
    classes: list[Any]
    problem_type: str
    kind: str
    # The original head's logits for a batch of embeddings.
    logits: Callable[[np.ndarray], np.ndarray]


def load_head(path: Path) -> LinearHead:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # heads pickled by older scikit-learn releases
            head = _unpickle(path)
    except ModuleNotFoundError as exc:
        raise UnsupportedArchitecture(
            f"head {path} needs the Python package {exc.name!r} to be read (a SetFitHead needs setfit)"
        ) from None
    except Exception as exc:  # a pickle can fail in any way; all mean "unreadable head"
        raise CorruptWeights(f"head {path} cannot be loaded: {_first_line(exc)}") from None
    name = type(head).__name__
    if name == "SetFitHead":
        return _setfit_head(head)
    if name in ("OneVsRestClassifier", "MultiOutputClassifier"):
        return _multi_label(head, path, name)
    return _linear(head, path)


def _unpickle(path: Path) -> Any:
    import joblib

    return joblib.load(path)


def _linear(clf: Any, path: Path) -> LinearHead:
    coef = getattr(clf, "coef_", None)
    intercept = getattr(clf, "intercept_", None)
    classes = getattr(clf, "classes_", None)
    if coef is None or intercept is None or classes is None or not hasattr(clf, "decision_function"):
        raise NotAClassifier(f"head {path} is not a fitted linear classifier (needs coef_, intercept_, classes_)")
    coef = np.asarray(coef, dtype=np.float64)
    intercept = np.atleast_1d(np.asarray(intercept, dtype=np.float64))
    if coef.shape[0] == 1 and len(classes) == 2:
        # Binary heads score only the positive class; logits [0, z] give the same softmax.
        coef = np.vstack([np.zeros_like(coef), coef])
        intercept = np.concatenate([[0.0], intercept])

    def logits(embeddings: np.ndarray) -> np.ndarray:
        scores = np.asarray(clf.decision_function(embeddings), dtype=np.float32)
        if scores.ndim == 1:
            scores = np.stack([np.zeros_like(scores), scores], axis=1)
        return scores

    return LinearHead(coef, intercept, list(classes), SINGLE_LABEL, type(clf).__name__, logits)


def _multi_label(wrapper: Any, path: Path, name: str) -> LinearHead:
    """One binary linear model per label; each label's sigmoid is its probability."""
    if name == "OneVsRestClassifier" and not getattr(wrapper, "multilabel_", False):
        raise UnsupportedArchitecture(
            f"head {path} is a OneVsRestClassifier on single-label classes, whose probabilities are "
            "normalised sigmoids; use the linear model itself (one row per class) instead"
        )
    estimators = getattr(wrapper, "estimators_", None)
    if not estimators:
        raise NotAClassifier(f"head {path} is an unfitted {name}")
    rows, biases = [], []
    for index, estimator in enumerate(estimators):
        coef = getattr(estimator, "coef_", None)
        classes = getattr(estimator, "classes_", None)
        if coef is None or np.asarray(coef).shape[0] != 1 or (classes is not None and len(classes) != 2):
            raise UnsupportedArchitecture(
                f"head {path}: estimator {index} of the {name} is not a binary linear model "
                f"({type(estimator).__name__}); each label needs coef_ with one row"
            )
        rows.append(np.asarray(coef, dtype=np.float64)[0])
        biases.append(float(np.atleast_1d(estimator.intercept_)[0]))

    def logits(embeddings: np.ndarray) -> np.ndarray:
        return np.stack([np.asarray(e.decision_function(embeddings), dtype=np.float32) for e in estimators], axis=1)

    classes = list(getattr(wrapper, "classes_", range(len(estimators))))
    if name == "MultiOutputClassifier":
        classes = list(range(len(estimators)))  # its classes_ are each output's [0, 1]
    return LinearHead(np.stack(rows), np.asarray(biases), classes, MULTI_LABEL, name, logits)


def _setfit_head(head: Any) -> LinearHead:
    """``logits = linear(x) / (temperature + eps)``; softmax, or sigmoid when multitarget."""
    import torch

    linear = head.linear
    scale = 1.0 / (float(head.temperature) + float(head.eps))
    weight = linear.weight.detach().double().numpy() * scale
    bias = (linear.bias.detach().double().numpy() if linear.bias is not None else np.zeros(weight.shape[0])) * scale
    head = head.to("cpu").eval()

    def logits(embeddings: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return head(torch.as_tensor(embeddings, dtype=torch.float32))[0].numpy()

    problem_type = MULTI_LABEL if head.multitarget else SINGLE_LABEL
    return LinearHead(weight, bias, list(range(weight.shape[0])), problem_type, "SetFitHead", logits)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:300]
