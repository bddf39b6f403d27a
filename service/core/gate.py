"""The accuracy gate: compare a variant's outputs with the original model's.

The export stage gates every variant with it, and the service runs it again on the
CPU that serves a bundle, against the reference set the bundle carries
(``service.core.reverify``); so it lives here, beside the manifest, with no torch.

What is compared is what the bundle's users act on, by score function
(``service.core.manifest.score_function``):

* softmax (single-label): the top-1 label, on every text and on every text whose
  top-1/top-2 probability margin is at least ``confident_margin``;
* sigmoid (multi-label, one logit): the yes/no decision of every output at the
  bundle's threshold; texts agree when all their decisions do, and every decision
  whose original probability lies at least ``confident_margin / 2`` from the
  threshold (the margin a two-class softmax would have) must agree;
* identity (regression): max |Δvalue| relative to the standard deviation of the
  original's outputs on the validation set.

fp32 variants must match the logits themselves. Every check is measured and
every failure collected, one line each with the measured value, and a variant
that fails any check is rejected.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from service.core.manifest import DEFAULT_THRESHOLD, IDENTITY, SIGMOID, score_function
from service.core.scoring import decisions, probabilities

# The variants held to the int8 tolerances (the export stage's names, ``export.variants``): dynamic
# int8, and the weight-only variants (blockwise int8 or int4 weights, ``export.weight_only``).
INT8_VARIANTS = ("int8", "int8-selective", "int8-weights", "int4-weights")
# An engine's own graph is reported as ``ENGINE-PRECISION`` (``openvino-bf16``): bf16 keeps 8 bits of
# mantissa and the graph stores its weights as fp16, so it is held to the int8 tolerances too.
ENGINE_VARIANT_PREFIXES = ("openvino-",)


def approximate(variant: str) -> bool:
    """Held to the int8 tolerances (agreement, probabilities) rather than fp32's logit bound."""
    return variant in INT8_VARIANTS or variant.startswith(ENGINE_VARIANT_PREFIXES)


@dataclass(frozen=True)
class Thresholds:
    fp32_max_logit_diff: float = 1e-4
    int8_min_agreement: float = 0.99
    int8_confident_margin: float = 0.1
    int8_max_prob_diff: float = 0.05
    int8_max_value_diff: float = 0.05


@dataclass
class VariantReport:
    variant: str
    texts: int
    max_logit_diff: float
    max_prob_diff: float
    agreement: float
    confident_texts: int
    confident_agreement: float
    failures: list[str] = field(default_factory=list)
    size_bytes: int = 0
    kept_fp32: list[str] = field(default_factory=list)
    # "top-1", "decisions@THRESHOLD" or "value/std": what agreement and max_prob_diff measure.
    measure: str = "top-1"
    # Regression only: max |Δvalue| / std of the original's outputs (max_prob_diff holds the same).
    max_value_diff: float | None = None

    @property
    def passed(self) -> bool:
        return not self.failures

    def to_dict(self) -> dict[str, object]:
        return {**asdict(self), "passed": self.passed}


def top1_margin(probs: np.ndarray) -> np.ndarray:
    if probs.shape[1] < 2:
        return np.ones(len(probs))
    top2 = np.sort(probs, axis=1)[:, -2:]
    return top2[:, 1] - top2[:, 0]


def compare(
    variant: str,
    reference: np.ndarray,
    candidate: np.ndarray,
    problem_type: str,
    thresholds: Thresholds = Thresholds(),
    *,
    threshold: float = DEFAULT_THRESHOLD,
) -> VariantReport:
    function = score_function(problem_type, reference.shape[1])
    if function == IDENTITY:
        report = _compare_values(variant, reference, candidate)
    elif function == SIGMOID:
        report = _compare_decisions(variant, reference, candidate, problem_type, thresholds, threshold)
    else:
        report = _compare_top1(variant, reference, candidate, problem_type, thresholds)
    if approximate(variant):
        report.failures.extend(_int8_failures(report, thresholds, threshold))
    elif report.max_logit_diff > thresholds.fp32_max_logit_diff:
        report.failures.append(
            f"max |logit difference| {report.max_logit_diff:.2e} > {thresholds.fp32_max_logit_diff:.0e}"
        )
    return report


