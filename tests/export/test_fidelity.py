"""ONNX fp32 logits equal the original torch model's, for every supported family.

Texts come from Hypothesis: unicode, emoji, whitespace, empty-ish and far beyond
the max length, run through the bundle's tokenizer (the serving path) on one side
and the original Hugging Face tokenizer and model on the other.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import needs_export
from tests.tiny_models import FAMILIES, MAX_LENGTH

pytestmark = needs_export

texts = st.one_of(
    st.text(st.characters(blacklist_categories=("Cs",)), max_size=80),
    st.text(" \t\n\u00a0\u3000", max_size=10),
    st.text("abcdefghij 😀é中", min_size=1, max_size=12).map(lambda t: t * 40),
    st.sampled_from(["", " ", "hello world", "HELLO World!!", "🙂" * 200]),
)


@pytest.fixture(scope="module")
def pair(tiny_checkpoint, tiny_bundle):
    from export.sources import load_source
    from service.core.classifier import OnnxClassifier

    cache = {}

    def get(family: str, multi_label: bool = False):
        key = (family, multi_label)
        if key not in cache:
            source = load_source(str(tiny_checkpoint(family, multi_label)))
            cache[key] = (source, OnnxClassifier.from_bundle(tiny_bundle(family, multi_label)))
        return cache[key]

    return get


@pytest.mark.parametrize("family", sorted(FAMILIES))
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batch=st.lists(texts, min_size=1, max_size=4))
def test_onnx_matches_torch(pair, family, batch):
    source, classifier = pair(family)
    expected = source.reference(batch)
    actual = classifier.logits(batch)
    np.testing.assert_allclose(actual, expected, atol=1e-4, rtol=0)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batch=st.lists(texts, min_size=1, max_size=4))
def test_multi_label_onnx_matches_torch(pair, batch):
    source, classifier = pair("bert", multi_label=True)
    assert classifier.manifest.problem_type == "multi_label_classification"
    np.testing.assert_allclose(classifier.logits(batch), source.reference(batch), atol=1e-4, rtol=0)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_long_input_is_truncated_like_the_original(pair, family):
    source, classifier = pair(family)
    long_text = "hello world " * 200
    (encoded,) = classifier.encode([long_text], count_full=True)
    assert encoded.length == MAX_LENGTH
    assert encoded.full_length > MAX_LENGTH
    np.testing.assert_allclose(classifier.logits([long_text]), source.reference([long_text]), atol=1e-4, rtol=0)


def test_inputs_follow_the_architecture(tiny_bundle):
    from service.core.manifest import read_manifest

    assert read_manifest(tiny_bundle("distilbert")).input_names == ["input_ids", "attention_mask"]
    assert read_manifest(tiny_bundle("bert")).input_names == ["input_ids", "attention_mask", "token_type_ids"]


def test_modernbert_passes_the_gate_in_every_variant(tiny_checkpoint, tmp_path, capsys):
    from export.cli import main
    from service.core.cpu import cpu_flags

    out = tmp_path / "b"
    assert main(["--model", str(tiny_checkpoint("modernbert")), "--out", str(out), "--quiet"]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines()[1:-1]]
    # The chosen variant is int8, so the bundle also carries the fp32 graph for OpenVINO, gated on OpenVINO
    # in bf16 where this CPU has bf16 units and in f32 elsewhere.
    precision = "bf16" if {"avx512_bf16", "amx_bf16"} & set(cpu_flags()) else "fp32"
    assert [(row[0], "passed" in row) for row in rows] == [
        ("fp32", True),
        ("fp32-optimized", True),
        ("int8", True),
        ("int8-selective", True),
        (f"openvino-{precision}", True),
    ]
    assert main(["verify", str(out)]) == 0
