"""Load a bundle for serving: pick its engine by rule, warm it up, and prove it with the reference set.

The engine ``ENGINE=auto`` picks (``service.core.backends.choice``) must pass the bundle's reference set on
this CPU before it serves. When it cannot (it fails to load, or its answers fall outside the gate), ONNX
Runtime serves instead: one log line says why, and the returned ``Loaded`` carries the reason for /info
and the ``classifier_engine_fallbacks`` metric. An engine named outright is never swapped: its verdict is
returned for the caller to refuse or serve as ON_FAILED_VERIFICATION says. The service, the bulk command,
Ray Data and shadows all load through here, so the same machine always runs a bundle the same way.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from service.core.backends.base import ONNXRUNTIME, OPENVINO
from service.core.backends.choice import Choice, choose, installed_openvino
from service.core.classifier import Encoded, OnnxClassifier
from service.core.cpu import cpu_flags
from service.core.manifest import MODEL_FILE, TOKENIZER_FILE, Manifest, present_engines
from service.core.reverify import Limits, Reverification, reverify

NO_LIMITS_SET = Limits()  # the defaults of the settings, for callers that have none (bulk, Ray Data)

log = logging.getLogger("service.core.loading")
WARMUP_TEXTS = ("warm up", "warm up with a somewhat longer text " * 8)
# First runs allocate arenas and, for OpenVINO, shape-specific kernels: pay for them before traffic.
WARMUP_BATCHES = (1, 8)


@dataclass(frozen=True)
class Loaded:
    classifier: OnnxClassifier
    choice: Choice
    reverification: Reverification | None
    fallback: str | None = None  # why the chosen engine is not the one serving, in one line

    def engine(self) -> dict[str, Any]:
        """What /info, the v2 metadata and the start-up log say about the engine."""
        return {
            **self.classifier.backend.describe(),
            "reason": self.choice.reason,
            "fallback": self.fallback,
        }


def load_classifier(
    bundle: Path,
    manifest: Manifest,
    *,
    engine: str = "auto",
    intra_op_threads: int = 0,
    inter_op_threads: int = 1,
    flags: list[str] | None = None,
    openvino: tuple[int, int] | None | bool = True,
    max_batch_tokens: int | None = None,
    limits: Limits = NO_LIMITS_SET,
) -> Loaded:
    """The bundle's classifier on the engine the rule picks, warmed up and re-verified (in batches of at most
    ``max_batch_tokens`` padded tokens). ``flags`` and ``openvino`` (True: what is installed) stand for this
    CPU's flags and OpenVINO's release. ``limits`` bound the reference set and set the gate's floor
    (``service.core.reverify``)."""
    release = installed_openvino() if openvino is True else openvino or None
    choice = choose(engine, present_engines(bundle, manifest), cpu_flags() if flags is None else flags, release)
    fallback = None
    if choice.engine == OPENVINO:
        try:
            classifier = _openvino(bundle, manifest, choice.precision, intra_op_threads)
            verdict = reverify(
                classifier,
                bundle,
                manifest,
                limits,
                variant=f"openvino-{classifier.backend.precision}",
                max_batch_tokens=max_batch_tokens,
            )
        except Exception as exc:
            if choice.explicit:
                raise
            fallback = f"OpenVINO failed to load: {str(exc).strip().splitlines()[0] if str(exc).strip() else exc!r}"
        else:
            if choice.explicit or verdict is None or verdict.passed:
                return Loaded(classifier, choice, verdict)
            fallback = "OpenVINO failed its re-verification: " + "; ".join(verdict.failures)
        log.warning(f"engine: {fallback}; ONNX Runtime serves instead")
    classifier = OnnxClassifier(
        bundle / MODEL_FILE,
        bundle / TOKENIZER_FILE,
        manifest,
        intra_op_threads=intra_op_threads,
        inter_op_threads=inter_op_threads,
    )
    warm_up(classifier)
    if fallback is not None:
        choice = Choice(ONNXRUNTIME, "", choice.reason, explicit=False)
    verdict = reverify(classifier, bundle, manifest, limits, max_batch_tokens=max_batch_tokens)
    return Loaded(classifier, choice, verdict, fallback)


def _openvino(bundle: Path, manifest: Manifest, precision: str, threads: int) -> OnnxClassifier:
    from service.core.backends.openvino_backend import OpenVinoBackend

    path = bundle / str(manifest.engine_file(OPENVINO))
    backend = OpenVinoBackend(path, precision=precision, threads=threads)
    classifier = OnnxClassifier(path, bundle / TOKENIZER_FILE, manifest, backend=backend)
    warm_up(classifier)
    return classifier


def warm_up(classifier: OnnxClassifier) -> None:
    """Run the shapes a server sees first (one short query, a small batch) before taking traffic."""
    texts = [(text, text) for text in WARMUP_TEXTS] if classifier.manifest.is_pair else list(WARMUP_TEXTS)
    encoded: list[Encoded] = classifier.encode(texts)
    classifier.backend.warm_up(
        [classifier.feeds([encoded[i % len(encoded)] for i in range(size)]) for size in WARMUP_BATCHES]
    )
