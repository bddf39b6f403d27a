"""Engines: the rule that picks one, the graph a quantized bundle carries for OpenVINO, the proof at load,
the fallback when the proof fails, and the two engines held together within the gate.

The CPU's flags are an input of the rule, so tests that need OpenVINO chosen pass them (``flags=``): the
machine running the tests may lack bf16 units, and OpenVINO then runs f32 where bf16 was asked, which the
rule would never choose but which runs and verifies the same way. Everything else is real: the default
bundle's graphs, OpenVINO, ONNX Runtime and the reference set.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess

import httpx
import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import numpy_helper

from service.core.backends.choice import MIN_OPENVINO, EngineUnavailable, choose
from service.core.backends.onnxruntime_backend import OnnxRuntimeBackend
from service.core.classifier import OnnxClassifier
from service.core.gate import Thresholds, compare
from service.core.loading import load_classifier
from service.core.manifest import ENGINE_GRAPHS, BundleError, hash_files, load_verified, read_manifest, write_manifest
from service.core.scoring import probabilities
from tests.conftest import ROOT, needs_export
from tests.helpers import SERVE_PYTHON, ServerProcess, free_port, require_serve_env

pytestmark = needs_export
BF16 = ["avx2", "avx512f", "avx512_bf16"]
AVX2 = ["avx2"]


@pytest.fixture(scope="module")
def manifest(default_bundle):
    return load_verified(default_bundle)


def test_a_quantized_bundle_carries_a_gated_graph_for_openvino(default_bundle, manifest):
    entry = manifest.engines["openvino"]
    assert manifest.variant == "int8-selective"
    assert entry["file"] == ENGINE_GRAPHS["openvino"] == "openvino.onnx"
    assert manifest.files["openvino.onnx"] == hash_files(default_bundle)["openvino.onnx"]
    report = entry["verification"]
    assert report["variant"] in ("openvino-bf16", "openvino-fp32") and report["passed"]
    assert report["agreement"] >= 0.99 and report["max_prob_diff"] <= 0.05 and report["failures"] == []
    # The plain fp32 graph with fp16-stored weights: OpenVINO cannot read ONNX Runtime's fused or int8 operators.
    graph = onnx.load(str(default_bundle / "openvino.onnx"), load_external_data=False)
    assert {node.domain for node in graph.graph.node} <= {"", "ai.onnx"}
    assert not {"QAttention", "DynamicQuantizeLinear", "MatMulInteger"} & {node.op_type for node in graph.graph.node}


def test_an_fp32_bundle_carries_none(tiny_bundle):
    """fp32 was asked to answer as the original does, to 1e-4 of a logit; bf16 does not."""
    manifest = read_manifest(tiny_bundle("bert"))
    assert manifest.variant == "fp32" and manifest.engines == {} and "openvino.onnx" not in manifest.files


@pytest.mark.parametrize(
    ("setting", "flags", "release", "expected", "reason"),
    [
        pytest.param(
            "auto", BF16, MIN_OPENVINO, "openvino", "auto: the CPU multiplies bf16 natively (avx512_bf16)", id="bf16"
        ),
        pytest.param(
            "auto",
            ["amx_bf16", "avx512_bf16"],
            (2027, 0),
            "openvino",
            "auto: the CPU multiplies bf16 natively (amx_bf16, avx512_bf16)",
            id="amx",
        ),
        pytest.param(
            "auto",
            AVX2,
            MIN_OPENVINO,
            "onnxruntime",
            "auto: the CPU has no bf16 matrix units (amx_bf16 or avx512_bf16), where OpenVINO would run f32",
            id="avx2",
        ),
        pytest.param(
            "auto",
            BF16,
            None,
            "onnxruntime",
            "auto: OpenVINO is not installed (requirements-openvino.txt)",
            id="not-installed",
        ),
        pytest.param(
            "auto",
            BF16,
            (2025, 4),
            "onnxruntime",
            "auto: OpenVINO 2025.4 is older than 2026.4, which answers correctly in bf16",
            id="too-old",
        ),
        pytest.param("onnxruntime", BF16, MIN_OPENVINO, "onnxruntime", "ENGINE=onnxruntime", id="explicit-ort"),
        pytest.param(
            "openvino",
            AVX2,
            MIN_OPENVINO,
            "openvino",
            "ENGINE=openvino; the CPU has no bf16 matrix units (amx_bf16 or avx512_bf16)",
            id="explicit-openvino",
        ),
    ],
)
def test_the_rule_reads_flags_and_versions(manifest, setting, flags, release, expected, reason):
    choice = choose(setting, manifest, flags, release)
    assert (choice.engine, choice.reason) == (expected, reason)
    assert choice.explicit == (setting != "auto")
    if expected == "openvino":
        assert choice.precision == ("bf16" if "avx512_bf16" in flags else "fp32")
    else:
        assert choice.precision == ""


def test_the_rule_needs_the_graph_and_a_reference_set(manifest):
    old = dataclasses.replace(
        manifest, engines={}, files={k: v for k, v in manifest.files.items() if k != "openvino.onnx"}
    )
    assert choose("auto", old, BF16, MIN_OPENVINO).reason == (
        "auto: the bundle carries no graph for OpenVINO (exported without it, before format 4, or left out of "
        "this copy)"
    )
    unproven = dataclasses.replace(
        manifest, reference_set=None, files={k: v for k, v in manifest.files.items() if k != "reference.json"}
    )
    assert choose("auto", unproven, BF16, MIN_OPENVINO).engine == "onnxruntime"
    with pytest.raises(EngineUnavailable, match="^ENGINE=openvino cannot run this bundle: the bundle carries no graph"):
        choose("openvino", old, BF16, MIN_OPENVINO)
    with pytest.raises(EngineUnavailable, match="OpenVINO is not installed"):
        choose("openvino", manifest, BF16, None)


def test_the_chosen_engine_is_proven_by_the_reference_set(default_bundle, manifest):
    loaded = load_classifier(default_bundle, manifest, flags=BF16)
    verdict = loaded.reverification
    assert loaded.fallback is None and loaded.classifier.backend.name == "openvino"
    assert verdict is not None and verdict.passed and verdict.engine == "openvino"
    assert verdict.inputs == manifest.verification["texts"] and verdict.agreement >= 0.99
    assert verdict.precision == loaded.classifier.backend.precision
    assert loaded.engine() == {
        "engine": "openvino",
        "version": loaded.engine()["version"],
        "precision": verdict.precision,
        "file": "openvino.onnx",
        "reason": "auto: the CPU multiplies bf16 natively (avx512_bf16)",
        "fallback": None,
    }
    assert loaded.engine()["version"].startswith("2026.")
    ort = load_classifier(default_bundle, manifest, flags=AVX2)
    assert ort.classifier.backend.name == "onnxruntime" and ort.reverification.engine == "onnxruntime"
    assert ort.engine()["file"] == "model.onnx" and ort.engine()["precision"] == "int8"


def wrong_openvino_graph(bundle, target):
    """A copy of ``bundle`` whose OpenVINO graph answers wrongly (the classifier head's weights negated), its
    hashes rewritten to match: a graph that cannot pass the reference set."""
    shutil.copytree(bundle, target)
    path = target / "openvino.onnx"
    model = onnx.load(str(path))
    labels = len(read_manifest(target).id2label)
    head = next(init for init in model.graph.initializer if list(init.dims)[-1:] == [labels] and len(init.dims) == 2)
    head.CopyFrom(numpy_helper.from_array(-numpy_helper.to_array(head), head.name))
    onnx.save(model, str(path))
    write_manifest(target, dataclasses.replace(read_manifest(target), files=hash_files(target)))
    return target


@pytest.fixture(scope="module")
def wrong(default_bundle, tmp_path_factory):
    return wrong_openvino_graph(default_bundle, tmp_path_factory.mktemp("wrong") / "bundle")


def test_an_engine_that_fails_the_reference_set_falls_back_to_onnx_runtime(wrong):
    loaded = load_classifier(wrong, load_verified(wrong), flags=BF16)
    assert loaded.classifier.backend.name == "onnxruntime"
    assert loaded.reverification is not None and loaded.reverification.passed
    assert loaded.fallback is not None and loaded.fallback.startswith(
        "OpenVINO failed its re-verification: top-1 agreement "
    )
    assert loaded.engine()["reason"] == "auto: the CPU multiplies bf16 natively (avx512_bf16)"
    # Named outright, it is never swapped: its failed verdict is the caller's to refuse.
    explicit = load_classifier(wrong, load_verified(wrong), engine="openvino", flags=BF16)
    assert explicit.classifier.backend.name == "openvino" and not explicit.reverification.passed


def test_an_explicit_openvino_that_fails_refuses_the_bundle(wrong):
    require_serve_env()
    done = subprocess.run(
        [
            str(SERVE_PYTHON),
            "-m",
            "service",
            "--bundle",
            str(wrong),
            "--port",
            str(free_port()),
            "--engine",
            "openvino",
        ],
        cwd=ROOT,
        capture_output=True,
        timeout=300,
    )
    err = done.stderr.decode()
    assert done.returncode == 5, err
    assert "model failed its re-verification on this CPU: top-1 agreement " in err and "Traceback" not in err


def test_a_server_names_its_engine_everywhere(default_bundle):
    """/info, the v2 metadata, the metrics and the start-up log say which engine runs and why."""
    require_serve_env()
    server = ServerProcess(default_bundle, env={"ENGINE": "onnxruntime"})
    try:
        server.wait_ready()
        info = httpx.get(server.url + "/info").json()
        expected = {
            "engine": "onnxruntime",
            "version": info["versions"]["serve"]["onnxruntime"],
            "precision": "int8",
            "file": "model.onnx",
            "reason": "ENGINE=onnxruntime",
            "fallback": None,
        }
        assert info["engine"] == expected
        assert info["reverification"]["engine"] == "onnxruntime" and info["reverification"]["passed"]
        metadata = httpx.get(server.url + "/v2/models/classifier").json()
        assert metadata["parameters"]["engine"] == expected
        metrics = httpx.get(server.url + "/metrics").text
        assert 'classifier_engine_info{engine="onnxruntime",model="classifier",precision="int8"} 1.0' in metrics
        ready = next(json.loads(line) for line in server.log_with('"msg": "ready"').splitlines() if '"ready"' in line)
        assert ready["engine"] == expected
    finally:
        server.stop()


def test_a_fallback_is_logged_counted_and_shown(wrong, monkeypatch):
    """The server's own auto choice, on a CPU whose flags say bf16 (patched in: the rule's input)."""
    from starlette.testclient import TestClient

    from service.app import create_app
    from service.core import loading
    from service.settings import Settings
    from tests.helpers import wait_app_ready

    monkeypatch.setattr(loading, "cpu_flags", lambda: list(BF16))
    with TestClient(create_app(Settings(bundle=str(wrong)))) as client:
        wait_app_ready(client)
        engine = client.get("/info").json()["engine"]
        assert engine["engine"] == "onnxruntime" and engine["reason"].startswith("auto: the CPU multiplies bf16")
        assert engine["fallback"].startswith("OpenVINO failed its re-verification: top-1 agreement ")
        metrics = client.get("/metrics").text
        assert 'classifier_engine_fallbacks_total{engine="openvino",model="classifier",reason="verification"} 1.0' in (
            metrics
        )
        answer = client.post("/predict", json={"inputs": "connect me to a human"}).json()
        assert answer[0]["label"] == "connect_to_human"


@pytest.fixture(scope="module")
def engines(default_bundle, manifest):
    ort = OnnxClassifier.from_bundle(default_bundle)
    openvino = load_classifier(default_bundle, manifest, engine="openvino", flags=BF16).classifier
    assert isinstance(ort.backend, OnnxRuntimeBackend) and openvino.backend.name == "openvino"
    return ort, openvino


WORDS = [
    "balance",
    "transfer",
    "human",
    "weather",
    "bot",
    "name",
    "card",
    "lost",
    "what",
    "is",
    "my",
    "the",
    "how",
    "to",
]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    texts=st.lists(st.lists(st.sampled_from(WORDS), min_size=1, max_size=40).map(" ".join), min_size=1, max_size=40),
    batch=st.integers(min_value=1, max_value=40),
)
def test_the_two_engines_agree_within_the_gate_whatever_the_inputs_and_batches(engines, texts, batch):
    """Each engine lies within the gate of the original on the reference set; on any input, so within twice
    the tolerance of each other, and on every input whose margin exceeds that, on the label."""
    ort, openvino = engines
    tolerance = 2 * Thresholds().int8_max_prob_diff
    a = probabilities(ort.logits(texts, batch_size=batch).astype(np.float64), "single_label_classification")
    b = probabilities(openvino.logits(texts, batch_size=batch).astype(np.float64), "single_label_classification")
    assert np.abs(a - b).max() <= tolerance
    top2 = np.sort(a, axis=1)[:, -2:]
    clear = top2[:, 1] - top2[:, 0] > 2 * tolerance
    assert (a.argmax(axis=1) == b.argmax(axis=1))[clear].all()


def test_openvino_answers_alone_as_in_a_batch_within_the_gate(engines, default_bundle):
    """A text's answer depends a little on its batch (padding changes the kernels' blocking; dynamic int8 also
    picks its scales per batch): within the gate, a label moving only on a near-tie. The figures for both
    engines are in docs/performance.md (bench/engines.py)."""
    _, openvino = engines
    texts = json.loads((default_bundle / "reference.json").read_text())["inputs"]
    alone = np.concatenate([openvino.logits([text]) for text in texts])
    together = openvino.logits(texts, batch_size=32)
    report = compare("openvino-bf16", alone, together, "single_label_classification")
    assert report.passed, report.failures
    probs = probabilities(alone.astype(np.float64), "single_label_classification")
    top2 = np.sort(probs, axis=1)[:, -2:]
    moved = alone.argmax(axis=1) != together.argmax(axis=1)
    assert (top2[moved, 1] - top2[moved, 0] <= 2 * report.max_prob_diff).all()


def test_a_copy_without_the_openvino_graph_is_served_by_onnx_runtime(default_bundle, tmp_path):
    """An image without OpenVINO leaves its graph out; every other file is still hash-checked."""
    copy = tmp_path / "bundle"
    shutil.copytree(default_bundle, copy)
    (copy / "openvino.onnx").unlink()
    manifest = load_verified(copy)
    loaded = load_classifier(copy, manifest, flags=BF16)
    assert loaded.classifier.backend.name == "onnxruntime" and loaded.reverification.passed
    assert loaded.choice.reason.startswith("auto: the bundle carries no graph for OpenVINO")
    with pytest.raises(EngineUnavailable):
        load_classifier(copy, manifest, engine="openvino", flags=BF16)
    require_serve_env()
    refused = subprocess.run(
        [SERVE_PYTHON, "-m", "service", "--bundle", copy, "--port", str(free_port()), "--engine", "openvino"],
        cwd=ROOT,
        capture_output=True,
        timeout=120,
    )
    assert refused.returncode == 2
    assert refused.stderr.decode() == (
        "error: ENGINE=openvino cannot run this bundle: the bundle carries no graph for OpenVINO (exported without "
        "it, before format 4, or left out of this copy)\n"
    )
    (copy / "model.onnx").unlink()
    with pytest.raises(BundleError, match="model.onnx: missing"):
        load_verified(copy)


@pytest.mark.parametrize(
    "variant, precision",
    [("fp32", "fp32"), ("fp32-optimized", "fp32"), ("int8-selective", "int8"), ("int4-weights", "int8")],
)
def test_onnx_runtime_reports_the_arithmetic_each_variant_runs_in(tiny_bundle, variant, precision):
    """int4 weights are unpacked for int8 arithmetic (MatMulNBits at accuracy level 4), not fp32."""
    assert OnnxRuntimeBackend(tiny_bundle("bert") / "model.onnx", variant=variant).precision == precision
