"""The gRPC servicer in process, as KServe tests its own: the app's lifespan starts it on a real port in
the test's process (so coverage counts it), a plain grpc channel with the service's own stubs calls it.

tritonclient.grpc against a server process stays in test_tritonclient.py; the service's messages live in
a descriptor pool of their own, so both run in one pytest process.
"""

from __future__ import annotations

import json
import logging

import grpc
import numpy as np
import pytest
from starlette.testclient import TestClient

from service.app import create_app
from service.core.failures import all_failures
from service.protocols.oip import grpc_service
from service.protocols.oip.proto import grpc_predict_v2_pb2 as pb
from service.protocols.oip.proto import grpc_predict_v2_pb2_grpc as pb_grpc
from service.settings import Settings
from tests.conftest import needs_export
from tests.helpers import free_port, wait_app_ready

pytestmark = needs_export
KEY = "grpc-key"
LABELS = ["label_0", "label_1", "label_2"]


@pytest.fixture(scope="module")
def served(tiny_bundle):
    """(HTTP test client, gRPC stub) of one app; the queue holds 2 inputs, so 3 in one request are refused."""
    port = free_port()
    settings = Settings(
        bundle=str(tiny_bundle("bert")), grpc_port=port, max_inputs=4, max_queue_size=2, api_keys=(KEY,)
    )
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        wait_app_ready(client)
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield client, pb_grpc.GRPCInferenceServiceStub(channel), channel


AUTH = (("authorization", f"Bearer {KEY}"),)


def infer_request(texts, **fields) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="classifier", **fields)
    request.inputs.add(
        name="text",
        datatype="BYTES",
        shape=[len(texts)],
        contents=pb.InferTensorContents(bytes_contents=[t.encode() for t in texts]),
    )
    return request


def refusal(call, request, metadata=AUTH) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as raised:
        call(request, metadata=metadata, timeout=10)
    return raised.value.code(), raised.value.details()


def test_every_failure_has_a_grpc_status():
    assert set(grpc_service.STATUS) == set(all_failures())
    assert set(grpc_service.STATUS.values()) <= set(grpc_service.HTTP_STATUS)


def test_infer_answers_as_http_does(served):
    client, stub, _ = served
    texts = ["what is my balance", "héllo"]
    response = stub.ModelInfer(infer_request(texts, id="r-1"), metadata=AUTH, timeout=10)
    assert (response.model_name, response.model_version, response.id) == ("classifier", "1", "r-1")
    assert [(o.name, o.datatype, list(o.shape)) for o in response.outputs] == [
        ("logits", "FP32", [2, 3]),
        ("probabilities", "FP32", [2, 3]),
        ("label", "BYTES", [2]),
    ]
    over_http = client.post(
        "/v2/models/classifier/infer",
        headers={"authorization": f"Bearer {KEY}"},
        json={"inputs": [{"name": "text", "shape": [2], "datatype": "BYTES", "data": texts}]},
    ).json()
    logits = np.frombuffer(response.raw_output_contents[0], dtype="<f4").reshape(2, 3)
    np.testing.assert_array_equal(logits.ravel(), np.array(over_http["outputs"][0]["data"], dtype=np.float32))
    labels = over_http["outputs"][2]["data"]
    assert response.raw_output_contents[2] == b"".join(len(x).to_bytes(4, "little") + x.encode() for x in labels)
    assert set(labels) <= set(LABELS)


