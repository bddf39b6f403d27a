"""Open Inference Protocol v2 bodies, as tritonclient and KServe clients send them.

Pure functions, no web framework: a request body and its headers in, texts out;
output arrays in, a response body and its headers out. Both HTTP forms are read
and written:

- JSON: ``{"inputs": [{"name": "text", "datatype": "BYTES", "shape": [2], "data": ["a", "b"]}]}``.
  ``data`` may also be nested (``[["a"], ["b"]]`` with shape ``[2, 1]``).
- The binary tensor data extension (tritonclient's default): the
  ``Inference-Header-Content-Length`` header gives the length of the JSON part;
  the raw bytes of the inputs follow it in input order, ``parameters.binary_data_size``
  bytes each. A BYTES element is a 4-byte little-endian length, then its bytes.
  Outputs come back the same way when asked (``binary_data`` on a requested
  output, or ``binary_data_output`` on the request).

The model's side of the protocol (one BYTES input ``text``; ``logits``,
``probabilities`` and ``label`` out) is declared here once; gRPC uses it too.
Every refusal is a ``BadRequest`` (400), as Triton answers a bad request.
"""

from __future__ import annotations

import json
import re
import struct
import zlib
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, ValidationError

from service.errors import BadRequest, MalformedJson, PayloadTooLarge, UnsupportedMediaType
from service.http import describe

MODEL_VERSION = "1"
INPUT_NAME = "text"
PAIR_INPUT_NAME = "text_pair"
OUTPUT_DATATYPES = {"logits": "FP32", "probabilities": "FP32", "label": "BYTES"}
EXTENSIONS = ("binary_tensor_data",)
HEADER_LENGTH = "inference-header-content-length"
# Triton reads a request without a Content-Type as JSON, and tritonclient sends none.
MEDIA_TYPES = ("", "application/json", "application/octet-stream")


def input_names(pairs: bool) -> tuple[str, ...]:
    """The model's inputs: ``text``, and ``text_pair`` for a text-pair model."""
    return (INPUT_NAME, PAIR_INPUT_NAME) if pairs else (INPUT_NAME,)


def model_metadata(model_name: str, width: int, pairs: bool = False,
                   versions: Sequence[str] = (MODEL_VERSION,)) -> dict[str, Any]:
    """The model metadata response; ``width`` is the number of labels."""
    return {
        "name": model_name,
        "versions": list(versions),
        "platform": "onnxruntime_onnx",
        "inputs": [{"name": name, "datatype": "BYTES", "shape": [-1]} for name in input_names(pairs)],
        "outputs": [
            {"name": "logits", "datatype": "FP32", "shape": [-1, width]},
            {"name": "probabilities", "datatype": "FP32", "shape": [-1, width]},
            {"name": "label", "datatype": "BYTES", "shape": [-1]},
        ],
    }


# Wire models of the JSON part ----------------------------------------------------

class InferInputTensor(BaseModel):
    model_config = ConfigDict(extra="ignore")

    name: StrictStr
    shape: list[StrictInt]
    datatype: StrictStr
    parameters: dict[str, Any] | None = None
    data: list[Any] | None = Field(None, description="flat or nested; absent when the bytes follow the JSON part")


class InferRequestedOutput(BaseModel):
    model_config = ConfigDict(extra="ignore")

    name: StrictStr
    parameters: dict[str, Any] | None = None


class InferRequest(BaseModel):
    """An inference request; ``model_name`` and other extra fields are ignored, as in Triton."""

    model_config = ConfigDict(extra="ignore")

    id: StrictStr | None = None
    parameters: dict[str, Any] | None = None
    inputs: list[InferInputTensor] = Field(min_length=1)
    outputs: list[InferRequestedOutput] | None = None


class InferOutputTensor(BaseModel):
    name: str
    datatype: str
    shape: list[int]
    parameters: dict[str, Any] | None = None
    data: list[Any] | None = None


class InferResponse(BaseModel):
    model_name: str
    model_version: str
    id: str | None = None
    outputs: list[InferOutputTensor]


