"""Any body, JSON or binary, gives either a valid answer or the documented error."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tritonclient.http as httpclient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient

from service.app import create_app
from service.protocols.oip import infer
from service.settings import Settings
from service.web.errors import ERROR_TABLE, TEI_ERROR_TABLE
from tests.conftest import needs_export
from tests.helpers import wait_app_ready

pytestmark = needs_export
LABELS = {"label_0", "label_1", "label_2"}

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
predict_like = st.fixed_dictionaries(
    {},
    optional={
        "inputs": st.one_of(st.text(max_size=200), st.lists(st.text(max_size=50), max_size=6), json_values),
        "truncate": st.one_of(st.booleans(), json_values),
        "raw_scores": st.one_of(st.booleans(), json_values),
        "top_k": st.one_of(st.none(), st.integers(-2, 5), json_values),
    },
)


@pytest.fixture(scope="module")
def client(tiny_bundle):
    with TestClient(
        create_app(Settings(bundle=str(tiny_bundle("bert")), max_inputs=4)), raise_server_exceptions=False
    ) as client:
        wait_app_ready(client)
        yield client


def check_ranking(ranking, top_k):
    assert isinstance(ranking, list) and len(ranking) == (min(top_k, 3) if top_k else 3)
    assert {item["label"] for item in ranking} <= LABELS
    scores = [item["score"] for item in ranking]
    assert scores == sorted(scores, reverse=True)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=st.one_of(predict_like, json_values))
def test_predict_answers_or_documented_error(client, body):
    response = client.post("/predict", content=json.dumps(body), headers={"content-type": "application/json"})
    data = response.json()
    if response.status_code == 200:
        top_k = body.get("top_k")
        if isinstance(body["inputs"], str):
            check_ranking(data, top_k)
        else:
            assert len(data) == len(body["inputs"])
            for ranking in data:
                check_ranking(ranking, top_k)
        if not body.get("raw_scores"):
            assert all(
                0.0 <= item["score"] <= 1.0
                for ranking in (data if isinstance(data[0], list) else [data])
                for item in ranking
            )
    else:
        assert set(data) == {"error", "error_type"}
        assert {**ERROR_TABLE, **TEI_ERROR_TABLE}[data["error_type"]] == response.status_code
        assert response.status_code in (422,)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=st.binary(max_size=64))
def test_arbitrary_bytes_never_500(client, raw):
    response = client.post("/predict", content=raw, headers={"content-type": "application/json"})
    assert response.status_code in (200, 400, 422)
    assert set(response.json()) <= {"error", "error_type"} or response.status_code == 200


infer_like = st.fixed_dictionaries(
    {},
    optional={
        "id": st.one_of(st.text(max_size=10), json_values),
        "inputs": st.one_of(
            st.lists(
                st.fixed_dictionaries(
                    {
                        "name": st.sampled_from(["text", "other"]),
                        "shape": st.one_of(st.lists(st.integers(-1, 6), max_size=2), json_values),
                        "datatype": st.sampled_from(["BYTES", "FP32", "INT64"]),
                        "data": st.one_of(st.lists(st.text(max_size=30), max_size=6), json_values),
                    }
                ),
                max_size=2,
            ),
            json_values,
        ),
        "outputs": st.one_of(
            st.lists(
                st.fixed_dictionaries({"name": st.sampled_from(["logits", "probabilities", "label", "embedding"])}),
                max_size=3,
            ),
            json_values,
        ),
    },
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=st.one_of(infer_like, json_values))
def test_v2_infer_answers_or_documented_error(client, body):
    response = client.post(
        "/v2/models/classifier/infer", content=json.dumps(body), headers={"content-type": "application/json"}
    )
    data = response.json()
    if response.status_code == 200:
        (tensor,) = body["inputs"]
        n = len(infer.flatten(tensor["data"]))
        wanted = [o["name"] for o in body.get("outputs") or []] or ["logits", "probabilities", "label"]
        assert [o["name"] for o in data["outputs"]] == wanted
        for output in data["outputs"]:
            assert output["shape"][0] == n
            size = n * (3 if output["name"] != "label" else 1)
            assert len(output["data"]) == size
    else:
        assert set(data) == {"error", "error_type"}
        assert ERROR_TABLE[data["error_type"]] == response.status_code == 400


OUTPUT_NAMES = ["logits", "probabilities", "label"]
texts = st.lists(st.text(max_size=40), min_size=1, max_size=6)
requested = st.none() | st.lists(
    st.tuples(st.sampled_from(OUTPUT_NAMES), st.booleans()), min_size=1, max_size=3, unique_by=lambda pair: pair[0]
)


def post_with_tritonclient(client, texts, binary_input, column, outputs):
    """A request exactly as tritonclient.http encodes it, decoded by tritonclient too."""
    shape = [len(texts), 1] if column else [len(texts)]
    tensor = httpclient.InferInput("text", shape, "BYTES")
    tensor.set_data_from_numpy(np.array(texts, dtype=object).reshape(shape), binary_data=binary_input)
    wanted = None if outputs is None else [httpclient.InferRequestedOutput(n, binary_data=b) for n, b in outputs]
    # With no outputs named, tritonclient asks for all of them in binary (binary_data_output).
    body, header_length = httpclient.InferenceServerClient.generate_request_body([tensor], outputs=wanted)
    headers = {} if header_length is None else {"inference-header-content-length": str(header_length)}
    response = client.post("/v2/models/classifier/infer", content=body, headers=headers)
    if response.status_code != 200:
        return response, None
    result = httpclient.InferenceServerClient.parse_response_body(
        response.content, header_length=response.headers.get("inference-header-content-length")
    )
    return response, result


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(texts=texts, binary_input=st.booleans(), column=st.booleans(), outputs=requested)
def test_v2_binary_and_nested_forms_agree_with_json(client, texts, binary_input, column, outputs):
    """Any form tritonclient sends gives the answer of a flat JSON request, or the documented error."""
    response, result = post_with_tritonclient(client, texts, binary_input, column, outputs)
    if len(texts) > 4:
        assert (response.status_code, response.json()) == (
            400,
            {"error": f"{len(texts)} inputs is more than the limit of 4 per request", "error_type": "bad_request"},
        )
        return
    assert response.status_code == 200, response.text
    plain = {"inputs": [{"name": "text", "shape": [len(texts)], "datatype": "BYTES", "data": texts}]}
    reference = {o["name"]: o for o in client.post("/v2/models/classifier/infer", json=plain).json()["outputs"]}
    names = OUTPUT_NAMES if outputs is None else [name for name, _ in outputs]
    assert [o["name"] for o in result.get_response()["outputs"]] == names
    for name in names:
        got = result.as_numpy(name)
        assert list(got.shape) == reference[name]["shape"]
        if name == "label":
            assert [x.decode() if isinstance(x, bytes) else x for x in got.tolist()] == reference[name]["data"]
        else:
            np.testing.assert_allclose(got.ravel(), reference[name]["data"], atol=1e-6)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    head=st.one_of(infer_like, json_values),
    raw=st.binary(max_size=40),
    size=st.one_of(st.none(), st.integers(-2, 45), json_values),
    cut=st.integers(-3, 300),
)
def test_v2_binary_bodies_answer_or_documented_error(client, head, raw, size, cut):
    """Arbitrary binary sections, declared sizes and header lengths: a valid answer or a 400."""
    inputs = head.get("inputs") if isinstance(head, dict) else None
    first = inputs[0] if isinstance(inputs, list) and inputs else None
    if size is not None and isinstance(first, dict):
        first.pop("data", None)
        first["parameters"] = {"binary_data_size": size}
    encoded = json.dumps(head).encode()
    header_length = len(encoded) if cut > len(encoded) + len(raw) else cut
    response = client.post(
        "/v2/models/classifier/infer",
        content=encoded + raw,
        headers={"inference-header-content-length": str(header_length)},
    )
    if response.status_code == 200:
        length = response.headers.get("inference-header-content-length")
        assert json.loads(response.content[: int(length)] if length else response.content)["outputs"]
    else:
        data = response.json()
        assert set(data) == {"error", "error_type"}
        assert ERROR_TABLE[data["error_type"]] == response.status_code == 400