@pytest.mark.parametrize(
    "request_, code, message",
    [
        pytest.param(
            infer_request(["a", "b", "c"]),
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "inference queue is full (0 inputs queued or running, 3 more asked for, limit 2)",
            id="queue-full",
        ),
        pytest.param(
            infer_request(["a"], model_version="7"),
            grpc.StatusCode.NOT_FOUND,
            "model 'classifier' has no version '7'; it has version '1'",
            id="unknown-version",
        ),
        pytest.param(
            pb.ModelInferRequest(model_name="other"),
            grpc.StatusCode.NOT_FOUND,
            "model 'other' is not served here; this server serves 'classifier'",
            id="unknown-model",
        ),
        pytest.param(
            infer_request(["a"] * 5),
            grpc.StatusCode.INVALID_ARGUMENT,
            "5 inputs is more than the limit of 4 per request",
            id="too-many",
        ),
        pytest.param(
            infer_request(
                ["a"],
                outputs=[
                    pb.ModelInferRequest.InferRequestedOutputTensor(
                        name="label", parameters={"shared_memory_region": pb.InferParameter(string_param="r")}
                    )
                ],
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "output 'label' uses the shared-memory extension, which this server does not support",
            id="output-shm",
        ),
        pytest.param(
            infer_request(["a"], raw_input_contents=[b"", b""]),
            grpc.StatusCode.INVALID_ARGUMENT,
            "raw_input_contents has 2 entries for 1 inputs",
            id="raw-count",
        ),
    ],
)
def test_refusals_have_their_status(served, request_, code, message):
    _, stub, _ = served
    assert refusal(stub.ModelInfer, request_) == (code, message)


def test_a_bad_key_is_unauthenticated_and_health_stays_open(served):
    _, stub, _ = served
    assert refusal(stub.ModelInfer, infer_request(["a"]), metadata=(("authorization", "Bearer nope"),)) == (
        grpc.StatusCode.UNAUTHENTICATED,
        "missing or invalid API key; send the metadata 'authorization: Bearer KEY'",
    )
    assert stub.ServerLive(pb.ServerLiveRequest(), timeout=10).live
    assert stub.ServerReady(pb.ServerReadyRequest(), timeout=10).ready


def test_a_malformed_message_is_invalid_argument_without_a_traceback(served, caplog):
    _, _, channel = served
    raw = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")  # bytes in, bytes out
    with caplog.at_level(logging.INFO), pytest.raises(grpc.RpcError) as raised:
        raw(b"\xff\xff\xff", metadata=AUTH, timeout=10)
    assert (raised.value.code(), raised.value.details()) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "the request is not a valid ModelInferRequest message",
    )
    assert not [record for record in caplog.records if record.exc_info]


def test_calls_are_recorded_as_http_requests_are(served, caplog):
    client, stub, _ = served
    long_id = "x" * 7000
    with caplog.at_level(logging.INFO, logger="service.access"):
        refusal(stub.ModelInfer, infer_request(["a", "b", "c"]), metadata=(*AUTH, ("x-request-id", long_id)))
        stub.ModelInfer(infer_request(["a"]), metadata=(*AUTH, ("x-request-id", "grpc-7")), timeout=10)
    lines = [record.fields for record in caplog.records if record.name == "service.access"]
    refused, served_line = lines[-2], lines[-1]
    assert len(refused["request_id"]) == 32 and refused["request_id"] != long_id
    path = "/inference.GRPCInferenceService/ModelInfer"
    assert {k: v for k, v in refused.items() if k not in ("request_id", "duration_ms")} == {
        "protocol": "grpc",
        "method": "POST",
        "path": path,
        "status": 429,
        "model": "classifier",
        "model_version": "1",
    }
    assert {k: v for k, v in served_line.items() if k != "duration_ms"} == {
        "request_id": "grpc-7",
        "protocol": "grpc",
        "method": "POST",
        "path": path,
        "status": 200,
        "model": "classifier",
        "model_version": "1",
    }
    metrics = client.get("/metrics").text
    assert f'classifier_requests_total{{endpoint="{path}",model="classifier",protocol="grpc",status="429"}}' in metrics
    statuses = {
        line.split('status="')[1].split('"')[0]
        for line in metrics.splitlines()
        if line.startswith("classifier_requests_total{")
    }
    assert all(status.isdigit() for status in statuses), statuses
    assert json.dumps(served_line)  # the fields are plain JSON values


def test_connections_beyond_the_cap_are_closed(tiny_bundle):
    """MAX_CONNECTIONS holds for gRPC as for HTTP: a second connection is refused while the first is open."""
    port = free_port()
    settings = Settings(bundle=str(tiny_bundle("bert")), grpc_port=port, max_connections=1)
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        wait_app_ready(client)
        # One connection per channel: by default channels to one address share a connection.
        options = [("grpc.use_local_subchannel_pool", 1)]
        with grpc.insecure_channel(f"127.0.0.1:{port}", options=options) as first:
            live = pb_grpc.GRPCInferenceServiceStub(first).ServerLive
            assert live(pb.ServerLiveRequest(), timeout=10).live
            with grpc.insecure_channel(f"127.0.0.1:{port}", options=options) as second:
                with pytest.raises(grpc.RpcError) as raised:
                    pb_grpc.GRPCInferenceServiceStub(second).ServerLive(pb.ServerLiveRequest(), timeout=10)
                assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
            assert live(pb.ServerLiveRequest(), timeout=10).live
