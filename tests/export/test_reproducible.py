"""The same model and flags give the same bundle: byte for byte, whichever run or machine speed."""

from __future__ import annotations

import pytest

from export.pipeline import AUTO_ORDER, choose
from service.core.gate import VariantReport
from tests.conftest import needs_export

pytestmark = needs_export


def test_two_exports_give_the_same_bytes(tiny_checkpoint, tmp_path):
    from export.pipeline import export_bundle

    results = [
        export_bundle(out=tmp_path / name, model=str(tiny_checkpoint("bert")), variant="auto") for name in ("a", "b")
    ]
    assert results[0].manifest.variant == results[1].manifest.variant
    for name in ("bundle.json", "model.onnx", "tokenizer.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    assert "timings" not in results[0].manifest.verification
    assert [step for step, _ in results[0].steps][0] == "loading " + str(tiny_checkpoint("bert"))


def report(variant: str, size: int) -> VariantReport:
    return VariantReport(variant, 10, 0.0, 0.0, 1.0, 10, 1.0, size_bytes=size)


@pytest.mark.parametrize(
    "sizes, chosen",
    [
        pytest.param({"fp32": 90, "fp32-optimized": 90, "int8-selective": 31}, "int8-selective", id="smallest"),
        pytest.param({"fp32": 90, "fp32-optimized": 90}, "fp32-optimized", id="fused-at-equal-size"),
        pytest.param({"fp32": 90, "int8": 23, "int8-selective": 23}, "int8", id="blind-int8-passed"),
        pytest.param({"fp32": 90}, "fp32", id="only-fp32"),
        pytest.param({"int8-weights": 26, "int4-weights": 14}, "int4-weights", id="weight-only"),
    ],
)
def test_auto_keeps_the_smallest_that_passed_by_a_fixed_rule(sizes, chosen):
    assert set(AUTO_ORDER) == {"fp32", "fp32-optimized", "int8", "int8-selective", "int8-weights", "int4-weights"}
    assert choose([report(variant, size) for variant, size in sizes.items()]) == chosen
