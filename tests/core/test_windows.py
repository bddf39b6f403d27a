"""Long inputs read in windows: how the tokenizer cuts them, and how the windows' scores become one."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from service.core.classifier import OnnxClassifier
from service.core.manifest import IDENTITY, SIGMOID, SOFTMAX
from service.core.scoring import sigmoid, softmax
from service.core.windows import FIRST, MAX, MEAN, InputReport, Windowing, aggregate, default_aggregation
from tests.conftest import needs_export

LN3 = math.log(3)


@pytest.mark.parametrize(
    "function, how, logits, tokens, scores",
    [
        # probabilities [.25, .75] over 3 tokens and [.75, .25] over 1: (3 x .25 + .75) / 4 = .375
        pytest.param(SOFTMAX, MEAN, [[0, LN3], [LN3, 0]], [3, 1], [0.375, 0.625], id="softmax-mean-weighted"),
        pytest.param(SOFTMAX, MAX, [[0, LN3], [LN3, 0]], [3, 1], [0.5, 0.5], id="softmax-max-renormalised"),
        pytest.param(SOFTMAX, MAX, [[0, LN3], [0, 0]], [1, 1], [0.5 / 1.25, 0.75 / 1.25], id="softmax-max"),
        # p = .5 and .75, equal weights: .625
        pytest.param(SIGMOID, MEAN, [[0], [LN3]], [2, 2], [0.625], id="sigmoid-mean"),
        pytest.param(SIGMOID, MAX, [[0, -LN3], [LN3, -5]], [9, 1], [0.75, 0.25], id="sigmoid-max-per-label"),
        pytest.param(IDENTITY, MEAN, [[1.0], [4.0]], [1, 2], [3.0], id="regression-mean"),
        pytest.param(IDENTITY, MAX, [[1.0], [4.0]], [1, 2], [4.0], id="regression-max"),
    ],
)
def test_windows_combine_in_score_space(function, how, logits, tokens, scores):
    row = aggregate(np.array(logits), np.array(tokens), function, how)
    as_scores = {SOFTMAX: softmax, SIGMOID: sigmoid, IDENTITY: lambda x: x}[function](row)
    np.testing.assert_allclose(as_scores, scores, rtol=1e-12)


def test_one_window_is_its_own_answer():
    logits = np.array([[0.1, 0.2, 0.3]], dtype=np.float32)
    np.testing.assert_array_equal(aggregate(logits, np.array([7]), SOFTMAX, MEAN), logits[0])


def test_extreme_logits_stay_finite():
    # p = 1 - 1e-44 and 1e-44 would round to 1 and 0; their mean is still exactly one half.
    row = aggregate(np.array([[100.0], [-100.0]]), np.array([1, 1]), SIGMOID, MEAN)
    assert row == pytest.approx([0.0], abs=1e-12)
    row = aggregate(np.array([[1000.0, 0.0], [0.0, 1000.0]]), np.array([1, 1]), SOFTMAX, MEAN)
    np.testing.assert_allclose(softmax(row), [0.5, 0.5])


@pytest.mark.parametrize(
    "function, expected", [(SOFTMAX, MEAN), (SIGMOID, MAX), (IDENTITY, MEAN)], ids=["softmax", "sigmoid", "regression"]
)
def test_default_aggregation_per_kind(function, expected):
    assert default_aggregation(function) == expected


def test_a_request_overrides_only_what_it_names():
    defaults = Windowing(enabled=False, overlap=32, max_windows=8, aggregation=None)
    assert defaults.overridden() == defaults
    assert defaults.overridden(enabled=True, aggregation="max") == Windowing(True, 32, 8, "max")
    assert defaults.overridden(overlap=0) == Windowing(False, 0, 8, None)
    assert InputReport(True, 3, 70).to_dict() == {"truncated": True, "windows": 3, "tokens": 70}


WORDS = [f"w{i}" for i in range(50)]


@pytest.fixture(scope="module")
def classifier(tiny_bundle) -> OnnxClassifier:
    return OnnxClassifier.from_bundle(tiny_bundle("bert"))


def content(classifier: OnnxClassifier, ids: np.ndarray) -> list[int]:
    special = {classifier.tokenizer.token_to_id(token) for token in ("[CLS]", "[SEP]")}
    return [int(i) for i in ids if int(i) not in special]


@needs_export
@pytest.mark.parametrize("overlap", [0, 3, 11])
def test_windows_cover_the_text_with_the_overlap_asked_for(classifier, overlap):
    text = " ".join(f"hello world {i}" for i in range(40))
    whole = classifier._counter.encode(text, add_special_tokens=False).ids
    (windowed,) = classifier.encode_windows([text], overlap=overlap, max_windows=100)
    window_length = classifier.window_length  # 24 tokens: [CLS] + 22 + [SEP]
    room = window_length - 2
    assert windowed.needed == len(windowed.windows) == math.ceil((len(whole) - overlap) / (room - overlap))
    assert not windowed.truncated
    pieces = [content(classifier, window.ids) for window in windowed.windows]
    for window in windowed.windows:
        assert window.length <= window_length
        assert window.ids[0] == classifier.tokenizer.token_to_id("[CLS]")
        assert window.ids[-1] == classifier.tokenizer.token_to_id("[SEP]")
    stitched = pieces[0] + [token for piece in pieces[1:] for token in piece[overlap:]]
    assert stitched == whole
    for earlier, later in zip(pieces, pieces[1:]):
        assert earlier[len(earlier) - overlap :] == later[:overlap]


@needs_export
def test_a_short_text_is_one_window_and_a_capped_one_is_truncated(classifier):
    long = " ".join(WORDS * 4)
    short, capped = classifier.encode_windows(["hello world", long], overlap=2, max_windows=3)
    assert (len(short.windows), short.needed, short.truncated) == (1, 1, False)
    assert len(capped.windows) == 3 and capped.needed > 3 and capped.truncated


@needs_export
def test_a_pair_keeps_one_side_whole_in_every_window(tiny_bundle):
    classifier = OnnxClassifier.from_bundle(tiny_bundle("bert"))
    classifier.manifest = dataclasses.replace(classifier.manifest, task="pair")  # its tokenizer has a pair template
    query, document = "hello world", " ".join(WORDS * 2)
    query_ids = classifier._counter.encode(query, add_special_tokens=False).ids
    (second,) = classifier.encode_windows([(query, document)], overlap=2, max_windows=100)
    assert len(second.windows) > 2 and not second.truncated
    for window in second.windows:
        ids = window.ids.tolist()
        assert ids[1 : 1 + len(query_ids)] == query_ids  # [CLS] query [SEP] part of the document [SEP]
        assert window.type_ids.tolist() == [0] * (len(query_ids) + 2) + [1] * (len(ids) - len(query_ids) - 2)
    (first,) = classifier.encode_windows([(document, query)], overlap=2, max_windows=100, side=FIRST)
    assert len(first.windows) == len(second.windows)
    for window in first.windows:
        assert window.ids.tolist()[-len(query_ids) - 1 : -1] == query_ids  # ... [SEP] query [SEP]
    (cut,) = classifier.encode_windows([(document, query)], overlap=2, max_windows=100)
    assert cut.cut and cut.truncated  # the kept side, longer than half a window, was cut to it
    kept = cut.windows[0].type_ids.tolist().count(0) - 2
    assert kept == (classifier.window_length - 3) // 2