# Decoded request -----------------------------------------------------------------

@dataclass(frozen=True)
class Tensor:
    """An input as sent: its elements are either raw bytes or (possibly nested) data."""

    name: str
    datatype: str
    shape: Sequence[int]
    raw: bytes | None = None
    data: list[Any] | None = None


@dataclass(frozen=True)
class RequestedOutput:
    name: str
    binary: bool = False


@dataclass(frozen=True)
class InferCall:
    texts: list[str | tuple[str, str]]
    outputs: tuple[RequestedOutput, ...]
    id: str | None = None


def read_request(
    body: bytes, headers: Mapping[str, str], *, max_inputs: int, max_body_bytes: int, pairs: bool = False
) -> InferCall:
    """Decode an HTTP inference request; ``body`` is what arrived, at most ``max_body_bytes``."""
    headers = {key.lower(): value for key, value in headers.items()}
    media_type = headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type not in MEDIA_TYPES:
        raise UnsupportedMediaType(
            f"content type {media_type!r} is not supported; send application/json, "
            "application/octet-stream (binary tensor data) or no content type"
        )
    body = _decompress(body, headers.get("content-encoding", ""), max_body_bytes)
    head, binary = _split(body, headers.get(HEADER_LENGTH))
    request = _parse(head)
    tensors = []
    for tensor in request.inputs:
        _refuse_shared_memory(tensor.parameters, f"input {tensor.name!r}")
        size = (tensor.parameters or {}).get("binary_data_size")
        if size is None:
            if tensor.data is None:
                raise BadRequest(f"input {tensor.name!r} has neither data nor parameters.binary_data_size")
            tensors.append(Tensor(tensor.name, tensor.datatype, tensor.shape, data=tensor.data))
            continue
        if tensor.data is not None:
            raise BadRequest(f"input {tensor.name!r} has both data and parameters.binary_data_size; send one")
        if type(size) is not int or size < 0:
            raise BadRequest(f"parameters.binary_data_size of input {tensor.name!r} must be a whole number "
                             f"of bytes, got {size!r}")
        if size > len(binary):
            raise BadRequest(f"input {tensor.name!r} declares {size} bytes of binary data but only "
                             f"{len(binary)} remain after the JSON part")
        tensors.append(Tensor(tensor.name, tensor.datatype, tensor.shape, raw=binary[:size]))
        binary = binary[size:]
    if binary:
        raise BadRequest(f"{len(binary)} bytes follow the JSON part that no input's parameters.binary_data_size accounts for")
    return InferCall(texts_from(tensors, max_inputs=max_inputs, pairs=pairs), requested_outputs(request), request.id)


def _decompress(body: bytes, encoding: str, limit: int) -> bytes:
    """tritonclient compresses requests with gzip or deflate (zlib) when asked."""
    encoding = encoding.strip().lower()
    if encoding in ("", "identity"):
        return body
    if encoding not in ("gzip", "deflate"):
        raise UnsupportedMediaType(f"content encoding {encoding!r} is not supported; send gzip, deflate or identity")
    inflater = zlib.decompressobj(zlib.MAX_WBITS | (16 if encoding == "gzip" else 0))
    try:
        plain = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        raise BadRequest(f"request body is not valid {encoding} data: {exc}") from None
    if len(plain) > limit:
        raise PayloadTooLarge(f"request body exceeds the limit of {limit} bytes once decompressed")
    if not inflater.eof or inflater.unused_data:
        raise BadRequest(f"request body is not valid {encoding} data: it is truncated or has trailing bytes")
    return plain


def _split(body: bytes, header_length: str | None) -> tuple[bytes, bytes]:
    if header_length is None:
        return body, b""
    length = header_length.strip()
    if not re.fullmatch(r"[0-9]{1,19}", length) or int(length) > len(body):
        raise BadRequest(f"Inference-Header-Content-Length is {header_length!r}; it must be a whole number "
                         f"of bytes, at most the body's {len(body)}")
    return body[: int(length)], body[int(length):]


