"""The accuracy gate, on hand-made logits whose outcome is known exactly."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("torch")  # the gate lives in the export stage

from export.verify import Thresholds, compare, top1_margin  # noqa: E402

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