def _compare_top1(
    variant: str, reference: np.ndarray, candidate: np.ndarray, problem_type: str, thresholds: Thresholds
) -> VariantReport:
    ref_probs = probabilities(reference.astype(np.float64), problem_type)
    cand_probs = probabilities(candidate.astype(np.float64), problem_type)
    agree = ref_probs.argmax(axis=1) == cand_probs.argmax(axis=1)
    confident = top1_margin(ref_probs) >= thresholds.int8_confident_margin
    return VariantReport(
        variant=variant,
        texts=len(reference),
        max_logit_diff=float(np.abs(candidate - reference).max()),
        max_prob_diff=float(np.abs(cand_probs - ref_probs).max()),
        agreement=float(agree.mean()),
        confident_texts=int(confident.sum()),
        confident_agreement=float(agree[confident].mean()) if confident.any() else 1.0,
    )


def _compare_decisions(
    variant: str,
    reference: np.ndarray,
    candidate: np.ndarray,
    problem_type: str,
    thresholds: Thresholds,
    threshold: float,
) -> VariantReport:
    ref_probs = probabilities(reference.astype(np.float64), problem_type)
    cand_probs = probabilities(candidate.astype(np.float64), problem_type)
    same = decisions(ref_probs, threshold) == decisions(cand_probs, threshold)
    confident = np.abs(ref_probs - threshold) >= thresholds.int8_confident_margin / 2
    return VariantReport(
        variant=variant,
        texts=len(reference),
        max_logit_diff=float(np.abs(candidate - reference).max()),
        max_prob_diff=float(np.abs(cand_probs - ref_probs).max()),
        agreement=float(same.all(axis=1).mean()),
        confident_texts=int(confident.sum()),
        confident_agreement=float(same[confident].mean()) if confident.any() else 1.0,
        measure=f"decisions@{threshold:g}",
    )


def _compare_values(variant: str, reference: np.ndarray, candidate: np.ndarray) -> VariantReport:
    difference = np.abs(candidate.astype(np.float64) - reference.astype(np.float64))
    # A constant output (std 0) leaves nothing to scale by: any difference then counts in full.
    spread = reference.astype(np.float64).std(axis=0)
    relative = float((difference / np.where(spread > 0, spread, 1.0)).max())
    return VariantReport(
        variant=variant,
        texts=len(reference),
        max_logit_diff=float(difference.max()),
        max_prob_diff=relative,
        agreement=1.0,
        confident_texts=0,
        confident_agreement=1.0,
        measure="value/std",
        max_value_diff=relative,
    )


def _int8_failures(report: VariantReport, thresholds: Thresholds, threshold: float) -> list[str]:
    if report.max_value_diff is not None:
        if report.max_value_diff > thresholds.int8_max_value_diff:
            return [
                f"max |value difference| is {report.max_value_diff:.4f} of the outputs' standard deviation "
                f"> {thresholds.int8_max_value_diff}"
            ]
        return []
    failures = []
    decided = report.measure != "top-1"
    what = f"decision agreement at threshold {threshold:g}" if decided else "top-1 agreement"
    if report.agreement < thresholds.int8_min_agreement:
        failures.append(f"{what} {report.agreement:.2%} < {thresholds.int8_min_agreement:.2%}")
    if report.confident_agreement < 1.0:
        flipped = round((1.0 - report.confident_agreement) * report.confident_texts)
        if decided:
            failures.append(
                f"{flipped} of {report.confident_texts} decisions at least "
                f"{thresholds.int8_confident_margin / 2:g} from the threshold changed"
            )
        else:
            failures.append(
                f"{flipped} of {report.confident_texts} texts with margin >= {thresholds.int8_confident_margin} "
                "changed label"
            )
    if report.max_prob_diff > thresholds.int8_max_prob_diff:
        failures.append(f"max |probability difference| {report.max_prob_diff:.4f} > {thresholds.int8_max_prob_diff}")
    return failures
