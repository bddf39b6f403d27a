"""Run a bundle's reference set again on the CPU that serves it, and hold it to the export's gate.

ONNX Runtime picks its kernels by instruction set (AVX2, AVX-512, VNNI, AMX), so a graph that
passed the gate on the export machine can answer differently here; a graph changed after export
with its hashes rewritten answers differently everywhere. The bundle carries the validation
inputs and the original model's logits for them (``reference.json``); every load runs them and
compares with the same measures and tolerances (``service.core.gate``) as the export did.

What it proves, and what not: a CPU or a runtime that answers differently, and a bundle damaged
by accident. It does not prove where a bundle came from: whoever can rewrite the whole bundle
can rewrite its reference set and its tolerances too. The service's floor (``GateFloor``: the
GATE_* settings) refuses a bundle whose recorded tolerances are laxer than the floor, so a
bundle cannot relax its own check; it still cannot tell an honest bundle from a forged one.

The reference set is bounded before it is read (MAX_REFERENCE_BYTES, MAX_REFERENCE_ROWS) and
run in batches within MAX_BATCH_TOKENS and MAX_BATCH_SIZE, as the batcher runs traffic.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from service.core.classifier import OnnxClassifier, TextInput
from service.core.cpu import CPU_FLAGS, cpu_flags
from service.core.gate import Thresholds, compare
from service.core.manifest import MANIFEST_NAME, Manifest
from service.settings import Settings

__all__ = ["CPU_FLAGS", "FailedVerification", "Reverification", "cpu_flags", "reverify"]


class FailedVerification(Exception):
    """The bundle's answers on this CPU are outside the gate's tolerances."""


class BadReferenceSet(FailedVerification):
    """The reference set cannot be run: unreadable, malformed, over the limits, or with tolerances
    laxer than the service's floor. Refused as a failed re-verification is (a single bundle exits 5)."""


@dataclass(frozen=True)
class Limits:
    """What a reference set may cost at load, and the gate's floor: tolerances a bundle may not relax."""

    max_bytes: int = 4 * 1024 * 1024
    max_rows: int = 2000
    max_batch_tokens: int = 4096
    max_batch_size: int = 64
    floor: Thresholds = Thresholds()
    require_reference_set: bool = False


# The tolerances that make the gate stricter the lower they are; int8_min_agreement is the one that is
# stricter the higher it is.
_CEILINGS = ("fp32_max_logit_diff", "int8_confident_margin", "int8_max_prob_diff", "int8_max_value_diff")


def limits_of(settings: Settings) -> Limits:
    return Limits(
        max_bytes=settings.max_reference_bytes,
        max_rows=settings.max_reference_rows,
        max_batch_tokens=settings.max_batch_tokens,
        max_batch_size=settings.max_batch_size,
        floor=Thresholds(
            fp32_max_logit_diff=settings.gate_fp32_max_logit_diff,
            int8_min_agreement=settings.gate_int8_min_agreement,
            int8_confident_margin=settings.gate_int8_confident_margin,
            int8_max_prob_diff=settings.gate_int8_max_prob_diff,
            int8_max_value_diff=settings.gate_int8_max_value_diff,
        ),
        require_reference_set=settings.require_reference_set,
    )


def thresholds_of(manifest: Manifest, floor: Thresholds) -> Thresholds:
    """The bundle's recorded tolerances (the gate's defaults where it records none), or BadReferenceSet
    when one is malformed or laxer than ``floor``."""
    recorded = manifest.verification.get("thresholds", {})
    if not isinstance(recorded, dict):
        raise BadReferenceSet(f"{MANIFEST_NAME}: verification.thresholds must be an object")
    known = {f.name for f in fields(Thresholds)}
    values = {}
    for name, value in recorded.items():
        if name not in known:
            raise BadReferenceSet(f"{MANIFEST_NAME}: verification.thresholds.{name} is not a tolerance of the gate")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise BadReferenceSet(f"{MANIFEST_NAME}: verification.thresholds.{name} must be a number, got {value!r}")
        values[name] = float(value)
    thresholds = Thresholds(**values)
    laxer = [
        f"{name} {getattr(thresholds, name):g} > GATE_{name.upper()} {getattr(floor, name):g}"
        for name in _CEILINGS
        if getattr(thresholds, name) > getattr(floor, name)
    ]
    if thresholds.int8_min_agreement < floor.int8_min_agreement:
        laxer.insert(
            0,
            f"int8_min_agreement {thresholds.int8_min_agreement:g} < GATE_INT8_MIN_AGREEMENT "
            f"{floor.int8_min_agreement:g}",
        )
    if laxer:
        raise BadReferenceSet(
            f"{MANIFEST_NAME}: the bundle's tolerances are laxer than this service allows: " + "; ".join(laxer)
        )
    return thresholds


