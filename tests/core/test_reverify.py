"""A bundle's reference set, run again where it is served: a graph changed after export is caught even when
its hashes were rewritten to match, in process and by a real server, single bundle or repository."""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
from pathlib import Path

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


def with_reference(bundle, target, content: bytes | None = None, **changes):
    """A copy of ``bundle`` whose reference.json holds ``content`` (or its data with ``changes``), hashes
    rewritten to match, as a bundle edited by hand would be."""
    import json

    shutil.copytree(bundle, target)
    path = target / REFERENCE_FILE
    if content is None:
        data = json.loads(path.read_text())
        data.update(changes)
        content = json.dumps({key: value for key, value in data.items() if value is not None}).encode()
    path.write_bytes(content)
    write_manifest(target, dataclasses.replace(read_manifest(target), files=hash_files(target)))
    return target


@pytest.mark.parametrize(
    "content, changes, message",
    [
        pytest.param(b"{", {}, "reference.json is not valid JSON: ", id="not-json"),
        pytest.param(b"\xff\xfe", {}, "reference.json is not valid JSON: ", id="not-utf8"),
        pytest.param(b"[]", {}, "reference.json must hold a JSON object with 'inputs' and 'logits'", id="not-object"),
        pytest.param(None, {"inputs": None}, "reference.json: 'inputs' must be a non-empty list", id="no-inputs"),
        pytest.param(None, {"logits": [[1, 2, 3]]}, "reference.json: ", id="rows-differ"),
        pytest.param(None, {"inputs": [7]}, "reference.json: ", id="input-not-text"),
    ],
)
def test_a_corrupt_reference_set_is_named_with_its_problem(tiny_bundle, tmp_path, content, changes, message):
    from service.core.reverify import BadReferenceSet

    bundle = with_reference(tiny_bundle("bert"), tmp_path / "b", content, **changes)
    with pytest.raises(BadReferenceSet) as caught:
        reverify(OnnxClassifier.from_bundle(bundle), bundle, read_manifest(bundle))
    assert str(caught.value).startswith(message)
    assert "\n" not in str(caught.value)


def test_every_row_of_a_reference_set_is_checked(tiny_bundle, tmp_path):
    import json

    from service.core.reverify import BadReferenceSet

    data = json.loads((tiny_bundle("bert") / REFERENCE_FILE).read_text())
    bad_row = [*data["logits"][:-1], [0.0, "x", 1.0]]
    bundle = with_reference(tiny_bundle("bert"), tmp_path / "b", logits=bad_row)
    with pytest.raises(BadReferenceSet, match=rf"^reference.json: logits\[{len(bad_row) - 1}\] must be a list of 3 "):
        reverify(OnnxClassifier.from_bundle(bundle), bundle, read_manifest(bundle))


def test_a_single_bundle_with_a_corrupt_reference_set_exits_5_naming_it(tiny_bundle, tmp_path):
    require_serve_env()
    bundle = with_reference(tiny_bundle("bert"), tmp_path / "b", inputs=None)
    proc = subprocess.run(
        [str(SERVE_PYTHON), "-m", "service", "--bundle", str(bundle), "--port", str(free_port())],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 5
    last = proc.stderr.strip().splitlines()[-1]
    assert last == f"error: {bundle}: bundle refused: reference.json: 'inputs' must be a non-empty list"
    assert "Traceback" not in proc.stderr


def test_a_reference_set_over_the_limits_is_refused_before_it_runs(tiny_bundle, tmp_path, monkeypatch):
    from service.core.reverify import BadReferenceSet, Limits

    bundle = tiny_bundle("bert")
    manifest = read_manifest(bundle)
    classifier = OnnxClassifier.from_bundle(bundle)
    ran: list[int] = []
    monkeypatch.setattr(classifier, "run", lambda batch: ran.append(len(batch)))
    size = (bundle / REFERENCE_FILE).stat().st_size
    rows = manifest.verification["texts"]
    with pytest.raises(
        BadReferenceSet, match=rf"^reference.json holds {size} bytes, more than MAX_REFERENCE_BYTES 100$"
    ):
        reverify(classifier, bundle, manifest, Limits(max_bytes=100))
    with pytest.raises(BadReferenceSet, match=rf"^reference.json holds {rows} rows, more than MAX_REFERENCE_ROWS 3$"):
        reverify(classifier, bundle, manifest, Limits(max_rows=3))
    assert ran == []


def test_the_reference_set_runs_in_batches_within_max_batch_tokens(tiny_bundle):
    from service.core.reverify import Limits

    bundle = tiny_bundle("bert")
    classifier = OnnxClassifier.from_bundle(bundle)
    shapes: list[tuple[int, int]] = []
    run = classifier.run

    def recorded(batch):
        shapes.append((len(batch), max(item.length for item in batch)))
        return run(batch)

    classifier.run = recorded  # type: ignore[method-assign]
    verdict = reverify(classifier, bundle, read_manifest(bundle), Limits(max_batch_tokens=40, max_batch_size=3))
    assert verdict is not None and verdict.passed
    assert sum(size for size, _ in shapes) == verdict.inputs
    assert all(size <= 3 and size * width <= 40 for size, width in shapes), shapes
    assert len(shapes) > 1


def test_a_large_reference_set_costs_a_server_no_memory_and_its_neighbours_serve(tiny_bundle, tmp_path):
    """22 MB, 10,000 rows: refused before it is read, while the repository's other model loads and answers.
    The server's peak resident memory is measured, against a generous bound."""
    import json
    import re

    from tests.core.test_registry import serve
    from tests.helpers import wait_for

    repository = tmp_path / "repository"
    shutil.copytree(tiny_bundle("bert"), repository / "ok" / "1")
    data = json.loads((tiny_bundle("bert") / REFERENCE_FILE).read_text())
    rows = 10_000
    big = {"inputs": ["what is my balance " * 115] * rows, "logits": [data["logits"][0]] * rows}
    with_reference(tiny_bundle("bert"), repository / "big" / "1", json.dumps(big).encode())
    assert (repository / "big" / "1" / REFERENCE_FILE).stat().st_size > 22_000_000
    server = serve(repository)
    try:
        wait_for(
            lambda: any(row["name"] == "big" and row["state"] == "UNAVAILABLE" for row in index_of(server)),
            "big unavailable",
        )
        reason = next(row["reason"] for row in index_of(server) if row["name"] == "big")
        answer = httpx.post(server.url + "/models/ok/predict", json={"inputs": "hi"})
        status = Path(f"/proc/{server.proc.pid}/status").read_text()
    finally:
        server.stop()
    assert reason.startswith("bundle refused: reference.json holds ") and reason.endswith(
        "bytes, more than MAX_REFERENCE_BYTES 4194304"
    )
    assert answer.status_code == 200
    peak = int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1)) / 1024
    print(f"peak {peak:.0f} MiB")
    assert peak < 250, f"peak resident memory {peak:.0f} MiB"


