"""The v2 HTTP routes with the lifespan running: content types, binary bodies, versioned paths."""

from __future__ import annotations

import json
import struct
import sys
import tomllib

import numpy as np
import pytest
from starlette.testclient import TestClient

import service
from service.app import create_app
from service.settings import Settings
from tests.conftest import ROOT, needs_export
from tests.helpers import wait_app_ready

pytestmark = needs_export
INFER = "/v2/models/classifier/infer"
LABELS = ["label_0", "label_1", "label_2"]


def make_client(bundle, **overrides):
    return TestClient(
        create_app(Settings(bundle=str(bundle), max_inputs=4, **overrides)), raise_server_exceptions=False
    )


@pytest.fixture(scope="module")
def client(tiny_bundle):
    with make_client(tiny_bundle("bert")) as client:
        wait_app_ready(client)
        yield client


@pytest.fixture(scope="module")
def reference(tiny_checkpoint):
    from export.sources import load_source

    return load_source(str(tiny_checkpoint("bert"))).reference


def test_service_version_is_the_projects():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert service.__version__ == project["version"]


def test_server_metadata_names_the_service(client):
    assert client.get("/v2").json() == {
        "name": "onnx-text-classifier",
        "version": service.__version__,
        "extensions": ["binary_tensor_data"],
    }


def test_a_body_without_content_type_is_json(client, reference):
    body = {
        "inputs": [{"name": "text", "shape": [2, 1], "datatype": "BYTES", "data": [["what is my balance"], ["hi"]]}],
        "outputs": [{"name": "label"}],
    }
    response = client.post(INFER, content=json.dumps(body))
    assert "content-type" not in response.request.headers
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    labels = [LABELS[i] for i in reference(["what is my balance", "hi"]).argmax(axis=1)]
    assert response.json() == {
        "model_name": "classifier",
        "model_version": "1",
        "outputs": [{"name": "label", "datatype": "BYTES", "shape": [2], "data": labels}],
    }


def test_binary_request_and_response(client, reference):
    texts = ["what is my balance", "hi"]
    raw = b"".join(struct.pack("<I", len(t.encode())) + t.encode() for t in texts)
    head = json.dumps(
        {
            "inputs": [
                {"name": "text", "shape": [2], "datatype": "BYTES", "parameters": {"binary_data_size": len(raw)}}
            ],
            "outputs": [{"name": "logits", "parameters": {"binary_data": True}}],
        }
    ).encode()
    response = client.post(
        "/v2/models/classifier/versions/1/infer",
        content=head + raw,
        headers={"content-type": "application/octet-stream", "inference-header-content-length": str(len(head))},
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/octet-stream"
    assert float(response.headers["x-total-time"]) >= 0
    length = int(response.headers["inference-header-content-length"])
    assert json.loads(response.content[:length]) == {
        "model_name": "classifier",
        "model_version": "1",
        "outputs": [{"name": "logits", "datatype": "FP32", "shape": [2, 3], "parameters": {"binary_data_size": 24}}],
    }
    logits = np.frombuffer(response.content[length:], dtype="<f4").reshape(2, 3)
    np.testing.assert_allclose(logits, reference(texts), atol=1e-5)


def test_versioned_paths(client):
    assert client.get("/v2/models/classifier/versions/1").json() == client.get("/v2/models/classifier").json()
    assert client.get("/v2/models/classifier/versions/1/ready").json() == {"name": "classifier", "ready": True}
    for path in ("/v2/models/classifier/versions/2", "/v2/models/classifier/versions/2/ready"):
        response = client.get(path)
        assert (response.status_code, response.json()) == (
            404,
            {"error": "model 'classifier' has no version '2'; it has version '1'", "error_type": "not_found"},
        )
    response = client.post("/v2/models/classifier/versions/2/infer", content=b"{}")
    assert response.status_code == 404


@pytest.mark.parametrize(
    "content, headers, status, body",
    [
        pytest.param(
            b"{}",
            {"content-type": "text/plain"},
            415,
            {
                "error": "content type 'text/plain' is not supported; send application/json, application/octet-stream "
                "(binary tensor data) or no content type",
                "error_type": "unsupported_media_type",
            },
            id="media-type",
        ),
        pytest.param(
            json.dumps({"inputs": [{"name": "t", "shape": [1], "datatype": "BYTES", "data": ["a"]}]}).encode(),
            {},
            400,
            {"error": "unknown input 't'; the model's only input is 'text' (BYTES)", "error_type": "bad_request"},
            id="input-name",
        ),
        pytest.param(
            b"x" * 5000,
            {},
            413,
            {"error": "request body exceeds the limit of 4096 bytes", "error_type": "payload_too_large"},
            id="too-large",
        ),
    ],
)
def test_errors(tiny_bundle, content, headers, status, body):
    with make_client(tiny_bundle("bert"), max_body_bytes=4096) as client:
        wait_app_ready(client)
        response = client.post(INFER, content=content, headers=headers)
    assert (response.status_code, response.json()) == (status, body)


def test_versioned_paths_need_the_api_key(tiny_bundle):
    with make_client(tiny_bundle("bert"), api_keys=("k",)) as client:
        wait_app_ready(client)
        body = json.dumps({"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["a"]}]})
        assert client.post("/v2/models/classifier/versions/1/infer", content=body).status_code == 401
        assert client.get("/v2/models/classifier/versions/1").status_code == 401
        ok = client.post("/v2/models/classifier/versions/1/infer", content=body, headers={"authorization": "Bearer k"})
        assert ok.status_code == 200


def test_serves_without_grpcio_unless_asked(tiny_bundle, monkeypatch, capsys):
    from service.cli import EXIT_BAD_SETTINGS, main

    monkeypatch.setitem(sys.modules, "grpc", None)  # what an install without requirements-grpc.txt looks like
    with make_client(tiny_bundle("bert")) as client:
        wait_app_ready(client)
        assert client.get("/v2/models/classifier/ready").status_code == 200
    assert main(["--bundle", str(tiny_bundle("bert")), "--grpc-port", "8001"]) == EXIT_BAD_SETTINGS
    assert capsys.readouterr().err == "error: --grpc-port needs grpcio; install requirements-grpc.txt\n"
