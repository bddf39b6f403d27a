"""The graph a bundle carries for OpenVINO, gated like every variant.

Written when the chosen variant is quantized: ONNX Runtime then answers within the int8 tolerances anyway,
and OpenVINO in bf16 answers within them too, faster on CPUs with bf16 units. A bundle whose variant is
fp32 was asked to answer as the original does, to 1e-4 of a logit, which bf16 does not: it carries none.

ONNX Runtime's fused and quantized operators (``Attention``, ``QAttention``, ``EmbedLayerNormalization``)
are not ONNX, so OpenVINO cannot read the fp32-optimized or int8 graphs. It gets the plain fp32 graph,
its large weights stored as fp16 (``variants.store_half``): half the bytes, and no loss for bf16
arithmetic, which keeps fewer mantissa bits than fp16. The gate runs it on OpenVINO, in bf16 where this
CPU multiplies bf16 natively and in f32 elsewhere, under the int8 tolerances
(``service.core.gate.approximate``); the service runs the reference set on it again on its own CPU.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from export import variants as V
from service.core.backends.choice import MIN_OPENVINO, installed_openvino
from service.core.classifier import OnnxClassifier, TextInput
from service.core.cpu import BF16_FLAGS, cpu_flags
from service.core.gate import VariantReport
from service.core.manifest import ENGINE_GRAPHS, Manifest

OPENVINO = "openvino"


def openvino_unavailable() -> str:
    """Why this export cannot build and gate a graph for OpenVINO, or ""."""
    release = installed_openvino()
    if release is None:
        return "OpenVINO is not installed in the export environment (requirements-openvino.txt)"
    if release < MIN_OPENVINO:
        return f"OpenVINO {'.'.join(map(str, release))} is older than {'.'.join(map(str, MIN_OPENVINO))}"
    return ""


def openvino_graph(plain_fp32: Path, work: Path) -> Path:
    """The graph OpenVINO runs: a copy of the plain fp32 graph with fp16-stored weights."""
    target = work / ENGINE_GRAPHS[OPENVINO]
    shutil.copyfile(plain_fp32, target)
    return V.store_half(target)


def openvino_logits(
    graph: Path, tokenizer_path: Path, draft: Manifest, texts: Sequence[TextInput]
) -> tuple[str, np.ndarray]:
    """``graph`` run on OpenVINO (bf16 where this CPU has bf16 units, else f32): the name the gate reports it
    under (``openvino-bf16``) and its logits for ``texts``."""
    from service.core.backends.openvino_backend import OpenVinoBackend

    precision = "bf16" if set(BF16_FLAGS) & set(cpu_flags()) else "fp32"
    backend = OpenVinoBackend(graph, precision=precision)
    classifier = OnnxClassifier(graph, tokenizer_path, draft, backend=backend)
    return f"openvino-{backend.precision}", classifier.logits(texts)


def engine_entry(report: VariantReport) -> dict[str, object]:
    """The manifest's ``engines.openvino``: the file OpenVINO runs, and the gate's report on it."""
    return {
        "file": ENGINE_GRAPHS[OPENVINO],
        "graph": "fp32",
        "verification": report.to_dict(),
    }
