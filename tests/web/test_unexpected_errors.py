"""A real 500 from a real server: its request id in the answer and in the one log line, one traceback.

The bundle is genuine but for its graph: one that loads and warms up (batches of 1
and 8) and fails inside ONNX Runtime on a batch of ten or more, with the manifest's
hash rewritten to match, so the server serves it as it would any bundle.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import httpx
import pytest

from service.core.manifest import MANIFEST_NAME, MODEL_FILE, read_manifest, sha256_file
from tests.conftest import needs_export
from tests.helpers import ServerProcess, require_serve_env

pytestmark = needs_export
# The graph's table has this many rows; a batch of more inputs gathers past its end.
ROWS = 9


def failing_graph(path: Path, labels: int) -> None:
    """logits[b] = table[batch_size - 1]: fine for batches of up to ROWS inputs, an error above."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    constants = {
        "zero_index": np.array(0, dtype=np.int64),
        "one": np.array(1, dtype=np.int64),
        "table": np.arange(ROWS * labels, dtype=np.float32).reshape(ROWS, labels),
        "sequence_axis": np.array([1], dtype=np.int64),
        "nothing": np.array(0.0, dtype=np.float32),
    }
    nodes = [
        helper.make_node("Shape", ["input_ids"], ["shape"]),
        helper.make_node("Gather", ["shape", "zero_index"], ["batch"], axis=0),
        helper.make_node("Sub", ["batch", "one"], ["last"]),
        helper.make_node("Gather", ["table", "last"], ["row"], axis=0),
        helper.make_node("Cast", ["input_ids"], ["ids"], to=TensorProto.FLOAT),
        helper.make_node("ReduceSum", ["ids", "sequence_axis"], ["column"], keepdims=1),
        helper.make_node("Mul", ["column", "nothing"], ["zeros"]),
        helper.make_node("Add", ["zeros", "row"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes,
        "fails-on-large-batches",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "sequence"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", labels])],
        initializer=[numpy_helper.from_array(value, name) for name, value in constants.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    onnx.save(model, path)


@pytest.fixture(scope="module")
def failing_bundle(tiny_bundle, tmp_path_factory) -> Path:
    source = tiny_bundle("bert")
    out = tmp_path_factory.mktemp("failing") / "bundle"
    shutil.copytree(source, out)
    failing_graph(out / MODEL_FILE, len(read_manifest(out).id2label))
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    manifest["files"][MODEL_FILE] = sha256_file(out / MODEL_FILE)
    # A graph that answers nothing like the original: it carries no reference set to be held to, as
    # a bundle exported with --no-reference-set (otherwise it would be refused at load).
    (out / manifest.pop("reference_set")).unlink()
    del manifest["files"]["reference.json"]
    (out / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2))
    return out


@pytest.fixture
def server(failing_bundle):
    require_serve_env()
    process = ServerProcess(failing_bundle)
    try:
        process.wait_ready()
        yield process
    finally:
        process.stop()


def log_entries(process: ServerProcess) -> list[dict]:
    return [json.loads(line) for line in process.log.read_text().splitlines() if line.startswith("{")]


def test_a_500_carries_its_request_id_and_logs_one_traceback(server):
    texts = [f"text number {i}" for i in range(ROWS + 1)]
    v2_body = {"inputs": [{"name": "text", "shape": [len(texts)], "datatype": "BYTES", "data": texts}]}
    with httpx.Client(base_url=server.url, timeout=30) as client:
        assert client.post("/predict", json={"inputs": texts[:ROWS]}).status_code == 200
        failed = client.post("/predict", json={"inputs": texts}, headers={"x-request-id": "boom-1"})
        # The connection stays usable: nothing was re-raised into the server.
        after = client.post("/predict", json={"inputs": "still serving"})
        v2_failed = client.post("/v2/models/classifier/infer", json=v2_body)
    assert (failed.status_code, failed.headers["x-request-id"]) == (500, "boom-1")
    assert failed.json() == {"error": "internal error; see the server log", "error_type": "Backend"}
    assert after.status_code == 200
    v2_id = v2_failed.headers["x-request-id"]
    assert v2_failed.status_code == 500 and len(v2_id) == 32
    assert v2_failed.json() == {"error": "internal error; see the server log", "error_type": "internal"}
    server.stop()

    entries = log_entries(server)
    errors = [entry for entry in entries if entry["level"] == "error"]
    assert [(entry["msg"], entry["request_id"]) for entry in errors] == [
        ("unhandled error on /predict", "boom-1"),
        ("unhandled error on /v2/models/classifier/infer", v2_id),
    ]
    assert all("Gather" in entry["exc"] for entry in errors)
    text = server.log.read_text()
    assert text.count("Traceback (most recent call last)") == 2
    # Every line is the service's JSON: ONNX Runtime does not report the failed run itself.
    assert len(entries) == len(text.splitlines())
    access = {entry["request_id"]: entry["status"] for entry in entries if entry["logger"] == "service.access"}
    assert access["boom-1"] == 500 and access[v2_id] == 500


def test_a_crash_while_loading_the_models_is_told_at_once_not_held_until_shutdown(tiny_bundle, tmp_path, caplog):
    """A defect that escapes the registry's start (here made by hand): the server stops waiting for models,
    says why in /health and the log at once, and tells the process to stop (it exits 5)."""
    import logging

    from starlette.testclient import TestClient

    from service.app import create_app
    from service.core.registry import ModelRegistry
    from service.settings import Settings

    repository = tmp_path / "repository"
    shutil.copytree(tiny_bundle("bert"), repository / "intent")
    told: list[str] = []

    async def crash(self):
        raise RuntimeError("a defect")

    monkeypatch = pytest.MonkeyPatch()
    monkeypatch.setattr(ModelRegistry, "sync", crash)
    try:
        app = create_app(Settings(repository=str(repository)), on_fatal=told.append)
        with caplog.at_level(logging.ERROR), TestClient(app) as client:
            # The crash is the loading task's first step: once the lifespan has started, it has happened.
            response = client.get("/health")
            failed = [record for record in caplog.records if record.getMessage() == "loading the models failed"]
    finally:
        monkeypatch.undo()
    assert (response.status_code, response.json()["error"]) == (
        503,
        "loading the models failed: RuntimeError; the server log says why",
    )
    assert told == ["loading the models failed: RuntimeError"]
    assert len(failed) == 1 and failed[0].exc_info is not None
