"""Run a bundle's reference set again on the CPU that serves it, and hold it to the export's gate.

ONNX Runtime picks its kernels by instruction set (AVX2, AVX-512, VNNI, AMX), so a graph that
passed the gate on the export machine can answer differently here; a graph changed after export
with its hashes rewritten answers differently everywhere. The bundle carries the validation
inputs and the original model's logits for them (``reference.json``); every load runs them and
compares with the same measures and tolerances (``service.core.gate``) as the export did.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from service.core.classifier import OnnxClassifier, TextInput
from service.core.cpu import CPU_FLAGS, cpu_flags
from service.core.gate import Thresholds, compare
from service.core.manifest import Manifest

__all__ = ["CPU_FLAGS", "FailedVerification", "Reverification", "cpu_flags", "reverify"]


class FailedVerification(Exception):
    """The bundle's answers on this CPU are outside the gate's tolerances."""


@dataclass(frozen=True)
class Reverification:
    passed: bool
    inputs: int
    measure: str
    agreement: float
    max_logit_diff: float
    max_score_diff: float
    failures: list[str] = field(default_factory=list)
    seconds: float = 0.0
    cpu_flags: list[str] = field(default_factory=list)
    onnxruntime: str = ort.__version__
    # What ran the reference set: the engine and the precision of its matrix products.
    engine: str = "onnxruntime"
    precision: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def reverify(
    classifier: OnnxClassifier,
    directory: Path,
    manifest: Manifest,
    *,
    variant: str | None = None,
    max_batch_tokens: int | None = None,
) -> Reverification | None:
    """The gate's verdict on this CPU, or None for a bundle exported without a reference set. ``variant`` names
    what runs when it is not the bundle's own variant (an engine's graph: ``openvino-bf16``). Its batches
    hold at most ``max_batch_tokens`` padded tokens, as the service's do (MAX_BATCH_TOKENS)."""
    if manifest.reference_set is None:
        return None
    started = time.perf_counter()
    data = json.loads((directory / manifest.reference_set).read_text(encoding="utf-8"))
    inputs: list[TextInput] = [item if isinstance(item, str) else (item[0], item[1]) for item in data["inputs"]]
    expected = np.asarray(data["logits"], dtype=np.float32)
    thresholds = Thresholds(**manifest.verification.get("thresholds", {}))
    report = compare(
        variant or manifest.variant,
        expected,
        classifier.logits(inputs, max_tokens=max_batch_tokens),
        manifest.problem_type,
        thresholds,
        threshold=manifest.threshold,
    )
    return Reverification(
        passed=report.passed,
        inputs=len(inputs),
        measure=report.measure,
        agreement=report.agreement,
        max_logit_diff=report.max_logit_diff,
        max_score_diff=report.max_prob_diff,
        failures=report.failures,
        seconds=round(time.perf_counter() - started, 3),
        cpu_flags=cpu_flags(),
        engine=classifier.backend.name,
        precision=classifier.backend.precision,
    )