def _parse(head: bytes) -> InferRequest:
    # One pass, as every JSON body here: lone surrogates, invalid UTF-8 and deep nesting
    # are malformed JSON before anything else runs.
    try:
        return InferRequest.model_validate_json(head)
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        if any(error["type"] == "json_invalid" for error in errors):
            raise MalformedJson(f"request body is not valid JSON: {errors[0]['ctx']['error']}") from None
        raise BadRequest(describe(errors)) from None


def _refuse_shared_memory(parameters: Mapping[str, Any] | None, what: str) -> None:
    if parameters and "shared_memory_region" in parameters:
        raise BadRequest(f"{what} uses the shared-memory extension, which this server does not support")


def _bool_parameter(parameters: Mapping[str, Any] | None, key: str, default: bool) -> bool:
    value = (parameters or {}).get(key, default)
    if not isinstance(value, bool):
        raise BadRequest(f"parameter {key!r} must be true or false, got {value!r}")
    return value


def requested_outputs(request: InferRequest) -> tuple[RequestedOutput, ...]:
    """Which outputs, in which order, and which of them in binary."""
    binary = _bool_parameter(request.parameters, "binary_data_output", False)
    if not request.outputs:
        return tuple(RequestedOutput(name, binary) for name in OUTPUT_DATATYPES)
    wanted: list[RequestedOutput] = []
    for output in request.outputs:
        check_output_name(output.name, [w.name for w in wanted])
        _refuse_shared_memory(output.parameters, f"output {output.name!r}")
        if "classification" in (output.parameters or {}):
            raise BadRequest("the classification extension is not supported; request 'probabilities' and 'label'")
        wanted.append(RequestedOutput(output.name, _bool_parameter(output.parameters, "binary_data", binary)))
    return tuple(wanted)


def check_output_name(name: str, earlier: Sequence[str]) -> None:
    if name not in OUTPUT_DATATYPES:
        raise BadRequest(f"unknown output {name!r}; the model's outputs are 'logits', 'probabilities' and 'label'")
    if name in earlier:
        raise BadRequest(f"output {name!r} is requested twice")


# The model's input ------------------------------------------------------------------

def texts_from(tensors: Sequence[Tensor], *, max_inputs: int, pairs: bool = False) -> list[str | tuple[str, str]]:
    """Check the inputs against the model metadata and return the texts (or text pairs)."""
    names = input_names(pairs)
    for tensor in tensors:
        if tensor.name not in names:
            expected = f"inputs are {INPUT_NAME!r} and {PAIR_INPUT_NAME!r}" if pairs else f"only input is {INPUT_NAME!r}"
            raise BadRequest(f"unknown input {tensor.name!r}; the model's {expected} (BYTES)")
    for name in names:
        given = sum(tensor.name == name for tensor in tensors)
        if given != 1:
            raise BadRequest(f"input {name!r} is given {given} times; send it once")
    by_name = {tensor.name: _texts(tensor, max_inputs) for tensor in tensors}
    texts = by_name[INPUT_NAME]
    if not pairs:
        return list(texts)
    pair_texts = by_name[PAIR_INPUT_NAME]
    if len(pair_texts) != len(texts):
        raise BadRequest(f"inputs {INPUT_NAME!r} and {PAIR_INPUT_NAME!r} hold {len(texts)} and "
                         f"{len(pair_texts)} texts; send one text_pair per text")
    return list(zip(texts, pair_texts))


