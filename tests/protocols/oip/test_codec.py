"""The Open Inference Protocol's HTTP codec and its neutral checks: bodies built and read by tritonclient's
own code, exact errors."""

from __future__ import annotations

import gzip
import json
import struct
import zlib

import numpy as np
import pytest
import tritonclient.http as httpclient
from hypothesis import given
from hypothesis import strategies as st
from tritonclient.utils import deserialize_bytes_tensor, serialize_byte_tensor

from service.core.failures import BadRequest, Failure, MalformedBody, PayloadTooLarge, UnsupportedMediaType
from service.protocols.oip import infer
from service.protocols.oip import rest as v2_codec

LIMIT = 1 << 20


def read(body: bytes | dict, headers: dict[str, str] | None = None, max_inputs: int = 8) -> infer.InferCall:
    if isinstance(body, dict):
        body = json.dumps(body).encode()
    request = v2_codec.from_http(body, headers or {}, max_body_bytes=LIMIT)
    return infer.decode(request, max_inputs=max_inputs, pairs=False)


def write(call: infer.InferCall, logits, probabilities, labels) -> tuple[bytes, dict[str, str]]:
    return v2_codec.to_http(infer.respond(call, logits, probabilities, labels, model_name="m", model_version="1"))


def tritonclient_body(texts, binary_data: bool, outputs=None, shape=None):
    tensor = httpclient.InferInput("text", shape or [len(texts)], "BYTES")
    tensor.set_data_from_numpy(np.array(texts, dtype=object).reshape(shape or [len(texts)]), binary_data=binary_data)
    body, header_length = httpclient.InferenceServerClient.generate_request_body([tensor], outputs=outputs)
    headers = {} if header_length is None else {"Inference-Header-Content-Length": str(header_length)}
    return body, headers


@given(st.lists(st.text(max_size=20), max_size=8))
def test_bytes_elements_match_tritonclients_encoding(texts):
    encoded = [text.encode() for text in texts]
    theirs = serialize_byte_tensor(np.array(encoded, dtype=object))
    theirs = theirs.item() if theirs.size else b""
    assert infer.serialize_bytes(encoded) == theirs
    assert infer.deserialize_bytes(theirs, "text") == encoded
    assert deserialize_bytes_tensor(infer.serialize_bytes(encoded)).tolist() == encoded


@pytest.mark.parametrize("binary_data", [True, False], ids=["binary", "json"])
def test_reads_what_tritonclient_sends(binary_data):
    texts = ["what is my balance", "héllo", ""]
    body, headers = tritonclient_body(texts, binary_data)
    call = read(body, headers)
    assert call.texts == texts
    # No outputs named: tritonclient asks for all of them in binary.
    assert call.outputs == tuple(infer.RequestedOutput(name, True) for name in ("logits", "probabilities", "label"))


def test_reads_a_column_and_requested_outputs():
    outputs = [httpclient.InferRequestedOutput("label", binary_data=False), httpclient.InferRequestedOutput("logits")]
    body, headers = tritonclient_body(["a", "b"], True, outputs=outputs, shape=[2, 1])
    call = read(body, headers)
    assert call.texts == ["a", "b"]
    assert call.outputs == (infer.RequestedOutput("label", False), infer.RequestedOutput("logits", True))


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(
            {"inputs": [{"name": "text", "shape": [2, 1], "datatype": "BYTES", "data": [["a"], ["b"]]}]}, id="nested"
        ),
        pytest.param(
            {"inputs": [{"name": "text", "shape": [2, 1], "datatype": "BYTES", "data": ["a", "b"]}]}, id="flat-column"
        ),
        pytest.param(
            {
                "inputs": [{"name": "text", "shape": [2], "datatype": "BYTES", "data": ["a", "b"]}],
                "model_name": "classifier",
                "parameters": {"priority": 1},
            },
            id="extra-fields",
        ),
    ],
)
def test_json_forms(body):
    call = read(body, {"content-type": "application/json"})
    assert call.texts == ["a", "b"]
    assert call.outputs == tuple(infer.RequestedOutput(name) for name in ("logits", "probabilities", "label"))


def test_binary_data_output_applies_unless_an_output_overrides_it():
    body = {
        "inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["a"]}],
        "parameters": {"binary_data_output": True},
        "outputs": [{"name": "label", "parameters": {"binary_data": False}}, {"name": "logits"}],
    }
    assert read(body).outputs == (infer.RequestedOutput("label", False), infer.RequestedOutput("logits", True))


@pytest.mark.parametrize("encoding, compress", [("gzip", gzip.compress), ("deflate", zlib.compress)])
def test_compressed_bodies(encoding, compress):
    body, headers = tritonclient_body(["a", "b"], True)
    assert read(compress(body), {**headers, "Content-Encoding": encoding}).texts == ["a", "b"]


