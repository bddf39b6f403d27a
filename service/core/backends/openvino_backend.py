"""OpenVINO on the CPU: the fp32 graph a bundle carries for it, compiled in bf16 where the CPU multiplies
bf16 natively (``cpu.BF16_FLAGS``), else in f32.

Only imported when chosen: OpenVINO is optional (requirements-openvino.txt). It reads plain ONNX operators
only, not ONNX Runtime's fused or quantized ones, hence a graph of its own in the bundle.
"""

from __future__ import annotations

import queue
from pathlib import Path

import numpy as np
import openvino as ov

from service.core.backends.base import OPENVINO, RunsItsGraph
from service.core.cpu import available_cores

# Releases before this one answered wrongly in bf16 on the default model (34.8% top-1 agreement with 2025.4.1).
MIN_VERSION = (2026, 4)
# OpenVINO keeps the kernels it prepared for each input shape, 5,000 shapes by default: about 1 MiB each
# for the default model, so a few hundred distinct (batch, length) shapes took the process from 217 to
# 918 MiB. Keeping the most recent few bounds that; a shape outside them costs a new preparation.
RUNTIME_CACHE_SHAPES = 64
PRECISIONS = {"bf16": "bf16", "fp32": "f32"}


class OpenVinoBackend(RunsItsGraph):
    name = OPENVINO
    version = ov.get_version().split("-")[0]

    def __init__(self, model_path: Path, *, precision: str = "bf16", threads: int = 0) -> None:
        self.model_path = Path(model_path)
        core = ov.Core()
        model = core.read_model(str(model_path))
        self.input_names = [port.get_any_name() for port in model.inputs]
        self.compiled = core.compile_model(
            model,
            "CPU",
            {
                "INFERENCE_PRECISION_HINT": PRECISIONS[precision],
                "PERFORMANCE_HINT": "LATENCY",
                "INFERENCE_NUM_THREADS": threads or available_cores(),
                # Pinned threads would fight the event loop and the tokenizer for the cores they hold.
                "ENABLE_CPU_PINNING": False,
                "CPU_RUNTIME_CACHE_CAPACITY": RUNTIME_CACHE_SHAPES,
            },
        )
        # What the plugin settled on: a CPU without bf16 units runs f32 whatever was asked.
        settled = str(self.compiled.get_property("INFERENCE_PRECISION_HINT"))
        self._precision = "bf16" if "bf16" in settled or "bfloat16" in settled else "fp32"
        # One infer request runs one batch at a time; callers on other threads take another.
        self._requests: queue.SimpleQueue[ov.InferRequest] = queue.SimpleQueue()

    @property
    def precision(self) -> str:
        return self._precision

    def run(self, feeds: dict[str, np.ndarray], *, large: bool = False) -> np.ndarray:
        try:
            request = self._requests.get_nowait()
        except queue.Empty:
            request = self.compiled.create_infer_request()
        try:
            result = request.infer(feeds)
            return np.array(result["logits"], dtype=np.float32)  # a copy: the request reuses its buffers
        finally:
            self._requests.put(request)
