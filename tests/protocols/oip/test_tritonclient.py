"""tritonclient, unchanged, against ``python -m service``: HTTP (JSON and binary tensors) and gRPC."""

from __future__ import annotations

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from service import NAME, __version__
from tests.conftest import needs_export
from tests.helpers import ServerProcess, free_port, metric_value, readme_snippet, require_serve_env, wait_for

pytestmark = needs_export
TEXTS = ["what is my balance", "book a flight to paris", "héllo wörld"]
LABELS = ["label_0", "label_1", "label_2"]
KEY = "test-key-1"


def start(bundle, *args: str, env: dict[str, str] | None = None) -> ServerProcess:
    require_serve_env()
    grpc_port = free_port()
    process = ServerProcess(bundle, "--grpc-port", str(grpc_port), "--max-inputs", "4", *args, env=env)
    process.http_address = process.url.removeprefix("http://")
    process.grpc_address = f"127.0.0.1:{grpc_port}"
    process.wait_ready()
    return process


@pytest.fixture(scope="module")
def server(tiny_bundle):
    process = start(tiny_bundle("bert"))
    yield process
    process.stop()


@pytest.fixture(scope="module")
def expected(tiny_checkpoint):
    from export.sources import load_source

    logits = load_source(str(tiny_checkpoint("bert"))).reference(TEXTS)
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return {
        "logits": logits,
        "probabilities": probabilities,
        "label": [LABELS[i] for i in probabilities.argmax(axis=1)],
    }


def check(result, expected, rows=slice(None)):
    np.testing.assert_allclose(result.as_numpy("logits"), expected["logits"][rows], atol=1e-5)
    np.testing.assert_allclose(result.as_numpy("probabilities"), expected["probabilities"][rows], atol=1e-5)
    labels = [x.decode() if isinstance(x, bytes) else x for x in result.as_numpy("label").tolist()]
    assert labels == expected["label"][rows]


