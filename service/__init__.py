"""Slim inference service for ONNX text-classifier bundles (no torch)."""

NAME = "onnx-text-classifier"
__version__ = "0.2.0"  # kept equal to pyproject.toml's version by a test
