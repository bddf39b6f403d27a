"""Endpoints with the lifespan running (TestClient), exact bodies asserted."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from starlette.testclient import TestClient

from service.app import create_app
from service.settings import Settings
from service.web.errors import ERROR_TABLE, TEI_ERROR_TABLE
from tests.conftest import ROOT, needs_export
from tests.helpers import wait_app_ready

pytestmark = needs_export
LABELS = ["label_0", "label_1", "label_2"]


@pytest.fixture(scope="module")
def bundle(tiny_bundle):
    return tiny_bundle("bert")


@pytest.fixture(scope="module")
def reference(tiny_checkpoint):
    from export.sources import load_source

    return load_source(str(tiny_checkpoint("bert"))).reference


def make_client(bundle, **overrides):
    settings = Settings(bundle=str(bundle), max_inputs=4, max_body_bytes=4096, **overrides)
    return TestClient(create_app(settings), raise_server_exceptions=False)


@pytest.fixture(scope="module")
def client(bundle):
    with make_client(bundle) as client:
        wait_app_ready(client)
        yield client


def expected_ranking(logits: np.ndarray, top_k=None, raw=False):
    scores = logits if raw else np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    order = np.argsort(-scores, kind="stable")[: top_k or len(scores)]
    return [{"label": LABELS[i], "score": pytest.approx(float(scores[i]), abs=1e-5)} for i in order]


def post(client, path, body, headers=None):
    return client.post(path, content=json.dumps(body), headers={"content-type": "application/json", **(headers or {})})


def test_predict_single_text(client, reference):
    response = post(client, "/predict", {"inputs": "what is my balance"})
    assert response.status_code == 200
    assert response.json() == expected_ranking(reference(["what is my balance"])[0])


def test_predict_batch_top_k_and_raw_scores(client, reference):
    texts = ["hello", "book a flight to paris", ""]
    logits = reference(texts)
    response = post(client, "/predict", {"inputs": texts, "top_k": 2})
    assert response.json() == [expected_ranking(row, top_k=2) for row in logits]
    raw = post(client, "/predict", {"inputs": texts, "raw_scores": True}).json()
    assert raw == [expected_ranking(row, raw=True) for row in logits]


def test_timing_and_request_id_headers(client):
    response = post(client, "/predict", {"inputs": "hi"}, headers={"x-request-id": "abc-123"})
    assert response.headers["x-request-id"] == "abc-123"
    for name in ("x-tokenization-time", "x-queue-time", "x-inference-time", "x-total-time"):
        assert float(response.headers[name]) >= 0
    generated = post(client, "/predict", {"inputs": "hi"}).headers["x-request-id"]
    assert len(generated) == 32 and int(generated, 16) >= 0


@pytest.mark.parametrize("path", ["/predict", "/v2/models/classifier/infer"])
def test_deadline_and_priority_headers(client, reference, path):
    body = (
        {"inputs": "hi"}
        if path == "/predict"
        else {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["hi"]}]}
    )
    late = post(client, path, body, headers={"x-request-timeout": "0.000001"})
    assert late.status_code == 504
    message = "the request's deadline passed while its inputs waited to be tokenized; none of them ran"
    assert late.json() == {"error": message, "error_type": "deadline_exceeded"}
    assert post(client, path, body, headers={"x-request-timeout": "30", "x-priority": "low"}).status_code == 200
    bad = post(client, path, body, headers={"x-priority": "urgent"})
    assert bad.status_code == 400
    assert bad.json()["error"] == "x-priority must be high, normal or low (or 1, 2, 3), got 'urgent'"
    bad = post(client, path, body, headers={"x-request-timeout": "soon"})
    assert bad.status_code == 400
    assert bad.json()["error"] == (
        "x-request-timeout must be a number of seconds above 0 and at most 86400, got 'soon'"
    )


def test_multi_label_uses_sigmoid(tiny_bundle, tiny_checkpoint):
    from export.sources import load_source

    logits = load_source(str(tiny_checkpoint("bert", multi_label=True))).reference(["hello"])[0]
    with make_client(tiny_bundle("bert", multi_label=True)) as client:
        wait_app_ready(client)
        body = post(client, "/predict", {"inputs": "hello"}).json()
    sig = 1 / (1 + np.exp(-logits))
    order = np.argsort(-sig, kind="stable")
    assert body == [{"label": LABELS[i], "score": pytest.approx(float(sig[i]), abs=1e-5)} for i in order]


def test_info(client, bundle):
    body = client.get("/info").json()
    assert body["model_id"] == "bert0"
    assert body["labels"] == LABELS
    assert body["problem_type"] == "single_label_classification"
    assert body["max_length"] == 24
    assert body["variant"] == "fp32"
    assert body["verification"]["passed"] is True and body["verification"]["agreement"] == 1.0
    assert set(body["versions"]["serve"]) == {"service", "onnxruntime", "tokenizers", "starlette", "uvicorn"}
    assert body["limits"] == {"max_inputs": 4, "max_body_bytes": 4096, "max_batch_tokens": 4096}
    assert body["long_texts"] == {"windows": False, "window_overlap": 32, "max_windows": 32, "aggregation": "mean"}


def test_health_and_liveness(client):
    assert client.get("/health").json() == {"status": "ok"}
    assert client.get("/live").json() == {"status": "alive"}
    # HEAD is left to Starlette's router (service.web.routing serves the declared method alone).
    head = client.head("/health")
    assert (head.status_code, head.content, head.headers["content-type"]) == (200, b"", "application/json")


def test_not_ready_is_503_with_reason(bundle, tmp_path):
    import shutil

    from service.core.manifest import read_manifest

    broken = tmp_path / "b"
    shutil.copytree(bundle, broken)
    (broken / "model.onnx").write_bytes(b"garbage")
    settings = Settings(bundle=str(broken))
    with TestClient(create_app(settings, read_manifest(broken))) as client:
        import time

        deadline = time.monotonic() + 120  # a hang guard
        while (response := client.get("/health")).json()["error"] == "model is loading":
            assert time.monotonic() < deadline, "the broken model never finished loading"
            time.sleep(0.02)
        unhealthy = {"error": "model failed to load; the server log says why", "error_type": "unhealthy"}
        assert (response.status_code, response.json()) == (503, unhealthy)
        assert client.get("/live").status_code == 200
        predicted = post(client, "/predict", {"inputs": "x"})
        assert (predicted.status_code, predicted.json()["error_type"]) == (503, "unhealthy")  # one spelling
        assert client.get("/v2/health/ready").status_code == 503


def test_v2_metadata(client):
    assert client.get("/v2").json()["name"] == "onnx-text-classifier"
    assert client.get("/v2/health/live").json() == {"live": True}
    assert client.get("/v2/health/ready").json() == {"ready": True}
    assert client.get("/v2/models/classifier/ready").json() == {"name": "classifier", "ready": True}
    metadata = client.get("/v2/models/classifier").json()
    reverified = metadata.pop("parameters")["reverification"]
    assert reverified == client.get("/info").json()["reverification"] and reverified["passed"] is True
    assert metadata == {
        "name": "classifier",
        "versions": ["1"],
        "platform": "onnxruntime_onnx",
        "inputs": [{"name": "text", "datatype": "BYTES", "shape": [-1]}],
        "outputs": [
            {"name": "logits", "datatype": "FP32", "shape": [-1, 3]},
            {"name": "probabilities", "datatype": "FP32", "shape": [-1, 3]},
            {"name": "label", "datatype": "BYTES", "shape": [-1]},
        ],
    }


def test_v2_infer(client, reference):
    texts = ["what is my balance", "hello"]
    logits = reference(texts)
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    body = {"id": "req-1", "inputs": [{"name": "text", "shape": [2], "datatype": "BYTES", "data": texts}]}
    response = post(client, "/v2/models/classifier/infer", body).json()
    assert response == {
        "model_name": "classifier",
        "model_version": "1",
        "id": "req-1",
        "outputs": [
            {
                "name": "logits",
                "datatype": "FP32",
                "shape": [2, 3],
                "data": pytest.approx(logits.ravel().tolist(), abs=1e-5),
            },
            {
                "name": "probabilities",
                "datatype": "FP32",
                "shape": [2, 3],
                "data": pytest.approx(probs.ravel().tolist(), abs=1e-5),
            },
            {"name": "label", "datatype": "BYTES", "shape": [2], "data": [LABELS[i] for i in probs.argmax(1)]},
        ],
    }
    body["outputs"] = [{"name": "label"}]
    only = post(client, "/v2/models/classifier/infer", body).json()
    assert [o["name"] for o in only["outputs"]] == ["label"]


def error(response, status, error_type, message=None):
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error_type"] == error_type
    # TEI's routes (/, /predict, /rerank, /tokenize, /decode, /info) use TEI's names where it has them.
    assert {**ERROR_TABLE, **TEI_ERROR_TABLE}[error_type] == status
    if message is not None:
        assert body == {"error": message, "error_type": error_type}
    return body


NOT_INPUTS = (
    "inputs: must be a text, a list of texts, [text, text_pair] or a batch [[text], [text, text_pair], ...] of strings"
)


@pytest.mark.parametrize(
    "body, message",
    [
        pytest.param(
            {"inputs": 5},
            NOT_INPUTS,
            id="number",
        ),
        pytest.param({"inputs": []}, "inputs: must not be empty", id="empty-list"),
        pytest.param(
            {"inputs": ["a", 1]},
            NOT_INPUTS,
            id="mixed-list",
        ),
        pytest.param({}, "inputs: Field required", id="missing"),
        pytest.param({"inputs": "a", "top_k": 0}, "top_k: Input should be greater than or equal to 1", id="top-k-zero"),
        pytest.param(
            {"inputs": "a", "truncate": "yes"}, "truncate: Input should be a valid boolean", id="truncate-string"
        ),
        pytest.param(["a"], "Input should be an object", id="not-object"),
        pytest.param({"inputs": ["a"] * 5}, "5 inputs is more than the limit of 4 per request", id="too-many"),
    ],
)
def test_invalid_body_is_422(client, body, message):
    body_out = error(post(client, "/predict", body), 422, "Validation")
    assert body_out["error"].endswith(message)


@pytest.mark.parametrize(
    "path, body, status, error_type",
    [
        pytest.param("/predict", {"inputs": []}, 422, "Validation", id="predict"),
        pytest.param("/tokenize", {"inputs": []}, 422, "Validation", id="tokenize"),
        pytest.param("/decode", {"ids": []}, 400, "Empty", id="decode"),
        pytest.param("/v2/models/classifier/infer", {"inputs": []}, 400, "bad_request", id="v2-infer"),
    ],
)
def test_an_empty_list_is_told_in_one_dialect_on_every_route(client, path, body, status, error_type):
    message = "`ids` cannot be empty" if path == "/decode" else "inputs: must not be empty"
    error(post(client, path, body), status, error_type, message)


def test_empty_string_is_accepted(client):
    assert post(client, "/predict", {"inputs": ""}).status_code == 200


def test_over_long_text_truncates_by_default_and_refuses_on_request(client, tiny_checkpoint):
    from transformers import AutoTokenizer

    text = "hello world " * 50
    tokens = len(AutoTokenizer.from_pretrained(tiny_checkpoint("bert"))(text)["input_ids"])
    assert tokens > 24
    assert post(client, "/predict", {"inputs": text}).status_code == 200
    error(
        post(client, "/predict", {"inputs": ["short", text], "truncate": False}),
        422,
        "Validation",
        f"input 1 has {tokens} tokens, more than the model's limit of 24; send shorter text or set truncate to true",
    )


def test_body_over_limit_is_413_even_without_content_length(client):
    big = json.dumps({"inputs": "x" * 5000}).encode()

    def chunks():
        for i in range(0, len(big), 1000):
            yield big[i : i + 1000]

    response = client.post("/predict", content=chunks(), headers={"content-type": "application/json"})
    assert "content-length" not in response.request.headers
    error(response, 413, "payload_too_large", "request body exceeds the limit of 4096 bytes")
    lying = client.post("/predict", content=big, headers={"content-type": "application/json", "content-length": "10"})
    error(lying, 413, "payload_too_large", "request body exceeds the limit of 4096 bytes")


def test_other_errors(client):
    error(
        client.post("/predict", content=b"inputs=x", headers={"content-type": "text/plain"}),
        415,
        "unsupported_media_type",
        "content type 'text/plain' is not supported; send application/json",
    )
    error(
        client.post("/predict", content=b"{", headers={"content-type": "application/json"}),
        400,
        "malformed_json",
        "request body is not valid JSON: EOF while parsing an object at line 1 column 1",
    )
    error(client.get("/nowhere"), 404, "not_found", "no route /nowhere")
    error(client.get("/predict"), 405, "method_not_allowed", "method GET is not allowed on /predict")
    error(
        client.get("/v2/models/other"),
        404,
        "not_found",
        "model 'other' is not served here; this server serves 'classifier'",
    )
    error(
        post(
            client,
            "/v2/models/classifier/infer",
            {"inputs": [{"name": "text", "shape": [3], "datatype": "BYTES", "data": ["a"]}]},
        ),
        400,
        "bad_request",
        "input 'text' has shape [3] but 1 elements",
    )
    error(
        post(
            client,
            "/v2/models/classifier/infer",
            {"inputs": [{"name": "text", "shape": [1], "datatype": "FP32", "data": ["a"]}]},
        ),
        400,
        "bad_request",
        "input 'text' has datatype 'FP32'; the model expects BYTES",
    )


def test_full_queue_is_429_with_retry_after(bundle):
    with make_client(bundle, max_queue_size=2) as client:
        wait_app_ready(client)
        response = post(client, "/predict", {"inputs": ["a", "b", "c"]})
        error(
            response,
            429,
            "Overloaded",
            "inference queue is full (0 inputs queued or running, 3 more asked for, limit 2)",
        )
        assert response.headers["retry-after"] == "1"


def test_api_keys(bundle):
    with make_client(bundle, api_keys=("key-one", "key-two")) as client:
        wait_app_ready(client)
        error(
            post(client, "/predict", {"inputs": "a"}),
            401,
            "unauthorized",
            "missing or invalid API key; send 'Authorization: Bearer KEY'",
        )
        error(
            post(client, "/predict", {"inputs": "a"}, headers={"authorization": "Bearer key-three"}),
            401,
            "unauthorized",
        )
        for key in ("key-one", "key-two"):
            assert (
                post(client, "/predict", {"inputs": "a"}, headers={"authorization": f"Bearer {key}"}).status_code == 200
            )
        for open_path in (
            "/health",
            "/live",
            "/metrics",
            "/v2/health/ready",
            "/docs",
            "/openapi.json",
            "/docs/init.js",
            "/docs/swagger-ui/swagger-ui-bundle.js",
        ):
            assert client.get(open_path).status_code == 200, open_path
        assert client.get("/info").status_code == 401
        spec = client.get("/openapi.json").json()
        assert spec["security"] == [{"bearer": []}]
        assert spec["components"]["securitySchemes"] == {
            "bearer": {"type": "http", "scheme": "bearer", "description": "one of the keys in API_KEYS"}
        }


def test_cors_is_off_unless_configured(client, bundle):
    preflight = {"origin": "https://app.example", "access-control-request-method": "POST"}
    assert "access-control-allow-origin" not in client.options("/predict", headers=preflight).headers
    with make_client(bundle, cors_allow_origins=("https://app.example",)) as cors:
        response = cors.options("/predict", headers=preflight)
        assert response.headers["access-control-allow-origin"] == "https://app.example"


def test_metrics(client):
    post(client, "/predict", {"inputs": ["a", "bb"]})
    text = client.get("/metrics").text
    assert 'classifier_requests_total{endpoint="/predict",model="classifier",protocol="http",status="200"}' in text
    assert 'classifier_requests_total{endpoint="/health",model="",protocol="http",status="200"}' in text
    for phase in ("tokenize", "queue", "inference"):
        assert f'classifier_phase_seconds_bucket{{le="+Inf",model="classifier",phase="{phase}"}}' in text
    assert 'classifier_batch_size_bucket{le="+Inf",model="classifier"}' in text
    assert 'classifier_batch_tokens_bucket{le="+Inf",model="classifier"}' in text
    assert 'classifier_queue_depth{model="classifier"} 0.0' in text
    assert 'classifier_inputs_total{model="classifier"}' in text


def test_openapi_lists_every_endpoint(client):
    spec = client.get("/openapi.json").json()
    assert sorted(spec["paths"]) == sorted(
        [
            "/",
            "/predict",
            "/rerank",
            "/zero-shot",
            "/tokenize",
            "/decode",
            "/info",
            "/health",
            "/live",
            "/metrics",
            "/v2",
            "/v2/health/live",
            "/v2/health/ready",
            "/v2/models/{model_name}",
            "/v2/models/{model_name}/ready",
            "/v2/models/{model_name}/infer",
            "/v2/models/{model_name}/versions/{model_version}",
            "/v2/models/{model_name}/versions/{model_version}/ready",
            "/v2/models/{model_name}/versions/{model_version}/infer",
            "/v2/models",
            "/models/{model_name}",
            "/models/{model_name}/predict",
            "/models/{model_name}/rerank",
            "/models/{model_name}/zero-shot",
            "/models/{model_name}/tokenize",
            "/models/{model_name}/decode",
            "/models/{model_name}/info",
            "/v2/repository/index",
            "/v2/repository/models/{model_name}/load",
            "/v2/repository/models/{model_name}/unload",
        ]
    )
    schemas = spec["components"]["schemas"]
    assert {
        "PredictRequest",
        "Prediction",
        "RerankRequest",
        "RerankResult",
        "Token",
        "Info",
        "InferRequest",
        "InferResponse",
        "ModelMetadata",
        "ErrorBody",
    } <= set(schemas)
    predict = spec["paths"]["/predict"]["post"]
    assert predict["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/PredictRequest"
    }
    assert predict["responses"]["200"]["content"]["application/json"]["schema"] == {
        "anyOf": [
            {"type": "array", "items": {"$ref": "#/components/schemas/Prediction"}},
            {"type": "array", "items": {"type": "array", "items": {"$ref": "#/components/schemas/Prediction"}}},
            {"$ref": "#/components/schemas/PredictionsWithDetails"},
        ]
    }
    assert predict["responses"]["429"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ErrorBody"
    }
    assert spec["paths"]["/health"]["get"]["security"] == []
    assert schemas["Info"]["properties"]["max_client_batch_size"] == {
        "title": "Max Client Batch Size",
        "type": "integer",
    }
    assert "security" not in spec


def test_docs_page_is_swagger_ui_from_local_assets(client):
    page = client.get("/docs")
    assert page.status_code == 200 and page.headers["content-type"] == "text/html; charset=utf-8"
    assert '<script src="docs/swagger-ui/swagger-ui-bundle.js"></script>' in page.text
    assert '<script src="docs/init.js"></script>' in page.text
    assert "http://" not in page.text and "https://" not in page.text
    bundle = client.get("/docs/swagger-ui/swagger-ui-bundle.js")
    assert bundle.status_code == 200 and bundle.headers["content-type"].startswith("text/javascript")
    # The wheel's version is the Swagger UI release it carries: what is served is what is pinned.
    pinned = re.search(r"^swagger-ui-bundle-v2==(\S+)$", (ROOT / "requirements-serve.txt").read_text(), re.M)
    assert f'PACKAGE_VERSION:"{pinned[1]}"' in bundle.text
    assert client.get("/docs/swagger-ui/swagger-ui.css").headers["content-type"].startswith("text/css")
    init = client.get("/docs/init.js")
    assert 'url: "openapi.json"' in init.text and "validatorUrl: null" in init.text
    error(client.get("/docs/other.js"), 404, "not_found", "no route /docs/other.js")
    error(client.get("/docs/swagger-ui/other.js"), 404, "not_found", "no route /docs/swagger-ui/other.js")


def test_the_reverified_schema_is_derived_from_the_core_dataclass():
    import dataclasses

    from service.core.reverify import Reverification
    from service.protocols.tei.responses import Reverified
    from service.web.responses import model_of

    verdict = Reverification(True, 3, "top1", 1.0, 0.0, 0.0, [], 0.5, ["avx2"], "1.32.0")
    assert list(Reverified.model_fields) == [field.name for field in dataclasses.fields(Reverification)]
    assert Reverified.model_validate(verdict.to_dict()).model_dump() == verdict.to_dict()
    assert Reverified.model_json_schema()["required"] == list(Reverified.model_fields)
    with pytest.raises(ValueError, match=r"Reverification has no fields \['second'\]"):
        model_of(Reverification, "X", "x", second="a typo")
