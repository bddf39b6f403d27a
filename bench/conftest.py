"""Fixtures for the in-process benchmarks.

Every variant of one model is exported once into BENCH_DIR (default
bench/.cache/default) with ``--keep-variants``; BENCH_MODEL picks another
checkpoint (the CI smoke run uses a tiny one).
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

from service.core.classifier import OnnxClassifier
from service.core.manifest import read_manifest

ROOT = Path(__file__).resolve().parents[1]
BENCH_DIR = Path(os.environ.get("BENCH_DIR", ROOT / "bench" / ".cache" / "default"))
BENCH_MODEL = os.environ.get("BENCH_MODEL") or None
VARIANTS = ("fp32", "fp32-optimized", "int8", "int8-selective")
HAS_TORCH = importlib.util.find_spec("torch") is not None


@pytest.fixture(scope="session")
def bench_bundle() -> Path:
    bundle = BENCH_DIR / "bundle"
    if not (BENCH_DIR / "variants" / "int8-selective.onnx").exists():
        from export.pipeline import export_bundle

        export_bundle(out=bundle, model=BENCH_MODEL, force=True, keep_variants=BENCH_DIR / "variants")
    return bundle


@pytest.fixture(scope="session")
def classifiers(bench_bundle) -> dict[str, OnnxClassifier]:
    manifest = read_manifest(bench_bundle)
    return {
        variant: OnnxClassifier(BENCH_DIR / "variants" / f"{variant}.onnx", bench_bundle / "tokenizer.json", manifest)
        for variant in VARIANTS
    }


@pytest.fixture(scope="session")
def original():
    if not HAS_TORCH:
        # The benchmarks also run where only the serving packages are installed.
        pytest.skip("the PyTorch original needs the export environment (requirements-export.txt)")
    from export.sources import load_source

    return load_source(BENCH_MODEL).reference
