"""The accuracy gate, on hand-made logits whose outcome is known exactly."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("torch")  # the gate lives in the export stage

from service.core.gate import Thresholds, compare, top1_margin  # noqa: E402

SINGLE = "single_label_classification"
MULTI = "multi_label_classification"


def confident_reference(n: int) -> np.ndarray:
    """n texts, 3 classes, each with a clear winner (margin well above 0.1)."""
    logits = np.zeros((n, 3), dtype=np.float32)
    logits[np.arange(n), np.arange(n) % 3] = 5.0
    return logits


def test_identical_outputs_pass_every_variant():
    ref = confident_reference(10)
    for variant in ("fp32", "fp32-optimized", "int8", "int8-selective"):
        report = compare(variant, ref, ref.copy(), SINGLE)
        assert report.passed, report.failures
        assert report.agreement == 1.0 and report.max_logit_diff == 0.0


def test_fp32_gate_is_on_logits():
    ref = confident_reference(4)
    cand = ref.copy()
    cand[2, 1] += 2e-4
    report = compare("fp32", ref, cand, SINGLE)
    assert report.failures == ["max |logit difference| 2.00e-04 > 1e-04"]
    assert compare("fp32", ref, cand, SINGLE, Thresholds(fp32_max_logit_diff=3e-4)).passed


def test_int8_flipping_a_confident_text_fails_even_at_high_agreement():
    ref = confident_reference(200)
    cand = ref.copy()
    cand[0] = [0.0, 5.0, 0.0]  # text 0 was confidently class 0
    report = compare("int8", ref, cand, SINGLE)
    assert report.agreement == pytest.approx(0.995)
    assert report.confident_agreement == pytest.approx(199 / 200)
    assert "1 of 200 texts with margin >= 0.1 changed label" in report.failures
    assert not report.passed


def test_int8_near_ties_may_flip_within_the_agreement_budget():
    ref = confident_reference(200)
    ref[0] = [1.0, 0.99, -3.0]  # a near-tie: margin < 0.1
    cand = ref.copy()
    cand[0] = [0.99, 1.0, -3.0]
    report = compare("int8", ref, cand, SINGLE)
    assert report.agreement == pytest.approx(0.995)
    assert report.confident_agreement == 1.0
    assert report.passed, report.failures


def test_int8_agreement_threshold():
    ref = np.tile(np.array([[1.0, 0.99, -3.0]], dtype=np.float32), (100, 1))  # all near-ties
    cand = ref.copy()
    cand[:2] = [0.99, 1.0, -3.0]
    report = compare("int8", ref, cand, SINGLE)
    assert report.failures == ["top-1 agreement 98.00% < 99.00%"]
    assert compare("int8", ref, cand, SINGLE, Thresholds(int8_min_agreement=0.98)).passed


def test_int8_probability_difference_threshold():
    ref = confident_reference(10)
    cand = ref.copy()
    cand[0, 0] = 3.0  # same label, lower confidence
    report = compare("int8", ref, cand, SINGLE)
    assert report.agreement == 1.0
    # softmax([5, 0, 0])[0] - softmax([3, 0, 0])[0] = 0.98670 - 0.90944
    assert report.failures == ["max |probability difference| 0.0773 > 0.05"]
    assert report.max_prob_diff == pytest.approx(0.07726, abs=1e-5)


def test_multi_label_uses_sigmoid():
    ref = np.array([[4.0, -4.0], [-4.0, 4.0]], dtype=np.float32)
    cand = ref + np.array([[0.5, 0.0], [0.0, 0.0]], dtype=np.float32)
    report = compare("int8", ref, cand, MULTI)
    sig = lambda x: 1 / (1 + np.exp(-x))  # noqa: E731
    assert report.max_prob_diff == pytest.approx(sig(4.5) - sig(4.0), rel=1e-6)
    assert report.passed


def test_top1_margin():
    probs = np.array([[0.7, 0.2, 0.1], [0.5, 0.45, 0.05]])
    assert top1_margin(probs) == pytest.approx([0.5, 0.05])


ONE = "single_label_classification"
REGRESSION = "regression"


def test_one_logit_gate_is_on_decisions_not_a_trivial_softmax():
    """Softmax over one logit is always 1.0: a gate on it could never fail."""
    ref = np.array([[3.0], [-3.0], [0.05], [2.0]], dtype=np.float32)
    cand = np.array([[-3.0], [-3.0], [-0.05], [2.0]], dtype=np.float32)
    report = compare("int8", ref, cand, ONE)
    assert report.measure == "decisions@0.5"
    assert report.agreement == pytest.approx(0.5)
    assert report.confident_texts == 3  # sigmoid(0.05) = 0.512 is within 0.05 of the threshold
    assert report.failures == [
        "decision agreement at threshold 0.5 50.00% < 99.00%",
        "1 of 3 decisions at least 0.05 from the threshold changed",
        "max |probability difference| 0.9051 > 0.05",
    ]


def test_multi_label_decision_set_must_not_change():
    """One label of one text crossing the threshold, confidently: the label set changed."""
    ref = np.tile(np.array([[3.0, -3.0, 0.0]], dtype=np.float32), (200, 1))
    ref[:, 2] = -2.0
    cand = ref.copy()
    cand[7, 1] = 0.2  # sigmoid(-3) = 0.047 -> sigmoid(0.2) = 0.55: the label set of text 7 changed
    report = compare("int8", ref, cand, MULTI)
    assert report.agreement == pytest.approx(0.995)  # argmax agreement would be 100%
    assert report.confident_texts == 600
    assert "1 of 600 decisions at least 0.05 from the threshold changed" in report.failures


def test_multi_label_near_threshold_flips_are_within_budget():
    ref = np.tile(np.array([[3.0, -3.0]], dtype=np.float32), (200, 1))
    ref[0, 1] = 0.01  # 0.5025: not confidently on either side
    cand = ref.copy()
    cand[0, 1] = -0.01
    report = compare("int8", ref, cand, MULTI)
    assert report.agreement == pytest.approx(0.995) and report.confident_agreement == 1.0
    assert report.passed, report.failures


def test_the_bundles_own_threshold_is_used():
    ref = np.array([[0.8], [-3.0]], dtype=np.float32)  # sigmoid 0.69 and 0.047
    cand = np.array([[0.5], [-3.0]], dtype=np.float32)  # sigmoid 0.62
    assert compare("int8", ref, cand, ONE, Thresholds(int8_max_prob_diff=1)).passed
    report = compare("int8", ref, cand, ONE, Thresholds(int8_max_prob_diff=1), threshold=0.65)
    assert report.measure == "decisions@0.65"
    assert report.failures == ["decision agreement at threshold 0.65 50.00% < 99.00%"]


def test_regression_gate_is_relative_to_the_output_spread():
    ref = np.array([[0.0], [1.0], [2.0], [3.0]], dtype=np.float32)  # std 1.118
    cand = ref + np.array([[0.0], [0.0], [0.1], [0.0]], dtype=np.float32)
    report = compare("int8", ref, cand, REGRESSION)
    assert report.measure == "value/std"
    assert report.max_value_diff == pytest.approx(0.1 / np.std([0, 1, 2, 3]), rel=1e-5)
    assert report.failures == ["max |value difference| is 0.0894 of the outputs' standard deviation > 0.05"]
    assert compare("int8", ref, cand, REGRESSION, Thresholds(int8_max_value_diff=0.1)).passed
    # The same absolute error on outputs spread 100 times wider is negligible.
    assert compare("int8", ref * 100, ref * 100 + (cand - ref), REGRESSION).passed


def test_regression_fp32_is_still_on_raw_values():
    ref = np.array([[0.0], [1.0]], dtype=np.float32)
    report = compare("fp32", ref, ref + 2e-4, REGRESSION)
    assert report.failures == ["max |logit difference| 2.00e-04 > 1e-04"]