def _texts(tensor: Tensor, max_inputs: int) -> list[str]:
    name = tensor.name
    if tensor.datatype != "BYTES":
        raise BadRequest(f"input {name!r} has datatype {tensor.datatype!r}; the model expects BYTES")
    shape = list(tensor.shape)
    # [n, 1] is the shape of a column of texts, which numpy users often send.
    if len(shape) not in (1, 2) or (len(shape) == 2 and shape[1] != 1) or shape[0] < 0:
        raise BadRequest(f"input {name!r} has shape {shape}; the model expects [n] or [n, 1]")
    count = shape[0]
    if count == 0:
        raise BadRequest(f"input {name!r} holds no texts")
    if count > max_inputs:
        raise BadRequest(f"{count} inputs is more than the limit of {max_inputs} per request")
    elements = deserialize_bytes(tensor.raw, name) if tensor.raw is not None else _flatten(tensor.data or [])
    if len(elements) != count:
        raise BadRequest(f"input {name!r} has shape {shape} but {len(elements)} elements")
    texts = []
    for index, element in enumerate(elements):
        if isinstance(element, str):
            texts.append(element)
            continue
        if not isinstance(element, bytes):
            raise BadRequest(f"element {index} of input {name!r} is {json.dumps(element)}; BYTES elements "
                             "in JSON are strings")
        try:
            texts.append(element.decode("utf-8"))
        except UnicodeDecodeError:
            raise BadRequest(f"element {index} of input {name!r} is not valid UTF-8") from None
    return texts


def _flatten(data: list[Any]) -> list[Any]:
    """Row-major elements of flat or nested ``data``; iterative, so depth cannot exhaust the stack."""
    flat: list[Any] = []
    stack = [iter(data)]
    while stack:
        for item in stack[-1]:
            if isinstance(item, list):
                stack.append(iter(item))
                break
            flat.append(item)
        else:
            stack.pop()
    return flat


def deserialize_bytes(raw: bytes, name: str) -> list[bytes]:
    """BYTES elements from their wire form: each a 4-byte little-endian length, then the bytes."""
    elements: list[bytes] = []
    offset = 0
    while offset < len(raw):
        if offset + 4 > len(raw):
            raise BadRequest(f"binary data of input {name!r} ends inside the length of element {len(elements)}")
        (length,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        if offset + length > len(raw):
            raise BadRequest(f"element {len(elements)} of input {name!r} declares {length} bytes but only "
                             f"{len(raw) - offset} remain")
        elements.append(raw[offset : offset + length])
        offset += length
    return elements


def serialize_bytes(elements: Iterable[bytes]) -> bytes:
    return b"".join(struct.pack("<I", len(element)) + element for element in elements)


# The model's outputs ----------------------------------------------------------------

def output_tensors(logits: np.ndarray, probabilities: np.ndarray, labels: Sequence[str]) -> dict[str, np.ndarray]:
    return {
        "logits": logits.astype(np.float32),
        "probabilities": probabilities.astype(np.float32),
        "label": np.array([labels[i] for i in probabilities.argmax(axis=1)], dtype=object),
    }


def raw_bytes(array: np.ndarray) -> bytes:
    """An output's binary form: little-endian FP32, or length-prefixed UTF-8 for BYTES."""
    if array.dtype == object:
        return serialize_bytes(str(item).encode("utf-8") for item in array.ravel())
    return np.ascontiguousarray(array, dtype="<f4").tobytes()


def write_response(call: InferCall, tensors: Mapping[str, np.ndarray], *, model_name: str,
                   model_version: str = MODEL_VERSION) -> tuple[bytes, dict[str, str]]:
    """The response body and its content headers; binary outputs follow the JSON part in output order."""
    response: dict[str, Any] = {"model_name": model_name, "model_version": model_version}
    if call.id is not None:
        response["id"] = call.id
    outputs, chunks = [], []
    for wanted in call.outputs:
        array = tensors[wanted.name]
        output: dict[str, Any] = {"name": wanted.name, "datatype": OUTPUT_DATATYPES[wanted.name], "shape": list(array.shape)}
        if wanted.binary:
            chunks.append(raw_bytes(array))
            output["parameters"] = {"binary_data_size": len(chunks[-1])}
        else:
            output["data"] = array.ravel().tolist()
        outputs.append(output)
    response["outputs"] = outputs
    head = json.dumps(response, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode("utf-8")
    if not chunks:
        return head, {"content-type": "application/json"}
    return head + b"".join(chunks), {"content-type": "application/octet-stream", HEADER_LENGTH: str(len(head))}
