"""SetFit directories written by the real ``setfit`` package export with ``--model DIR``
alone: body, pooling and normalisation from the sentence-transformers files, the
head from ``model_head.pkl``, label names from ``config_setfit.json``."""

from __future__ import annotations

import numpy as np
import pytest

from export.cli import main
from export.errors import ExitCode
from tests.conftest import needs_export

pytestmark = needs_export

TEXTS = ["  refund my order ", "what is this charge", "x " * 100, "", "book a flight to paris 😀"]


def _features(seed: int = 0, n: int = 48, width: int = 32) -> np.ndarray:
    features = np.random.default_rng(seed).normal(size=(n, width))
    return features / np.linalg.norm(features, axis=1, keepdims=True)


def _heads():
    """name -> (head factory, training targets, labels saved in config_setfit.json)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.multiclass import OneVsRestClassifier
    from sklearn.multioutput import MultiOutputClassifier

    multi = (np.random.default_rng(1).random((48, 3)) > 0.5).astype(int)
    return {
        "logistic-int": (
            lambda: LogisticRegression(max_iter=300),
            [i % 3 for i in range(48)],
            ["billing", "refund", "travel"],
        ),
        "logistic-binary": (lambda: LogisticRegression(max_iter=300), [i % 2 for i in range(48)], ["no", "yes"]),
        "logistic-strings": (
            lambda: LogisticRegression(max_iter=300),
            [["spam", "ham", "eggs"][i % 3] for i in range(48)],
            None,
        ),
        "one-vs-rest": (
            lambda: OneVsRestClassifier(LogisticRegression(max_iter=300)),
            multi,
            ["urgent", "billing", "angry"],
        ),
        "multi-output": (
            lambda: MultiOutputClassifier(LogisticRegression(max_iter=300)),
            multi,
            ["urgent", "billing", "angry"],
        ),
    }


@pytest.fixture(scope="module")
def body(tmp_path_factory):
    from tests.tiny_models import build_sentence_body

    return build_sentence_body(tmp_path_factory.mktemp("setfit-body"))


def save_setfit(directory, body, head, labels, *, normalize=False):
    from sentence_transformers import SentenceTransformer
    from setfit import SetFitModel

    model = SetFitModel(
        model_body=SentenceTransformer(str(body), device="cpu"),
        model_head=head,
        labels=labels,
        normalize_embeddings=normalize,
    )
    model.save_pretrained(str(directory))
    return directory


def served_and_original(directory, out):
    from setfit import SetFitModel

    from export.pipeline import export_bundle
    from service.core.classifier import OnnxClassifier
    from service.core.scoring import probabilities

    manifest = export_bundle(out=out, model=str(directory), variant="fp32").manifest
    assert main(["verify", str(out)]) == 0
    logits = OnnxClassifier.from_bundle(out).logits(TEXTS).astype(np.float64)
    original = SetFitModel.from_pretrained(str(directory), device="cpu")
    proba = np.asarray(original.predict_proba(TEXTS, as_numpy=True))
    if proba.ndim == 3:  # MultiOutputClassifier: (outputs, texts, 2) -> positive class per output
        proba = proba[..., 1] if proba.shape[0] == len(TEXTS) else proba[..., 1].T
    return manifest, probabilities(logits, manifest.problem_type), proba, original


@pytest.mark.parametrize("name", list(_heads()))
def test_sklearn_heads(body, tmp_path, name):
    make, targets, labels = _heads()[name]
    head = make().fit(_features(), targets)
    directory = save_setfit(tmp_path / "setfit", body, head, labels)
    manifest, served, proba, original = served_and_original(directory, tmp_path / "bundle")
    assert manifest.source["kind"] == "setfit" and manifest.model_id == "setfit"
    np.testing.assert_allclose(served, proba, atol=1e-5)
    if name in ("one-vs-rest", "multi-output"):
        assert manifest.problem_type == "multi_label_classification"
        assert manifest.labels == labels
    else:
        assert manifest.problem_type == "single_label_classification"
        # The labels SetFit itself predicts, in the bundle's column order.
        predicted = original.predict(TEXTS, as_numpy=True)
        assert [manifest.labels[i] for i in served.argmax(1)] == [str(p) for p in predicted]
    expected = {
        "logistic-int": ["billing", "refund", "travel"],
        "logistic-binary": ["no", "yes"],
        "logistic-strings": ["eggs", "ham", "spam"],
    }
    if name in expected:
        assert manifest.labels == expected[name]


@pytest.mark.parametrize("multitarget", [False, True], ids=["softmax", "multitarget"])
def test_differentiable_head(body, tmp_path, multitarget):
    import torch
    from setfit import SetFitHead

    torch.manual_seed(0)
    head = SetFitHead(in_features=32, out_features=3, temperature=0.7, multitarget=multitarget, device="cpu")
    directory = save_setfit(tmp_path / "setfit", body, head, ["a", "b", "c"], normalize=True)
    manifest, served, proba, _ = served_and_original(directory, tmp_path / "bundle")
    assert manifest.labels == ["a", "b", "c"]
    assert manifest.problem_type == ("multi_label_classification" if multitarget else "single_label_classification")
    assert manifest.source["head_type"] == "SetFitHead" and manifest.source["normalize"] is True
    np.testing.assert_allclose(served, proba, atol=1e-5)


def test_normalize_embeddings_of_setfit_is_applied(tmp_path):
    """A body without a Normalize module: SetFit's own normalize_embeddings must be in the graph."""
    from sklearn.linear_model import LogisticRegression

    from tests.tiny_models import build_sentence_body

    plain = build_sentence_body(tmp_path / "plain", normalize=False)
    head = LogisticRegression(max_iter=300).fit(_features() * 5, [i % 3 for i in range(48)])
    directory = save_setfit(tmp_path / "setfit", plain, head, ["x", "y", "z"], normalize=True)
    manifest, served, proba, _ = served_and_original(directory, tmp_path / "bundle")
    assert manifest.source["normalize"] is True
    np.testing.assert_allclose(served, proba, atol=1e-5)


