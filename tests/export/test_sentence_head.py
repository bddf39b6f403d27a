"""A sentence-transformers body plus a scikit-learn head, with pooling and
normalisation inside the graph."""

from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import needs_export

pytestmark = needs_export


@pytest.fixture(scope="module")
def body(tmp_path_factory):
    from tests.tiny_models import build_sentence_body

    return build_sentence_body(tmp_path_factory.mktemp("st"))


@pytest.fixture(scope="module")
def head(tmp_path_factory):
    from tests.tiny_models import train_head

    return train_head(tmp_path_factory.mktemp("head") / "head.joblib", width=32, classes=["billing", "refund", "other"])


def test_sentence_head_bundle_matches_the_original_pipeline(body, head, tmp_path):
    import joblib
    from sentence_transformers import SentenceTransformer

    from export.pipeline import export_bundle
    from service.core.classifier import OnnxClassifier

    result = export_bundle(out=tmp_path / "b", model=str(body), head=str(head), variant="fp32")
    manifest = result.manifest
    assert manifest.labels == ["billing", "other", "refund"]
    assert manifest.source["pooling"] == "mean" and manifest.source["normalize"] is True
    assert manifest.strip_whitespace is True
    assert manifest.max_length == 24

    texts = ["  refund my order ", "what is this charge", "x " * 100, ""]
    original = joblib.load(head).decision_function(SentenceTransformer(str(body), device="cpu").encode(texts))
    served = OnnxClassifier.from_bundle(tmp_path / "b").logits(texts)
    np.testing.assert_allclose(served, original, atol=1e-4)


def test_normalisation_is_not_dropped(body, head, tmp_path):
    """Without L2 normalisation the logits differ a lot: proof the graph applies it."""
    import joblib
    from sentence_transformers import SentenceTransformer

    from export.pipeline import export_bundle
    from service.core.classifier import OnnxClassifier

    export_bundle(out=tmp_path / "b", model=str(body), head=str(head), variant="fp32")
    st_model = SentenceTransformer(str(body), device="cpu")
    without_normalize = SentenceTransformer(modules=[st_model[0], st_model[1]], device="cpu")
    texts = ["refund my order"]
    unnormalised = joblib.load(head).decision_function(without_normalize.encode(texts))
    served = OnnxClassifier.from_bundle(tmp_path / "b").logits(texts)
    assert np.abs(served - unnormalised).max() > 1e-2
