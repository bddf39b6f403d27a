"""Who may ask for what: probes ignore urgency headers, a caller's key is checked before anything it sent,
high priority is kept for the keys HIGH_PRIORITY_KEYS names, and a request that can never fit the queue is
told so without retry advice. In process, over HTTP and gRPC on real ports."""

from __future__ import annotations

import grpc
import pytest
from starlette.testclient import TestClient

from service.app import create_app
from service.protocols.oip.proto import grpc_predict_v2_pb2 as pb
from service.protocols.oip.proto import grpc_predict_v2_pb2_grpc as pb_grpc
from service.settings import Settings
from tests.conftest import needs_export
from tests.helpers import free_port, wait_app_ready

pytestmark = needs_export
TRUSTED, OTHER = "trusted-key", "other-key"
BAD_URGENCY = {"x-priority": "urgent!", "x-request-timeout": "-1"}
HIGH_REFUSED = "high priority is reserved for the API keys in HIGH_PRIORITY_KEYS; ask for normal or low priority"


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


@pytest.fixture(scope="module")
def served(tiny_bundle):
    """(HTTP client, gRPC stub, channel) of one app with two keys, one of them allowed high priority; a queue of
    8 inputs, and long texts read in windows."""
    port = free_port()
    settings = Settings(
        bundle=str(tiny_bundle("bert")),
        grpc_port=port,
        api_keys=(TRUSTED, OTHER),
        high_priority_keys=(TRUSTED,),
        max_queue_size=8,
        max_inputs=4,
    )
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        wait_app_ready(client)
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield client, pb_grpc.GRPCInferenceServiceStub(channel), channel


@pytest.mark.parametrize("path", ["/live", "/health", "/metrics", "/v2/health/live", "/v2/health/ready"])
def test_probes_and_scrapes_ignore_urgency_headers(served, path):
    client, _, _ = served
    assert client.get(path, headers=BAD_URGENCY).status_code == 200


def test_work_still_refuses_bad_urgency_headers(served):
    client, _, _ = served
    response = client.post("/predict", json={"inputs": "hi"}, headers={**bearer(TRUSTED), "x-priority": "urgent!"})
    assert (response.status_code, response.json()) == (
        400,
        {"error": "x-priority must be high, normal or low (or 1, 2, 3), got 'urgent!'", "error_type": "bad_request"},
    )


def test_high_priority_is_for_the_keys_named(served):
    client, _, _ = served
    asked = {"x-priority": "high"}
    assert client.post("/predict", json={"inputs": "hi"}, headers={**bearer(TRUSTED), **asked}).status_code == 200
    for headers in ({**bearer(OTHER), **asked}, {**bearer(OTHER), "x-priority": "1"}):
        response = client.post("/predict", json={"inputs": "hi"}, headers=headers)
        assert (response.status_code, response.json()) == (403, {"error": HIGH_REFUSED, "error_type": "forbidden"})
    for level in ("normal", "low"):
        headers = {**bearer(OTHER), "x-priority": level}
        assert client.post("/predict", json={"inputs": "hi"}, headers=headers).status_code == 200


def test_the_open_inference_protocols_priority_parameter_is_gated_too(served):
    client, _, _ = served
    body = {
        "inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["hi"]}],
        "parameters": {"priority": 1},
    }
    assert client.post("/v2/models/classifier/infer", json=body, headers=bearer(TRUSTED)).status_code == 200
    response = client.post("/v2/models/classifier/infer", json=body, headers=bearer(OTHER))
    assert (response.status_code, response.json()["error"]) == (403, HIGH_REFUSED)


def infer_request(texts, **fields) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="classifier", **fields)
    request.inputs.add(
        name="text",
        datatype="BYTES",
        shape=[len(texts)],
        contents=pb.InferTensorContents(bytes_contents=[t.encode() for t in texts]),
    )
    return request


def refusal(call, request, metadata) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as raised:
        call(request, metadata=metadata, timeout=10)
    return raised.value.code(), raised.value.details()


UNAUTHENTICATED = (
    grpc.StatusCode.UNAUTHENTICATED,
    "missing or invalid API key; send the metadata 'authorization: Bearer KEY'",
)


def test_grpc_checks_the_key_before_anything_else(served):
    _, stub, channel = served
    assert refusal(stub.ModelInfer, infer_request(["a"]), (("x-priority", "urgent!"),)) == UNAUTHENTICATED
    raw = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")  # bytes in, bytes out
    with pytest.raises(grpc.RpcError) as raised:
        raw(b"\xff\xff\xff", metadata=(("x-priority", "urgent!"),), timeout=10)
    assert (raised.value.code(), raised.value.details()) == UNAUTHENTICATED
    # Probes stay open, whatever the metadata says.
    assert stub.ServerLive(pb.ServerLiveRequest(), metadata=(("x-priority", "urgent!"),), timeout=10).live


def test_grpc_keeps_high_priority_for_the_keys_named(served):
    _, stub, _ = served
    high = (("x-priority", "high"),)
    assert stub.ModelInfer(infer_request(["a"]), metadata=(("authorization", f"Bearer {TRUSTED}"), *high), timeout=10)
    assert refusal(stub.ModelInfer, infer_request(["a"]), (("authorization", f"Bearer {OTHER}"), *high)) == (
        grpc.StatusCode.PERMISSION_DENIED,
        HIGH_REFUSED,
    )


def test_a_request_that_can_never_fit_the_queue_is_413_without_retry_advice(served):
    """Two long texts in windows need 2 x 7 queue slots, more than the 8 the queue holds: no wait helps."""
    client, _, _ = served
    text = " ".join(["what is my balance"] * 22)  # 7 windows of the tiny model
    body = {"inputs": [text, text], "windows": True, "window_overlap": 2, "details": True}
    one = client.post("/predict", json={**body, "inputs": text}, headers=bearer(TRUSTED))
    assert one.status_code == 200 and one.json()["details"][0]["windows"] == 7
    response = client.post("/predict", json=body, headers=bearer(TRUSTED))
    assert (response.status_code, response.json()) == (
        413,
        {
            "error": "the request needs 14 queue slots (one per input, or per window of a long input), more than "
            "the queue holds at its priority (8, from MAX_QUEUE_SIZE); it can never be admitted: send fewer or "
            "shorter texts, or ask for fewer windows",
            "error_type": "payload_too_large",
        },
    )
    assert "retry-after" not in response.headers


def test_window_overlap_is_at_most_half_a_window(served):
    client, _, _ = served
    text = " ".join(["what is my balance"] * 6)
    allowed = client.post(
        "/predict", json={"inputs": text, "windows": True, "window_overlap": 11}, headers=bearer(TRUSTED)
    )
    assert allowed.status_code == 200
    response = client.post(
        "/predict", json={"inputs": text, "windows": True, "window_overlap": 12}, headers=bearer(TRUSTED)
    )
    assert (response.status_code, response.json()) == (
        422,
        {
            "error": "window_overlap 12 is more than half a window: at most 11 tokens for this model",
            "error_type": "Validation",
        },
    )