def read_reference(path: Path, manifest: Manifest, limits: Limits) -> tuple[list[TextInput], np.ndarray]:
    """The reference set's inputs and logits, checked, or BadReferenceSet naming the file and the problem."""
    name = path.name
    size = path.stat().st_size
    if size > limits.max_bytes:
        raise BadReferenceSet(f"{name} holds {size} bytes, more than MAX_REFERENCE_BYTES {limits.max_bytes}")
    try:
        data = json.loads(path.read_bytes())
    except (ValueError, RecursionError) as exc:  # bad JSON or bad UTF-8; nesting deeper than the parser's stack
        raise BadReferenceSet(f"{name} is not valid JSON: {str(exc) or type(exc).__name__}") from None
    if not isinstance(data, dict):
        raise BadReferenceSet(f"{name} must hold a JSON object with 'inputs' and 'logits'")
    inputs, logits = data.get("inputs"), data.get("logits")
    for field_name, value in (("inputs", inputs), ("logits", logits)):
        if not isinstance(value, list) or not value:
            raise BadReferenceSet(f"{name}: '{field_name}' must be a non-empty list")
    assert isinstance(inputs, list) and isinstance(logits, list)
    if len(inputs) > limits.max_rows:
        raise BadReferenceSet(f"{name} holds {len(inputs)} rows, more than MAX_REFERENCE_ROWS {limits.max_rows}")
    if len(logits) != len(inputs):
        raise BadReferenceSet(f"{name}: {len(inputs)} inputs but {len(logits)} rows of logits")
    items: list[TextInput] = []
    for index, item in enumerate(inputs):
        if manifest.is_pair:
            if not (isinstance(item, list) and len(item) == 2 and all(isinstance(part, str) for part in item)):
                raise BadReferenceSet(f"{name}: inputs[{index}] must be a pair of texts")
            items.append((item[0], item[1]))
        elif isinstance(item, str):
            items.append(item)
        else:
            raise BadReferenceSet(f"{name}: inputs[{index}] must be a text")
    outputs = manifest.num_outputs
    for index, row in enumerate(logits):
        if (
            not isinstance(row, list)
            or len(row) != outputs
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in row)
        ):
            raise BadReferenceSet(f"{name}: logits[{index}] must be a list of {outputs} finite numbers")
    return items, np.asarray(logits, dtype=np.float32)


# The export's batch size when it ran the gate (``OnnxClassifier.logits``). Dynamic int8 graphs quantize each
# batch's activations as a whole, so a row's answer depends on the rows beside it: re-verification batches
# as the export did, to reproduce its verdict, and cuts a batch further only where the limits demand it.
EXPORT_BATCH_SIZE = 32


def batched_logits(classifier: OnnxClassifier, inputs: list[TextInput], limits: Limits) -> np.ndarray:
    """Logits of ``inputs``, shortest first in the export's batches of EXPORT_BATCH_SIZE, each cut further
    to stay within ``max_batch_tokens`` padded tokens and ``max_batch_size`` inputs, as the batcher runs."""
    encoded = classifier.encode(inputs)  # ids only: the tokenizer's working records are gone once it returns
    order = sorted(range(len(encoded)), key=lambda i: encoded[i].length)
    out = np.empty((len(encoded), classifier.manifest.num_outputs), dtype=np.float32)
    for start in range(0, len(order), EXPORT_BATCH_SIZE):
        batch: list[int] = []
        for index in order[start : start + EXPORT_BATCH_SIZE]:
            grown = len(batch) + 1
            if batch and (grown > limits.max_batch_size or grown * encoded[index].length > limits.max_batch_tokens):
                out[batch] = classifier.run([encoded[i] for i in batch])
                batch = []
            batch.append(index)
        out[batch] = classifier.run([encoded[i] for i in batch])
    return out


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
    limits: Limits = Limits(),
    *,
    variant: str | None = None,
    max_batch_tokens: int | None = None,
) -> Reverification | None:
    """The gate's verdict on this CPU, or None for a bundle exported without a reference set. ``variant`` names
    what runs when it is not the bundle's own variant (an engine's graph: ``openvino-bf16``). Its batches
    hold at most ``max_batch_tokens`` padded tokens (``limits.max_batch_tokens`` when None), as the service's
    do (MAX_BATCH_TOKENS). BadReferenceSet when the set cannot be run or the bundle's tolerances are laxer
    than ``limits.floor``."""
    if max_batch_tokens is not None:
        limits = replace(limits, max_batch_tokens=max_batch_tokens)
    thresholds = thresholds_of(manifest, limits.floor)
    if manifest.reference_set is None:
        if limits.require_reference_set:
            raise BadReferenceSet(
                f"{MANIFEST_NAME}: the bundle carries no reference set, and REQUIRE_REFERENCE_SET is on"
            )
        return None
    started = time.perf_counter()
    inputs, expected = read_reference(directory / manifest.reference_set, manifest, limits)
    report = compare(
        variant or manifest.variant,
        expected,
        batched_logits(classifier, inputs, limits),
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
