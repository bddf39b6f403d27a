"""Slim inference service for ONNX text-classifier bundles (no torch)."""

import os

NAME = "onnx-text-classifier"
__version__ = "0.2.0"  # kept equal to pyproject.toml's version by a test

# ONNX Runtime's builds upload usage telemetry by default: a thread that resolves and calls a
# collector on the internet from the serving process. Set before onnxruntime is imported by
# anything of ours; an explicit ORT_DISABLE_TELEMETRY=0 still turns it back on.
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
