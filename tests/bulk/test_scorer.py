"""The bulk scorer: token-budget batches, and the service's own answers for the same inputs."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from starlette.testclient import TestClient

from service.app import create_app
from service.bulk.scorer import Answering, Scorer, batches
from service.core.windows import Windowing
from service.settings import Settings
from tests.conftest import needs_export
from tests.helpers import wait_app_ready


@given(
    lengths=st.lists(st.integers(1, 600), max_size=200).map(sorted),
    max_tokens=st.integers(1, 4096),
    max_size=st.integers(1, 64),
)
def test_batches_cover_every_input_once_within_the_budget(lengths, max_tokens, max_size):
    found = batches(lengths, max_tokens, max_size)
    assert [i for part in found for i in range(len(lengths))[part]] == list(range(len(lengths)))
    for part in found:
        size = part.stop - part.start
        assert 1 <= size <= max_size
        # padded to its longest (the last, lengths ascending); a single input too long for the budget runs alone
        assert size * lengths[part.stop - 1] <= max_tokens or size == 1
    for before in found[:-1]:  # full: the next input would not have fitted
        size = before.stop - before.start + 1
        assert size > max_size or size * lengths[before.stop] > max_tokens


def test_batches_of_known_lengths():
    assert batches([2, 2, 3, 5, 5, 9], 10, 64) == [slice(0, 3), slice(3, 5), slice(5, 6)]
    assert batches([2, 2, 3, 5, 5, 9], 100, 2) == [slice(0, 2), slice(2, 4), slice(4, 6)]
    assert batches([], 10, 4) == []


TEXTS = [
    "the service is great",
    "a much longer text " * 12,  # over the tiny model's 24 tokens: cut, or read in windows
    "short",
    "terrible experience, never again " * 5,
    "ok",
]


@needs_export
@pytest.mark.parametrize(
    "windows, body",
    [
        pytest.param(False, {}, id="cut"),
        pytest.param(True, {"windows": True}, id="windows"),
        pytest.param(True, {"windows": True, "aggregation": "max", "window_overlap": 4}, id="windows-max"),
    ],
)
def test_scores_are_the_services_for_the_same_inputs(tiny_bundle, windows, body):
    """An fp32 bundle answers the same whatever shares its batch: equal to the float, label for label."""
    bundle = tiny_bundle("bert")
    windowing = Windowing(windows, body.get("window_overlap", 32), 32, body.get("aggregation"))
    scorer = Scorer.from_bundle(
        bundle, windowing=windowing, answering=Answering(all_scores=True, details=True), max_batch_tokens=64
    )
    answers = scorer.classify(TEXTS)
    app = create_app(Settings(bundle=str(bundle)))
    with TestClient(app) as client:
        wait_app_ready(client)
        served = client.post("/predict", json={"inputs": TEXTS, "truncate": True, "details": True, **body}).json()
    for answer, ranked, details in zip(answers, served["predictions"], served["details"]):
        assert answer["predicted_label"] == ranked[0]["label"]
        assert answer["predicted_score"] == pytest.approx(ranked[0]["score"], abs=1e-6)
        assert {k: answer[f"predicted_score_{k}"] for k in scorer.manifest.labels} == pytest.approx(
            {p["label"]: p["score"] for p in ranked}, abs=1e-6
        )
        assert {k: answer[f"predicted_{k}"] for k in ("truncated", "windows", "tokens")} == details
    assert (answers[1]["predicted_windows"] > 1) == windows and answers[1]["predicted_truncated"] != windows


@needs_export
def test_a_refused_input_is_named_and_the_rest_scored(tiny_bundle):
    scorer = Scorer.from_bundle(tiny_bundle("bert"), truncate=False)
    encoded, problems = scorer.encode(["fine", "word " * 40, "also fine"])
    assert problems == {1: "has 82 tokens, more than the model's limit of 24"}
    assert encoded[1] is None and encoded[0] is not None
    with pytest.raises(ValueError, match=r"^input 1: has 82 tokens"):
        scorer.classify(["fine", "word " * 40])
    logits, reports = scorer.score([item for item in encoded if item is not None])
    assert logits.shape == (2, len(scorer.manifest.labels)) and np.isfinite(logits).all()
    assert [r.tokens for r in reports] == [5, 8]  # "fine" and "also fine" with [CLS] and [SEP], in this vocabulary