def index_of(server):
    return httpx.get(server.url + "/v2/models").json()


@pytest.mark.parametrize(
    "recorded, message",
    [
        pytest.param(
            {"int8_min_agreement": 0.0},
            "bundle.json: the bundle's tolerances are laxer than this service allows: int8_min_agreement 0 < "
            "GATE_INT8_MIN_AGREEMENT 0.99",
            id="agreement",
        ),
        pytest.param(
            {"fp32_max_logit_diff": 10.0, "int8_max_prob_diff": 1.0},
            "bundle.json: the bundle's tolerances are laxer than this service allows: fp32_max_logit_diff 10 > "
            "GATE_FP32_MAX_LOGIT_DIFF 0.0001; int8_max_prob_diff 1 > GATE_INT8_MAX_PROB_DIFF 0.05",
            id="ceilings",
        ),
        pytest.param(
            {"int8_min_agreement": "0"},
            "bundle.json: verification.thresholds.int8_min_agreement must be a number, got '0'",
            id="not-a-number",
        ),
    ],
)
def test_a_bundle_cannot_relax_its_own_tolerances(tiny_bundle, tmp_path, recorded, message):
    """A bundle rewritten whole (a graph changed, its tolerances opened wide, its hashes rewritten) passes its
    own gate; the service's floor refuses it."""
    from service.core.reverify import BadReferenceSet

    bundle = tampered(tiny_bundle("bert"), tmp_path / "tampered")
    manifest = read_manifest(bundle)
    thresholds = {**manifest.verification["thresholds"], **recorded}
    verification = {**manifest.verification, "thresholds": thresholds}
    write_manifest(bundle, dataclasses.replace(manifest, verification=verification))
    with pytest.raises(BadReferenceSet) as caught:
        reverify(OnnxClassifier.from_bundle(bundle), bundle, read_manifest(bundle))
    assert str(caught.value) == message


def test_a_lower_floor_is_the_operators_choice(tiny_bundle, tmp_path):
    require_serve_env()
    bundle = tampered(tiny_bundle("bert"), tmp_path / "tampered")
    manifest = read_manifest(bundle)
    verification = {
        **manifest.verification,
        "thresholds": {**manifest.verification["thresholds"], "fp32_max_logit_diff": 10.0},
    }
    write_manifest(bundle, dataclasses.replace(manifest, verification=verification))
    refused = subprocess.run(
        [str(SERVE_PYTHON), "-m", "service", "--bundle", str(bundle), "--port", str(free_port())],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert refused.returncode == 5
    assert refused.stderr.strip().splitlines()[-1] == (
        f"error: {bundle}: bundle refused: bundle.json: the bundle's tolerances are laxer than this service allows: "
        "fp32_max_logit_diff 10 > GATE_FP32_MAX_LOGIT_DIFF 0.0001"
    )
    server = ServerProcess(bundle, "--gate-fp32-max-logit-diff", "10")
    try:
        server.wait_ready()
        info = httpx.get(server.url + "/info").json()
    finally:
        server.stop()
    assert info["reverification"]["passed"] is True


def test_require_reference_set_refuses_a_bundle_without_one(tiny_checkpoint, tmp_path):
    from export.pipeline import export_bundle
    from service.core.reverify import BadReferenceSet, Limits

    export_bundle(out=tmp_path / "b", model=str(tiny_checkpoint("bert")), variant="fp32", reference_set=False)
    classifier = OnnxClassifier.from_bundle(tmp_path / "b")
    with pytest.raises(BadReferenceSet, match="^bundle.json: the bundle carries no reference set, and REQUIRE_"):
        reverify(classifier, tmp_path / "b", read_manifest(tmp_path / "b"), Limits(require_reference_set=True))
