"""The classifier's inputs and scores: pairs through the tokenizer's own pair
template, the input kind enforced, and scores that follow the problem type."""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import pytest

from service.core.classifier import InputKindError, OnnxClassifier
from service.core.manifest import ZeroShotIds
from service.core.scoring import decisions, probabilities, sigmoid, softmax, zero_shot_scores
from tests.conftest import needs_export


def as_pair_model(classifier: OnnxClassifier) -> OnnxClassifier:
    classifier.manifest = dataclasses.replace(classifier.manifest, task="pair")
    return classifier


@needs_export
def test_pairs_use_the_tokenizers_pair_template_and_type_ids(tiny_bundle, tiny_checkpoint):
    from transformers import AutoTokenizer

    classifier = as_pair_model(OnnxClassifier.from_bundle(tiny_bundle("bert")))
    hf = AutoTokenizer.from_pretrained(tiny_checkpoint("bert"))
    pairs = [("what is my balance", "show my account"), ("hello world " * 30, "a second text")]
    encoded = classifier.encode(pairs)
    expected = hf([a for a, _ in pairs], [b for _, b in pairs], truncation=True, max_length=24)
    assert [e.ids.tolist() for e in encoded] == expected["input_ids"]
    assert [e.type_ids.tolist() for e in encoded] == expected["token_type_ids"]
    assert set(encoded[0].type_ids.tolist()) == {0, 1}


@needs_export
def test_a_truncated_pair_counts_its_full_length(tiny_bundle, tiny_checkpoint):
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(tiny_checkpoint("bert"))
    classifier = as_pair_model(OnnxClassifier.from_bundle(tiny_bundle("bert")))
    (short, long) = classifier.encode([("a", "b"), ("hello world " * 30, "hello")], count_full=True)
    assert short.full_length == short.length == 5
    assert long.length == 24
    assert long.full_length == len(hf("hello world " * 30, "hello")["input_ids"]) > 24


@needs_export
def test_pair_lists_from_json_are_pairs_too(tiny_bundle):
    classifier = as_pair_model(OnnxClassifier.from_bundle(tiny_bundle("bert")))
    from_tuple, from_list = classifier.encode([("a b", "c"), ["a b", "c"]])
    assert from_tuple.ids.tolist() == from_list.ids.tolist()


@needs_export
@pytest.mark.parametrize(
    "task, given, message",
    [
        pytest.param(
            "pair",
            ["just one text"],
            "input 0: this model classifies text pairs; each input must be two texts",
            id="text-to-pair-model",
        ),
        pytest.param(
            "pair",
            [("a", "b"), ("a", "b", "c")],
            "input 1: this model classifies text pairs; each input must be two texts",
            id="triple-to-pair-model",
        ),
        pytest.param(
            "text",
            ["fine", ("a", "b")],
            "input 1: this model classifies single texts, not pairs",
            id="pair-to-text-model",
        ),
    ],
)
def test_inputs_of_the_wrong_kind_are_refused(tiny_bundle, task, given, message):
    classifier = OnnxClassifier.from_bundle(tiny_bundle("bert"))
    classifier.manifest = dataclasses.replace(classifier.manifest, task=task)
    with pytest.raises(InputKindError) as info:
        classifier.encode(given)
    assert str(info.value) == message


LOGITS = np.array([[2.0, -1.0, 0.5], [-30.0, 0.0, 800.0]])


@pytest.mark.parametrize(
    "problem_type, logits, expected",
    [
        pytest.param("single_label_classification", LOGITS, softmax(LOGITS), id="softmax"),
        pytest.param("single_label_classification", LOGITS[:, :1], sigmoid(LOGITS[:, :1]), id="one-logit-sigmoid"),
        pytest.param("multi_label_classification", LOGITS, sigmoid(LOGITS), id="multi-label-sigmoid"),
        pytest.param("regression", LOGITS[:, :1], LOGITS[:, :1], id="regression-raw"),
    ],
)
def test_probabilities_follow_the_problem_type(problem_type, logits, expected):
    np.testing.assert_array_equal(probabilities(logits, problem_type), expected)


def test_one_logit_scores_are_not_all_one():
    """Softmax over a single logit would make every answer 1.0."""
    scores = probabilities(np.array([[-2.0], [0.0], [3.0]]), "single_label_classification")
    np.testing.assert_allclose(scores.ravel(), [0.1192029, 0.5, 0.9525741], rtol=1e-6)


def test_sigmoid_of_extreme_logits_is_exact_and_quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        np.testing.assert_array_equal(sigmoid(np.array([-1000.0, 1000.0])), [0.0, 1.0])


def test_decisions_at_the_threshold():
    scores = np.array([[0.2, 0.5, 0.7]])
    assert decisions(scores, 0.5).tolist() == [[False, True, True]]
    assert decisions(scores, 0.6).tolist() == [[False, False, True]]


def test_zero_shot_scores_follow_the_transformers_pipeline():
    """Logits of 1 text x 3 candidate labels x (contradiction, neutral, entailment)."""
    logits = np.array([[[0.1, 0.2, 2.0], [1.5, 0.0, -1.0], [0.0, 0.0, 0.5]]])
    ids = ZeroShotIds(entailment=2, contradiction=0)
    single = zero_shot_scores(logits, ids, multi_label=False)
    np.testing.assert_allclose(single, softmax(np.array([[2.0, -1.0, 0.5]])))
    assert single.sum() == pytest.approx(1.0)
    multi = zero_shot_scores(logits, ids, multi_label=True)
    np.testing.assert_allclose(
        multi,
        [
            [
                np.exp(2.0) / (np.exp(2.0) + np.exp(0.1)),
                np.exp(-1.0) / (np.exp(-1.0) + np.exp(1.5)),
                np.exp(0.5) / (np.exp(0.5) + 1.0),
            ]
        ],
    )
    one_label = zero_shot_scores(logits[:, :1], ids, multi_label=False)
    np.testing.assert_allclose(one_label, multi[:, :1])
    with pytest.raises(ValueError, match=r"expected \(texts, labels, outputs\) logits"):
        zero_shot_scores(logits[0], ids, multi_label=False)
