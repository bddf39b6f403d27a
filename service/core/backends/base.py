"""The interface between the classifier and whatever runs its graph (TEI's ``Backend``, Triton's backends)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Protocol

import numpy as np

ONNXRUNTIME = "onnxruntime"
OPENVINO = "openvino"
ENGINES = (ONNXRUNTIME, OPENVINO)


class Backend(Protocol):
    """Runs one graph: ``input_names`` arrays in, logits out. Safe to call from several threads at once."""

    name: str
    input_names: list[str]

    @property
    def precision(self) -> str:
        """The arithmetic the matrix products run in: ``fp32``, ``bf16``, or ``int8`` for quantized graphs."""
        ...

    def run(self, feeds: dict[str, np.ndarray], *, large: bool = False) -> np.ndarray:
        """Logits for one padded batch. ``large`` says the batch is big enough that memory it grows should be
        handed back afterwards."""
        ...

    def warm_up(self, batches: list[dict[str, np.ndarray]]) -> None:
        """Run each batch once: first runs allocate memory (and, for OpenVINO, kernels per shape)."""
        ...

    def describe(self) -> dict[str, Any]:
        """The backend, its version and precision, and the file it runs: for /info, logs and metrics."""
        ...


class RunsItsGraph:
    """What every backend does alike, given ``run``, its ``precision`` and ``version``: warming up is running
    each batch once, and the description names the engine and the file."""

    name: str
    version: str
    model_path: Path

    @property
    def precision(self) -> str:
        raise NotImplementedError

    def run(self, feeds: dict[str, np.ndarray], *, large: bool = False) -> np.ndarray:
        raise NotImplementedError

    def warm_up(self, batches: list[dict[str, np.ndarray]]) -> None:
        for feeds in batches:
            self.run(feeds)

    def describe(self) -> dict[str, Any]:
        return {
            "engine": self.name,
            "version": self.version,
            "precision": self.precision,
            "file": os.path.basename(self.model_path),
        }