def test_label_count_mismatch_is_reported(body, tmp_path, capsys):
    from sklearn.linear_model import LogisticRegression

    head = LogisticRegression(max_iter=300).fit(_features(), [i % 3 for i in range(48)])
    directory = save_setfit(tmp_path / "setfit", body, head, ["only", "two"])
    assert main(["--model", str(directory), "--out", str(tmp_path / "b"), "--quiet"]) == ExitCode.HEAD_MISMATCH
    assert capsys.readouterr().err.strip() == (
        "error: config_setfit.json names 2 labels but head model_head.pkl has 3 outputs"
    )


def test_single_label_one_vs_rest_is_refused(body, tmp_path, capsys):
    from sklearn.linear_model import LogisticRegression
    from sklearn.multiclass import OneVsRestClassifier

    head = OneVsRestClassifier(LogisticRegression()).fit(_features(), [i % 3 for i in range(48)])
    directory = save_setfit(tmp_path / "setfit", body, head, None)
    assert (
        main(["--model", str(directory), "--out", str(tmp_path / "b"), "--quiet"]) == ExitCode.UNSUPPORTED_ARCHITECTURE
    )
    assert "is a OneVsRestClassifier on single-label classes" in capsys.readouterr().err


@pytest.mark.parametrize(
    "make, code, message",
    [
        pytest.param(
            lambda: (
                __import__("sklearn.tree", fromlist=["x"])
                .DecisionTreeClassifier()
                .fit(_features(), [i % 3 for i in range(48)])
            ),
            ExitCode.NOT_A_CLASSIFIER,
            "is not a fitted linear classifier (needs coef_, intercept_, classes_)",
            id="not-linear",
        ),
        pytest.param(
            lambda: (
                __import__("sklearn.multioutput", fromlist=["x"])
                .MultiOutputClassifier(__import__("sklearn.linear_model", fromlist=["x"]).LogisticRegression())
                .fit(_features(), np.stack([[i % 3 for i in range(48)]] * 2, axis=1))
            ),
            ExitCode.UNSUPPORTED_ARCHITECTURE,
            "estimator 0 of the MultiOutputClassifier is not a binary linear model",
            id="multi-output-multiclass",
        ),
        pytest.param(lambda: "not a pickle", ExitCode.CORRUPT_WEIGHTS, "cannot be loaded", id="corrupt"),
    ],
)
def test_heads_that_cannot_be_exported(body, tmp_path, capsys, make, code, message):
    import joblib

    head = tmp_path / "head.joblib"
    value = make()
    if isinstance(value, str):
        head.write_bytes(b"\x80\x04garbage")
    else:
        joblib.dump(value, head)
    assert main(["--model", str(body), "--head", str(head), "--out", str(tmp_path / "b"), "--quiet"]) == code
    assert message in capsys.readouterr().err
