"""Any JSON body gives either a valid answer or the documented error."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient

from service.app import create_app
from service.errors import ERROR_TABLE
from service.settings import Settings
from tests.conftest import needs_export
from tests.service_helpers import wait_ready

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
    with TestClient(create_app(Settings(bundle=str(tiny_bundle("bert")), max_inputs=4)),
                    raise_server_exceptions=False) as client:
        wait_ready(client)
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
            assert all(0.0 <= item["score"] <= 1.0 for ranking in (data if isinstance(data[0], list) else [data])
                       for item in ranking)
    else:
        assert set(data) == {"error", "error_type"}
        assert ERROR_TABLE[data["error_type"]] == response.status_code
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
            st.lists(st.fixed_dictionaries({
                "name": st.sampled_from(["text", "other"]),
                "shape": st.one_of(st.lists(st.integers(-1, 6), max_size=2), json_values),
                "datatype": st.sampled_from(["BYTES", "FP32", "INT64"]),
                "data": st.one_of(st.lists(st.text(max_size=30), max_size=6), json_values),
            }), max_size=2),
            json_values,
        ),
        "outputs": st.one_of(st.lists(st.fixed_dictionaries(
            {"name": st.sampled_from(["logits", "probabilities", "label", "embedding"])}), max_size=3), json_values),
    },
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=st.one_of(infer_like, json_values))
def test_v2_infer_answers_or_documented_error(client, body):
    response = client.post("/v2/models/classifier/infer", content=json.dumps(body),
                           headers={"content-type": "application/json"})
    data = response.json()
    if response.status_code == 200:
        (tensor,) = body["inputs"]
        n = len(tensor["data"])
        wanted = [o["name"] for o in body.get("outputs") or []] or ["logits", "probabilities", "label"]
        assert [o["name"] for o in data["outputs"]] == wanted
        for output in data["outputs"]:
            assert output["shape"][0] == n
            size = n * (3 if output["name"] != "label" else 1)
            assert len(output["data"]) == size
    else:
        assert set(data) == {"error", "error_type"}
        assert ERROR_TABLE[data["error_type"]] == response.status_code == 422
