"""The accuracy gate: compare a variant's outputs with the original model's.

Every check is measured and every failure collected, one line each with the
measured value, and a variant that fails any check is rejected.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from export.variants import INT8_VARIANTS
from service.classifier import probabilities


@dataclass(frozen=True)
class Thresholds:
    fp32_max_logit_diff: float = 1e-4
    int8_min_agreement: float = 0.99
    int8_confident_margin: float = 0.1
    int8_max_prob_diff: float = 0.05


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
) -> VariantReport:
    ref_probs = probabilities(reference.astype(np.float64), problem_type)
    cand_probs = probabilities(candidate.astype(np.float64), problem_type)
    agree = ref_probs.argmax(axis=1) == cand_probs.argmax(axis=1)
    confident = top1_margin(ref_probs) >= thresholds.int8_confident_margin
    report = VariantReport(
        variant=variant,
        texts=len(reference),
        max_logit_diff=float(np.abs(candidate - reference).max()),
        max_prob_diff=float(np.abs(cand_probs - ref_probs).max()),
        agreement=float(agree.mean()),
        confident_texts=int(confident.sum()),
        confident_agreement=float(agree[confident].mean()) if confident.any() else 1.0,
    )
    if variant in INT8_VARIANTS:
        if report.agreement < thresholds.int8_min_agreement:
            report.failures.append(
                f"top-1 agreement {report.agreement:.2%} < {thresholds.int8_min_agreement:.2%}"
            )
        if report.confident_agreement < 1.0:
            flipped = int((~agree & confident).sum())
            report.failures.append(
                f"{flipped} of {report.confident_texts} texts with margin >= {thresholds.int8_confident_margin} changed label"
            )
        if report.max_prob_diff > thresholds.int8_max_prob_diff:
            report.failures.append(
                f"max |probability difference| {report.max_prob_diff:.4f} > {thresholds.int8_max_prob_diff}"
            )
    elif report.max_logit_diff > thresholds.fp32_max_logit_diff:
        report.failures.append(
            f"max |logit difference| {report.max_logit_diff:.2e} > {thresholds.fp32_max_logit_diff:.0e}"
        )
    return report