def text_input(**fields):
    return {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", **fields}]}


def binary_body(raw: bytes, size: int | None = None, header_length: int | None = None, **extra):
    head = json.dumps(
        {**text_input(parameters={"binary_data_size": len(raw) if size is None else size}), **extra}
    ).encode()
    return head + raw, {"inference-header-content-length": str(len(head) if header_length is None else header_length)}


ONE = struct.pack("<I", 1) + b"a"


@pytest.mark.parametrize(
    "body, headers, error, message",
    [
        pytest.param(
            b"{}",
            {"content-type": "text/plain"},
            UnsupportedMediaType,
            "content type 'text/plain' is not supported; send application/json, application/octet-stream "
            "(binary tensor data) or no content type",
            id="media-type",
        ),
        pytest.param(
            b"{}",
            {"content-encoding": "br"},
            UnsupportedMediaType,
            "content encoding 'br' is not supported; send gzip, deflate or identity",
            id="encoding",
        ),
        pytest.param(
            b"{}",
            {"content-encoding": "gzip"},
            BadRequest,
            "request body is not valid gzip data: Error -3 while decompressing data: incorrect header check",
            id="not-gzip",
        ),
        pytest.param(
            gzip.compress(b"{}")[:-4],
            {"content-encoding": "gzip"},
            BadRequest,
            "request body is not valid gzip data: it is truncated or has trailing bytes",
            id="truncated-gzip",
        ),
        pytest.param(
            gzip.compress(b" " * (LIMIT + 1)),
            {"content-encoding": "gzip"},
            PayloadTooLarge,
            f"request body exceeds the limit of {LIMIT} bytes once decompressed",
            id="gzip-bomb",
        ),
        pytest.param(
            b"{",
            {},
            MalformedBody,
            "request body is not valid JSON: EOF while parsing an object at line 1 column 1",
            id="json",
        ),
        pytest.param(b"[]", {}, BadRequest, "Input should be an object", id="not-object"),
        pytest.param({"inputs": []}, {}, BadRequest, "inputs: must not be empty", id="no-inputs"),
        pytest.param(
            text_input(data=["a"], shape=[True]),
            {},
            BadRequest,
            "inputs.0.shape.0: Input should be a valid integer",
            id="bool-shape",
        ),
        pytest.param(
            *binary_body(ONE, header_length=1000),
            BadRequest,
            "Inference-Header-Content-Length is '1000'; it must be a whole number of bytes, at most the body's "
            f"{len(binary_body(ONE)[0])}",
            id="header-too-long",
        ),
        pytest.param(
            b"{}",
            {"inference-header-content-length": "-1"},
            BadRequest,
            "Inference-Header-Content-Length is '-1'; it must be a whole number of bytes, at most the body's 2",
            id="header-negative",
        ),
        pytest.param(
            *binary_body(ONE, size=6),
            BadRequest,
            "input 'text' declares 6 bytes of binary data but only 5 remain after the JSON part",
            id="size-over",
        ),
        pytest.param(
            *binary_body(ONE + b"xx"),
            BadRequest,
            "binary data of input 'text' ends inside the length of element 1",
            id="length-cut",
        ),
        pytest.param(
            *binary_body(ONE, size=3),
            BadRequest,
            "2 bytes follow the JSON part that no input's parameters.binary_data_size accounts for",
            id="trailing",
        ),
        pytest.param(
            *binary_body(ONE, size="5"),
            BadRequest,
            "parameters.binary_data_size of input 'text' must be a whole number of bytes, got '5'",
            id="size-type",
        ),
        pytest.param(
            *binary_body(struct.pack("<I", 9) + b"a"),
            BadRequest,
            "element 0 of input 'text' declares 9 bytes but only 1 remain",
            id="element-over",
        ),
        pytest.param(
            *binary_body(struct.pack("<I", 1) + b"\xff"),
            BadRequest,
            "element 0 of input 'text' is not valid UTF-8",
            id="utf-8",
        ),
        pytest.param(
            text_input(data=["a"], parameters={"binary_data_size": 0}),
            {},
            BadRequest,
            "input 'text' has both data and parameters.binary_data_size; send one",
            id="both",
        ),
        pytest.param(
            text_input(), {}, BadRequest, "input 'text' has neither data nor parameters.binary_data_size", id="neither"
        ),
        pytest.param(
            text_input(parameters={"shared_memory_region": "r"}),
            {},
            BadRequest,
            "input 'text' uses the shared-memory extension, which this server does not support",
            id="shm",
        ),
        pytest.param(
            {**text_input(data=["a"]), "outputs": [{"name": "label", "parameters": {"shared_memory_region": "r"}}]},
            {},
            BadRequest,
            "output 'label' uses the shared-memory extension, which this server does not support",
            id="output-shm",
        ),
        pytest.param(
            text_input(data=[5]),
            {},
            BadRequest,
            "element 0 of input 'text' is 5; BYTES elements in JSON are strings",
            id="number",
        ),
        pytest.param(
            text_input(data=[["a", "b"]]), {}, BadRequest, "input 'text' has shape [1] but 2 elements", id="count"
        ),
        pytest.param(
            text_input(data=["a"], shape=[1, 2]),
            {},
            BadRequest,
            "input 'text' has shape [1, 2]; the model expects [n] or [n, 1]",
            id="shape",
        ),
        pytest.param(text_input(data=[], shape=[0]), {}, BadRequest, "input 'text' holds no texts", id="empty"),
        pytest.param(
            text_input(data=["a"] * 9, shape=[9]),
            {},
            BadRequest,
            "9 inputs is more than the limit of 8 per request",
            id="too-many",
        ),
        pytest.param(
            text_input(data=["a"], datatype="INT64"),
            {},
            BadRequest,
            "input 'text' has datatype 'INT64'; the model expects BYTES",
            id="datatype",
        ),
        pytest.param(
            {"inputs": [{"name": "txt", "shape": [1], "datatype": "BYTES", "data": ["a"]}]},
            {},
            BadRequest,
            "unknown input 'txt'; the model's only input is 'text' (BYTES)",
            id="name",
        ),
        pytest.param(
            {"inputs": text_input(data=["a"])["inputs"] * 2},
            {},
            BadRequest,
            "input 'text' is given 2 times; send it once",
            id="twice",
        ),
        pytest.param(
            {**text_input(data=["a"]), "outputs": [{"name": "embedding"}]},
            {},
            BadRequest,
            "unknown output 'embedding'; the model's outputs are 'logits', 'probabilities' and 'label'",
            id="output",
        ),
        pytest.param(
            {**text_input(data=["a"]), "outputs": [{"name": "label"}, {"name": "label"}]},
            {},
            BadRequest,
            "output 'label' is requested twice",
            id="output-twice",
        ),
        pytest.param(
            {**text_input(data=["a"]), "outputs": [{"name": "label", "parameters": {"classification": 2}}]},
            {},
            BadRequest,
            "the classification extension is not supported; request 'probabilities' and 'label'",
            id="classification",
        ),
        pytest.param(
            {**text_input(data=["a"]), "outputs": [{"name": "label", "parameters": {"binary_data": 1}}]},
            {},
            BadRequest,
            "parameter 'binary_data' must be true or false, got 1",
            id="binary-data-type",
        ),
        pytest.param(
            {**text_input(data=["a"]), "parameters": {"binary_data_output": "yes"}},
            {},
            BadRequest,
            "parameter 'binary_data_output' must be true or false, got 'yes'",
            id="binary-output-type",
        ),
    ],
)
def test_refusals(body, headers, error, message):
    with pytest.raises(Failure) as raised:
        read(body, headers)
    assert type(raised.value) is error
    assert raised.value.message == message


def test_outputs_round_trip_through_tritonclient():
    logits = np.array([[1.5, -2.0, 0.25], [0.0, 3.0, -1.0]], dtype=np.float32)
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    outputs = (
        infer.RequestedOutput("label", True),
        infer.RequestedOutput("logits", False),
        infer.RequestedOutput("probabilities", True),
    )
    body, headers = write(infer.InferCall(["x", "y"], outputs, "id-1"), logits, probabilities, ["ünï", "b", "c"])
    assert headers["content-type"] == "application/octet-stream"
    head_length = int(headers["inference-header-content-length"])
    assert json.loads(body[:head_length]) == {
        "model_name": "m",
        "model_version": "1",
        "id": "id-1",
        "outputs": [
            {"name": "label", "datatype": "BYTES", "shape": [2], "parameters": {"binary_data_size": 4 + 5 + 4 + 1}},
            {"name": "logits", "datatype": "FP32", "shape": [2, 3], "data": [1.5, -2.0, 0.25, 0.0, 3.0, -1.0]},
            {"name": "probabilities", "datatype": "FP32", "shape": [2, 3], "parameters": {"binary_data_size": 24}},
        ],
    }
    result = httpclient.InferenceServerClient.parse_response_body(body, header_length=head_length)
    assert result.as_numpy("label").tolist() == ["ünï".encode(), b"b"]
    np.testing.assert_array_equal(result.as_numpy("logits"), logits)
    np.testing.assert_array_equal(result.as_numpy("probabilities"), probabilities.astype(np.float32))


def test_json_only_response_has_no_header_length():
    body, headers = write(
        infer.InferCall(["x"], (infer.RequestedOutput("label"),)),
        np.zeros((1, 2), np.float32),
        np.full((1, 2), 0.5),
        ["a", "b"],
    )
    assert headers == {"content-type": "application/json"}
    assert json.loads(body) == {
        "model_name": "m",
        "model_version": "1",
        "outputs": [{"name": "label", "datatype": "BYTES", "shape": [1], "data": ["a"]}],
    }