MODEL_METADATA = {
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


# HTTP ---------------------------------------------------------------------------------


def test_http_readiness_and_metadata(server):
    client = httpclient.InferenceServerClient(server.http_address)
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("classifier") and client.is_model_ready("classifier", "1")
    assert not client.is_model_ready("classifier", "2")
    assert not client.is_model_ready("other")
    assert client.get_server_metadata() == {"name": NAME, "version": __version__, "extensions": ["binary_tensor_data"]}
    for version in ("", "1"):
        metadata = client.get_model_metadata("classifier", model_version=version)
        assert metadata.pop("parameters")["reverification"]["passed"] is True  # the bundle's check on this CPU
        assert metadata == MODEL_METADATA
    with pytest.raises(InferenceServerException) as raised:
        client.get_model_metadata("classifier", model_version="2")
    assert (raised.value.status(), raised.value.message()) == (
        "404",
        "model 'classifier' has no version '2'; it has version '1'",
    )


@pytest.mark.parametrize("binary_inputs", [True, False], ids=["binary-in", "json-in"])
@pytest.mark.parametrize("binary_outputs", [None, True, False], ids=["default-out", "binary-out", "json-out"])
@pytest.mark.parametrize("version", ["", "1"], ids=["unversioned", "versioned"])
def test_http_infer(server, expected, binary_inputs, binary_outputs, version):
    client = httpclient.InferenceServerClient(server.http_address)
    text = httpclient.InferInput("text", [len(TEXTS)], "BYTES")
    text.set_data_from_numpy(np.array(TEXTS, dtype=object), binary_data=binary_inputs)
    outputs = None
    if binary_outputs is not None:
        outputs = [
            httpclient.InferRequestedOutput(name, binary_data=binary_outputs)
            for name in ("logits", "probabilities", "label")
        ]
    result = client.infer("classifier", [text], outputs=outputs, model_version=version, request_id="r-7")
    check(result, expected)
    response = result.get_response()
    assert (response["model_name"], response["model_version"], response["id"]) == ("classifier", "1", "r-7")
    # With no outputs named, tritonclient asks for all of them in binary (binary_data_output).
    binary = binary_outputs is not False
    for output in response["outputs"]:
        assert ("parameters" in output and "data" not in output) is binary, output


def test_http_infer_a_column_of_texts_and_some_outputs(server, expected):
    """The README's snippet: a [n, 1] numpy column, two outputs requested, one of them as JSON."""
    client = httpclient.InferenceServerClient(server.http_address)
    text = httpclient.InferInput("text", [2, 1], "BYTES")
    text.set_data_from_numpy(np.array([[TEXTS[0]], [TEXTS[1]]], dtype=object))
    outputs = [
        httpclient.InferRequestedOutput("label", binary_data=False),
        httpclient.InferRequestedOutput("probabilities"),
    ]
    result = client.infer("classifier", [text], outputs=outputs)
    assert [o["name"] for o in result.get_response()["outputs"]] == ["label", "probabilities"]
    assert result.as_numpy("label").tolist() == expected["label"][:2]
    np.testing.assert_allclose(result.as_numpy("probabilities"), expected["probabilities"][:2], atol=1e-5)
    assert result.as_numpy("logits") is None


@pytest.mark.parametrize("algorithm", ["gzip", "deflate"])
def test_http_infer_compressed_request(server, expected, algorithm):
    client = httpclient.InferenceServerClient(server.http_address)
    text = httpclient.InferInput("text", [len(TEXTS)], "BYTES")
    text.set_data_from_numpy(np.array(TEXTS, dtype=object))
    check(client.infer("classifier", [text], request_compression_algorithm=algorithm), expected)


@pytest.mark.parametrize(
    "name, shape, datatype, values, message",
    [
        pytest.param(
            "txt",
            [1],
            "BYTES",
            np.array(["a"], dtype=object),
            "unknown input 'txt'; the model's only input is 'text' (BYTES)",
            id="name",
        ),
        pytest.param(
            "text",
            [1],
            "FP32",
            np.array([1.0], dtype=np.float32),
            "input 'text' has datatype 'FP32'; the model expects BYTES",
            id="datatype",
        ),
        pytest.param(
            "text",
            [5],
            "BYTES",
            np.array(["a"] * 5, dtype=object),
            "5 inputs is more than the limit of 4 per request",
            id="too-many",
        ),
        pytest.param(
            "text",
            [1, 2],
            "BYTES",
            np.array([["a", "b"]], dtype=object),
            "input 'text' has shape [1, 2]; the model expects [n] or [n, 1]",
            id="shape",
        ),
    ],
)
def test_http_bad_requests_are_400(server, name, shape, datatype, values, message):
    client = httpclient.InferenceServerClient(server.http_address)
    tensor = httpclient.InferInput(name, shape, datatype)
    tensor.set_data_from_numpy(values)
    with pytest.raises(InferenceServerException) as raised:
        client.infer("classifier", [tensor])
    assert (raised.value.status(), raised.value.message()) == ("400", message)


# gRPC ---------------------------------------------------------------------------------


def test_grpc_readiness_and_metadata(server):
    client = grpcclient.InferenceServerClient(server.grpc_address)
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("classifier") and client.is_model_ready("classifier", "1")
    server_meta = client.get_server_metadata()
    assert (server_meta.name, server_meta.version, list(server_meta.extensions)) == (
        NAME,
        __version__,
        ["binary_tensor_data"],
    )
    for version in ("", "1"):
        meta = client.get_model_metadata("classifier", version)
        tensors = lambda items: [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in items]  # noqa: E731
        assert {
            "name": meta.name,
            "versions": list(meta.versions),
            "platform": meta.platform,
            "inputs": tensors(meta.inputs),
            "outputs": tensors(meta.outputs),
        } == MODEL_METADATA
    with pytest.raises(InferenceServerException) as raised:
        client.is_model_ready("other")
    assert (raised.value.status(), raised.value.message()) == (
        "StatusCode.NOT_FOUND",
        "model 'other' is not served here; this server serves 'classifier'",
    )


@pytest.mark.parametrize("version", ["", "1"], ids=["unversioned", "versioned"])
def test_grpc_infer(server, expected, version):
    client = grpcclient.InferenceServerClient(server.grpc_address)
    text = grpcclient.InferInput("text", [len(TEXTS)], "BYTES")
    text.set_data_from_numpy(np.array(TEXTS, dtype=object))
    result = client.infer("classifier", [text], model_version=version, request_id="g-1")
    check(result, expected)
    response = result.get_response()
    assert (response.model_name, response.model_version, response.id) == ("classifier", "1", "g-1")
    assert [(o.name, o.datatype, list(o.shape)) for o in response.outputs] == [
        ("logits", "FP32", [3, 3]),
        ("probabilities", "FP32", [3, 3]),
        ("label", "BYTES", [3]),
    ]


def test_grpc_infer_some_outputs(server, expected):
    client = grpcclient.InferenceServerClient(server.grpc_address)
    text = grpcclient.InferInput("text", [1, 1], "BYTES")
    text.set_data_from_numpy(np.array([[TEXTS[2]]], dtype=object))
    result = client.infer("classifier", [text], outputs=[grpcclient.InferRequestedOutput("label")])
    assert result.as_numpy("label").tolist() == [expected["label"][2].encode()]
    assert result.as_numpy("logits") is None


@pytest.mark.parametrize(
    "name, shape, values, status, message",
    [
        pytest.param(
            "txt",
            [1],
            np.array(["a"], dtype=object),
            "StatusCode.INVALID_ARGUMENT",
            "unknown input 'txt'; the model's only input is 'text' (BYTES)",
            id="name",
        ),
        pytest.param(
            "text",
            [5],
            np.array(["a"] * 5, dtype=object),
            "StatusCode.INVALID_ARGUMENT",
            "5 inputs is more than the limit of 4 per request",
            id="too-many",
        ),
        pytest.param(
            "text",
            [0],
            np.array([], dtype=object),
            "StatusCode.INVALID_ARGUMENT",
            "input 'text' holds no texts",
            id="empty",
        ),
    ],
)
def test_grpc_bad_requests(server, name, shape, values, status, message):
    client = grpcclient.InferenceServerClient(server.grpc_address)
    tensor = grpcclient.InferInput(name, shape, "BYTES")
    tensor.set_data_from_numpy(values)
    with pytest.raises(InferenceServerException) as raised:
        client.infer("classifier", [tensor])
    assert (raised.value.status(), raised.value.message()) == (status, message)


def test_a_full_queue_is_resource_exhausted_over_grpc_as_it_is_429_over_http(tiny_bundle):
    """Admission refuses 3 inputs at a bound of 2 before any tokenizing: the same failure on both transports."""
    process = start(tiny_bundle("bert"), "--max-queue-size", "2")
    try:
        message = "inference queue is full (0 inputs queued or running, 3 more asked for, limit 2)"
        text = grpcclient.InferInput("text", [3], "BYTES")
        text.set_data_from_numpy(np.array(TEXTS, dtype=object))
        with pytest.raises(InferenceServerException) as raised:
            grpcclient.InferenceServerClient(process.grpc_address).infer("classifier", [text])
        assert (raised.value.status(), raised.value.message()) == ("StatusCode.RESOURCE_EXHAUSTED", message)
        text = httpclient.InferInput("text", [3], "BYTES")
        text.set_data_from_numpy(np.array(TEXTS, dtype=object))
        with pytest.raises(InferenceServerException) as raised:
            httpclient.InferenceServerClient(process.http_address).infer("classifier", [text])
        assert (raised.value.status(), raised.value.message()) == ("429", message)
        log = process.log_with('"path": "/v2/models/classifier/infer"')
    finally:
        process.stop()
    assert '"status": 429' in log and '"protocol": "grpc"' in log
    assert "Traceback" not in log and '"exc"' not in log


# Deadlines and priorities ---------------------------------------------------------------


def test_triton_timeout_parameter_is_a_deadline_on_both_transports(server, expected):
    """tritonclient's ``timeout`` (the request parameter, in microseconds) of 1 has passed before the input can
    be tokenized: dropped unrun, DEADLINE_EXCEEDED over gRPC as 504 over HTTP; a generous one is answered."""
    message = "the request's deadline passed while its inputs waited to be tokenized; none of them ran"
    text = grpcclient.InferInput("text", [3], "BYTES")
    text.set_data_from_numpy(np.array(TEXTS, dtype=object))
    client = grpcclient.InferenceServerClient(server.grpc_address)
    with pytest.raises(InferenceServerException) as raised:
        client.infer("classifier", [text], timeout=1)
    assert (raised.value.status(), raised.value.message()) == ("StatusCode.DEADLINE_EXCEEDED", message)
    check(client.infer("classifier", [text], timeout=30_000_000, priority=1), expected)
    check(client.infer("classifier", [text], client_timeout=30), expected)  # gRPC's own deadline
    text = httpclient.InferInput("text", [3], "BYTES")
    text.set_data_from_numpy(np.array(TEXTS, dtype=object))
    client = httpclient.InferenceServerClient(server.http_address)
    with pytest.raises(InferenceServerException) as raised:
        client.infer("classifier", [text], timeout=1)
    assert (raised.value.status(), raised.value.message()) == ("504", message)
    check(client.infer("classifier", [text], timeout=30_000_000, priority=3), expected)
    with pytest.raises(InferenceServerException) as raised:
        client.infer("classifier", [text], priority=7)
    assert raised.value.status() == "400"
    assert raised.value.message() == "parameter 'priority' must be 1 (high), 2 (normal), 3 (low) or 0 (default), got 7"
    metrics = httpx.get(server.url + "/metrics").text
    assert 'classifier_deadline_exceeded_total{model="classifier",stage="tokenize"} 2.0' in metrics


def test_grpc_priority_metadata_is_checked(server, expected):
    text = grpcclient.InferInput("text", [3], "BYTES")
    text.set_data_from_numpy(np.array(TEXTS, dtype=object))
    client = grpcclient.InferenceServerClient(server.grpc_address)
    check(client.infer("classifier", [text], headers={"x-priority": "high"}), expected)
    with pytest.raises(InferenceServerException) as raised:
        client.infer("classifier", [text], headers={"x-priority": "now"})
    assert raised.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert raised.value.message() == "x-priority must be high, normal or low (or 1, 2, 3), got 'now'"


# API keys -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def secured(tiny_bundle):
    process = start(tiny_bundle("bert"), env={"API_KEYS": f"{KEY},other-key"})
    yield process
    process.stop()


def test_api_keys_over_http(secured, expected):
    client = httpclient.InferenceServerClient(secured.http_address)
    text = httpclient.InferInput("text", [len(TEXTS)], "BYTES")
    text.set_data_from_numpy(np.array(TEXTS, dtype=object))
    assert client.is_server_ready()
    for headers in (None, {"Authorization": "Bearer wrong-key"}):
        with pytest.raises(InferenceServerException) as raised:
            client.infer("classifier", [text], headers=headers)
        assert (raised.value.status(), raised.value.message()) == (
            "401",
            "missing or invalid API key; send 'Authorization: Bearer KEY'",
        )
    check(client.infer("classifier", [text], headers={"Authorization": f"Bearer {KEY}"}), expected)


def test_api_keys_over_grpc(secured, expected):
    client = grpcclient.InferenceServerClient(secured.grpc_address)
    text = grpcclient.InferInput("text", [len(TEXTS)], "BYTES")
    text.set_data_from_numpy(np.array(TEXTS, dtype=object))
    assert client.is_server_live() and client.is_server_ready()
    for headers in (None, {"authorization": "Bearer wrong-key"}):
        for call in (
            lambda headers=headers: client.infer("classifier", [text], headers=headers),
            lambda headers=headers: client.get_model_metadata("classifier", headers=headers),
        ):
            with pytest.raises(InferenceServerException) as raised:
                call()
            assert (raised.value.status(), raised.value.message()) == (
                "StatusCode.UNAUTHENTICATED",
                "missing or invalid API key; send the metadata 'authorization: Bearer KEY'",
            )
    check(client.infer("classifier", [text], headers={"authorization": f"Bearer {KEY}"}), expected)


@pytest.mark.parametrize("module", ["tritonclient.http", "tritonclient.grpc"])
def test_readme_snippets_run(server, tiny_checkpoint, module):
    from export.sources import load_source

    code = (
        readme_snippet(f"import {module} as")
        .replace("localhost:8000", server.http_address)
        .replace("localhost:8001", server.grpc_address)
    )
    namespace: dict = {}
    exec(compile(code, f"README.md ({module})", "exec"), namespace)
    logits = load_source(str(tiny_checkpoint("bert"))).reference(["what is my balance", "hi"])
    assert namespace["labels"] == [LABELS[i] for i in logits.argmax(axis=1)]
    if "probabilities" in namespace:
        np.testing.assert_allclose(
            namespace["probabilities"], np.exp(logits) / np.exp(logits).sum(1, keepdims=True), atol=1e-5
        )
    else:
        np.testing.assert_allclose(namespace["logits"], logits, atol=1e-5)


def test_grpc_typed_bytes_contents(server, expected):
    """KServe clients may send texts in contents.bytes_contents instead of raw_input_contents."""
    import grpc
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    request = service_pb2.ModelInferRequest(model_name="classifier", outputs=[{"name": "label"}])
    request.inputs.add(name="text", datatype="BYTES", shape=[2]).contents.bytes_contents.extend(
        [text.encode() for text in TEXTS[:2]]
    )
    with grpc.insecure_channel(server.grpc_address) as channel:
        response = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request)
    assert [(o.name, o.datatype, list(o.shape)) for o in response.outputs] == [("label", "BYTES", [2])]
    (raw,) = response.raw_output_contents
    assert raw == b"".join(len(label).to_bytes(4, "little") + label.encode() for label in expected["label"][:2])


