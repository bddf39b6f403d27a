"""Slim inference service for ONNX text-classifier bundles (no torch)."""
