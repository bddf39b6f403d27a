"""A bundle's reference set, run again where it is served: a graph changed after export is caught even when
its hashes were rewritten to match, in process and by a real server, single bundle or repository."""

from __future__ import annotations

import dataclasses
import shutil
import subprocess

import httpx
import pytest

from service.core.classifier import OnnxClassifier
from service.core.manifest import REFERENCE_FILE, hash_files, load_verified, read_manifest, write_manifest
from service.core.reverify import CPU_FLAGS, reverify
from tests.conftest import ROOT, needs_export
from tests.helpers import SERVE_PYTHON, ServerProcess, free_port, require_serve_env

pytestmark = needs_export


def tampered(bundle, target):
    """A copy of ``bundle`` whose graph answers differently, its hashes rewritten to match: it passes the
    integrity check, as a bundle edited by hand or swapped for another variant would."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    shutil.copytree(bundle, target)
    model = onnx.load(str(target / "model.onnx"))
    largest = max(model.graph.initializer, key=lambda init: int(np.prod(init.dims)))
    largest.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(largest) * 1.05, largest.name))
    onnx.save(model, str(target / "model.onnx"))
    write_manifest(target, dataclasses.replace(read_manifest(target), files=hash_files(target)))
    load_verified(target)  # the hashes hold
    return target


def classify(bundle):
    return OnnxClassifier.from_bundle(bundle), load_verified(bundle)


def test_a_bundle_carries_its_reference_set_and_passes_on_this_cpu(tiny_bundle):
    bundle = tiny_bundle("bert")
    manifest = read_manifest(bundle)
    assert manifest.reference_set == REFERENCE_FILE and REFERENCE_FILE in manifest.files
    verdict = reverify(OnnxClassifier.from_bundle(bundle), bundle, manifest)
    assert verdict is not None and verdict.passed and verdict.failures == []
    assert verdict.inputs == manifest.verification["texts"]
    assert verdict.agreement == 1.0 and verdict.max_logit_diff <= 1e-4
    assert set(verdict.cpu_flags) <= set(CPU_FLAGS)


def test_reverification_batches_within_max_batch_tokens(tiny_bundle):
    """A large model's reference run must not take the service past what MAX_BATCH_TOKENS allows."""
    bundle = tiny_bundle("bert")
    classifier, manifest = classify(bundle)
    padded = []
    run = classifier.run

    def counting(batch):
        padded.append(len(batch) * max(item.length for item in batch))
        return run(batch)

    classifier.run = counting  # type: ignore[method-assign]
    verdict = reverify(classifier, bundle, manifest, max_batch_tokens=64)
    assert verdict is not None and verdict.passed
    longest = classifier.max_length
    assert max(padded) <= max(64, longest) and len(padded) > manifest.verification["texts"] // 32
    single = [size for size in padded if size > 64]
    assert all(size <= longest for size in single)  # only a text longer than the budget runs alone over it


def test_a_changed_graph_with_rewritten_hashes_fails(tiny_bundle, tmp_path):
    bundle = tampered(tiny_bundle("bert"), tmp_path / "tampered")
    verdict = reverify(OnnxClassifier.from_bundle(bundle), bundle, read_manifest(bundle))
    assert verdict is not None and not verdict.passed
    assert verdict.failures[0].startswith("max |logit difference| ") and verdict.failures[0].endswith(" > 1e-04")


def test_without_a_reference_set_there_is_nothing_to_run(tiny_checkpoint, tmp_path):
    from export.pipeline import export_bundle

    result = export_bundle(out=tmp_path / "b", model=str(tiny_checkpoint("bert")), variant="fp32", reference_set=False)
    assert result.manifest.reference_set is None and sorted(result.manifest.files) == ["model.onnx", "tokenizer.json"]
    assert reverify(OnnxClassifier.from_bundle(tmp_path / "b"), tmp_path / "b", result.manifest) is None


def test_a_single_bundle_that_fails_stops_the_server_with_one_line(tiny_bundle, tmp_path):
    require_serve_env()
    bundle = tampered(tiny_bundle("bert"), tmp_path / "tampered")
    proc = subprocess.run(
        [str(SERVE_PYTHON), "-m", "service", "--bundle", str(bundle), "--port", str(free_port())],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 5
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: {bundle}: model failed its re-verification on this CPU: max |logit difference| ")
    assert "Traceback" not in proc.stderr


def test_warn_serves_it_and_says_so(tiny_bundle, tmp_path):
    require_serve_env()
    server = ServerProcess(tampered(tiny_bundle("bert"), tmp_path / "tampered"), "--on-failed-verification", "warn")
    try:
        server.wait_ready()
        info = httpx.get(server.url + "/info").json()
        metrics = httpx.get(server.url + "/metrics").text
        metadata = httpx.get(server.url + "/v2/models/classifier").json()
    finally:
        server.stop()
    assert info["reverification"]["passed"] is False and info["reverification"]["failures"]
    assert metadata["parameters"]["reverification"] == info["reverification"]
    assert 'classifier_verified{model="classifier"} 0.0' in metrics


def test_a_repository_keeps_the_version_that_passed(tiny_bundle, tmp_path):
    require_serve_env()
    repository = tmp_path / "repository"
    shutil.copytree(tiny_bundle("bert"), repository / "intent" / "1")
    tampered(tiny_bundle("bert"), repository / "intent" / "2")
    server = ServerProcess(None, "--repository", str(repository))
    try:
        server.wait_ready()
        rows = httpx.get(server.url + "/v2/models").json()
        info = httpx.get(server.url + "/info").json()
        metrics = httpx.get(server.url + "/metrics").text
    finally:
        server.stop()
    assert [(row["version"], row["state"]) for row in rows] == [("2", "UNAVAILABLE"), ("1", "READY")]
    assert rows[0]["reason"].startswith("model failed its re-verification on this CPU: max |logit difference| ")
    assert info["reverification"]["passed"] is True and info["reverification"]["inputs"] > 0
    assert 'classifier_verified{model="intent"} 1.0' in metrics
    assert 'classifier_verified_agreement{model="intent"} 1.0' in metrics


@pytest.mark.parametrize("flag, value", [("--on-failed-verification", "maybe")])
def test_the_setting_takes_refuse_or_warn(flag, value):
    from service.settings import SettingsError, load_settings

    with pytest.raises(SettingsError, match="--on-failed-verification must be refuse or warn, got 'maybe'"):
        load_settings([flag, value], environ={})