def test_grpc_and_http_share_one_batcher_and_drain_on_sigterm(tiny_bundle, expected):
    import signal
    from concurrent.futures import ThreadPoolExecutor

    import httpx

    # A batching window that only a full batch (the two requests' three inputs) ends before its 5 s: requests from
    # both protocols wait for each other, however slowly the second arrives, and a lone one waits for SIGTERM.
    process = start(tiny_bundle("bert"), "--max-wait-ms", "5000", "--max-batch-size", "3")
    try:

        def over_grpc():
            text = grpcclient.InferInput("text", [1], "BYTES")
            text.set_data_from_numpy(np.array(TEXTS[:1], dtype=object))
            return grpcclient.InferenceServerClient(process.grpc_address).infer("classifier", [text])

        def over_http():
            text = httpclient.InferInput("text", [2], "BYTES")
            text.set_data_from_numpy(np.array(TEXTS[1:], dtype=object))
            return httpclient.InferenceServerClient(process.http_address).infer("classifier", [text])

        with ThreadPoolExecutor(2) as pool:
            grpc_call, http_call = pool.submit(over_grpc), pool.submit(over_http)
            check(grpc_call.result(timeout=30), expected, slice(0, 1))
            check(http_call.result(timeout=30), expected, slice(1, 3))
        metrics = httpx.get(process.url + "/metrics").text
        assert 'classifier_batch_size_count{model="classifier"} 1.0' in metrics  # one batch held both requests
        assert (
            'classifier_requests_total{endpoint="/inference.GRPCInferenceService/ModelInfer",model="classifier",'
            'protocol="grpc",status="200"} 1.0'
        ) in metrics

        with ThreadPoolExecutor(1) as pool:
            in_flight = pool.submit(over_grpc)
            wait_for(lambda: metric_value(process.url, "classifier_admitted_inputs") == 1, "the gRPC input queued")
            process.proc.send_signal(signal.SIGTERM)
            check(in_flight.result(timeout=30), expected, slice(0, 1))
        assert process.proc.wait(timeout=30) == 0
    finally:
        process.stop()
