"""The Open Inference Protocol's inference call, whatever carried it: decoded once, checked once.

Each transport parses its own wire form into the neutral ``InferRequest`` below
(``rest.from_http`` for JSON and binary tensors, ``grpc_service.from_grpc`` for
protobuf) and encodes the neutral ``InferResponse`` back; ``dataplane.model_infer``
runs the call between them. Every rule of the
model's side of the protocol lives here, so HTTP and gRPC cannot disagree:

- one BYTES input ``text`` (and ``text_pair`` for a pair model), shape ``[n]`` or ``[n, 1]``;
- outputs ``logits`` and ``probabilities`` (FP32) and ``label`` (BYTES), each at most once;
- no shared-memory regions (inputs or outputs), no classification extension;
- ``binary_data`` / ``binary_data_output`` are booleans;
- long texts (docs/long-texts.md): request parameters ``truncate`` and ``windows`` (booleans),
  ``window_overlap`` (a whole number of tokens) and ``aggregation`` (``mean`` or ``max``); the
  response parameters ``truncated_inputs`` and ``windows`` say what happened (``service.protocols.reports``).

Every refusal is a ``BadRequest``, as Triton answers a bad request.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from service.core.failures import BadRequest
from service.core.urgency import priority_parameter, timeout_parameter
from service.core.windows import AGGREGATIONS, InputReport, Windowing
from service.protocols.reports import report_fields

INPUT_NAME = "text"
PAIR_INPUT_NAME = "text_pair"
OUTPUT_DATATYPES = {"logits": "FP32", "probabilities": "FP32", "label": "BYTES"}
EXTENSIONS = ("binary_tensor_data",)


@dataclass(frozen=True)
class Tensor:
    """An input as sent: its elements are either raw bytes (length-prefixed BYTES) or (possibly nested) data."""

    name: str
    datatype: str
    shape: Sequence[int]
    parameters: Mapping[str, Any] = field(default_factory=dict)
    raw: bytes | None = None
    data: list[Any] | None = None


@dataclass(frozen=True)
class OutputRequest:
    name: str
    parameters: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class InferRequest:
    inputs: Sequence[Tensor]
    outputs: Sequence[OutputRequest] = ()
    parameters: Mapping[str, Any] = field(default_factory=dict)
    id: str | None = None


@dataclass(frozen=True)
class RequestedOutput:
    name: str
    binary: bool = False


@dataclass(frozen=True)
class LongTexts:
    """A request's long-text parameters; None leaves the model's default."""

    truncate: bool = True
    windows: bool | None = None
    window_overlap: int | None = None
    aggregation: str | None = None

    def windowing(self, defaults: Windowing) -> Windowing:
        return defaults.overridden(enabled=self.windows, overlap=self.window_overlap, aggregation=self.aggregation)


@dataclass(frozen=True)
class InferCall:
    """A checked request: the texts to classify, how to read them and the outputs to send back."""

    texts: list[str | tuple[str, str]]
    outputs: tuple[RequestedOutput, ...]
    id: str | None = None
    long_texts: LongTexts = LongTexts()
    deadline: float | None = None  # from the ``timeout`` parameter
    priority: int | None = None  # from the ``priority`` parameter


@dataclass(frozen=True)
class OutputTensor:
    name: str
    datatype: str
    array: np.ndarray
    binary: bool


@dataclass(frozen=True)
class InferResponse:
    model_name: str
    model_version: str
    id: str | None
    outputs: list[OutputTensor]
    parameters: dict[str, str] = field(default_factory=dict)


def input_names(pairs: bool) -> tuple[str, ...]:
    """The model's inputs: ``text``, and ``text_pair`` for a text-pair model."""
    return (INPUT_NAME, PAIR_INPUT_NAME) if pairs else (INPUT_NAME,)


def model_metadata(model_name: str, width: int, pairs: bool, versions: Sequence[str]) -> dict[str, Any]:
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


def declared_inputs(tensors: Sequence[Any], max_inputs: int) -> int:
    """How many texts the request's ``text`` input declares by its shape, known before any element is
    decoded; 0 when it does not say, or says more than ``max_inputs`` (``decode`` refuses that)."""
    for tensor in tensors:
        if tensor.name == INPUT_NAME and len(tensor.shape) in (1, 2) and 0 < tensor.shape[0] <= max_inputs:
            return int(tensor.shape[0])
    return 0


def decode(request: InferRequest, *, max_inputs: int, pairs: bool) -> InferCall:
    """Check a request against the model and return what to run and what to answer."""
    for tensor in request.inputs:
        _refuse_shared_memory(tensor.parameters, f"input {tensor.name!r}")
        if tensor.raw is None and tensor.data is None:  # gRPC always has data, if only an empty list
            raise BadRequest(f"input {tensor.name!r} has neither data nor parameters.binary_data_size")
    outputs = requested_outputs(request)
    texts = texts_from(request.inputs, max_inputs=max_inputs, pairs=pairs)
    parameters = request.parameters
    timeout = parameters.get("timeout")
    priority = parameters.get("priority")
    return InferCall(
        texts,
        outputs,
        request.id,
        long_texts(parameters),
        None if timeout is None else timeout_parameter(timeout),
        None if priority is None else priority_parameter(priority),
    )


def long_texts(parameters: Mapping[str, Any]) -> LongTexts:
    """The request's long-text parameters, checked."""
    windows = parameters.get("windows")
    if windows is not None and not isinstance(windows, bool):
        raise BadRequest(f"parameter 'windows' must be true or false, got {windows!r}")
    overlap = parameters.get("window_overlap")
    if overlap is not None and (isinstance(overlap, bool) or not isinstance(overlap, int) or overlap < 0):
        raise BadRequest(f"parameter 'window_overlap' must be a whole number of tokens, at least 0, got {overlap!r}")
    aggregation = parameters.get("aggregation")
    if aggregation is not None and aggregation not in AGGREGATIONS:
        raise BadRequest(f"parameter 'aggregation' must be 'mean' or 'max', got {aggregation!r}")
    return LongTexts(_bool_parameter(parameters, "truncate", True), windows, overlap, aggregation)


def requested_outputs(request: InferRequest) -> tuple[RequestedOutput, ...]:
    """Which outputs, in which order, and which of them in binary."""
    binary = _bool_parameter(request.parameters, "binary_data_output", False)
    if not request.outputs:
        return tuple(RequestedOutput(name, binary) for name in OUTPUT_DATATYPES)
    wanted: list[RequestedOutput] = []
    for output in request.outputs:
        if output.name not in OUTPUT_DATATYPES:
            raise BadRequest(
                f"unknown output {output.name!r}; the model's outputs are 'logits', 'probabilities' and 'label'"
            )
        if any(earlier.name == output.name for earlier in wanted):
            raise BadRequest(f"output {output.name!r} is requested twice")
        _refuse_shared_memory(output.parameters, f"output {output.name!r}")
        if "classification" in output.parameters:
            raise BadRequest("the classification extension is not supported; request 'probabilities' and 'label'")
        wanted.append(RequestedOutput(output.name, _bool_parameter(output.parameters, "binary_data", binary)))
    return tuple(wanted)


def _refuse_shared_memory(parameters: Mapping[str, Any], what: str) -> None:
    if "shared_memory_region" in parameters:
        raise BadRequest(f"{what} uses the shared-memory extension, which this server does not support")


def _bool_parameter(parameters: Mapping[str, Any], key: str, default: bool) -> bool:
    value = parameters.get(key, default)
    if not isinstance(value, bool):
        raise BadRequest(f"parameter {key!r} must be true or false, got {value!r}")
    return value


def texts_from(tensors: Sequence[Tensor], *, max_inputs: int, pairs: bool = False) -> list[str | tuple[str, str]]:
    """Check the inputs against the model metadata and return the texts (or text pairs)."""
    names = input_names(pairs)
    for tensor in tensors:
        if tensor.name not in names:
            expected = (
                f"inputs are {INPUT_NAME!r} and {PAIR_INPUT_NAME!r}" if pairs else f"only input is {INPUT_NAME!r}"
            )
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
        raise BadRequest(
            f"inputs {INPUT_NAME!r} and {PAIR_INPUT_NAME!r} hold {len(texts)} and "
            f"{len(pair_texts)} texts; send one text_pair per text"
        )
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
    elements = deserialize_bytes(tensor.raw, name) if tensor.raw is not None else flatten(tensor.data or [])
    if len(elements) != count:
        raise BadRequest(f"input {name!r} has shape {shape} but {len(elements)} elements")
    texts = []
    for index, element in enumerate(elements):
        if isinstance(element, str):
            texts.append(element)
            continue
        if not isinstance(element, bytes):
            raise BadRequest(
                f"element {index} of input {name!r} is {json.dumps(element)}; BYTES elements in JSON are strings"
            )
        try:
            texts.append(element.decode("utf-8"))
        except UnicodeDecodeError:
            raise BadRequest(f"element {index} of input {name!r} is not valid UTF-8") from None
    return texts


def flatten(data: list[Any]) -> list[Any]:
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
            raise BadRequest(
                f"element {len(elements)} of input {name!r} declares {length} bytes but only {len(raw) - offset} remain"
            )
        elements.append(raw[offset : offset + length])
        offset += length
    return elements


def serialize_bytes(elements: Iterable[bytes]) -> bytes:
    return b"".join(struct.pack("<I", len(element)) + element for element in elements)


def respond(
    call: InferCall,
    logits: np.ndarray,
    probabilities: np.ndarray,
    labels: Sequence[str],
    *,
    model_name: str,
    model_version: str,
    reports: Sequence[InputReport] = (),
) -> InferResponse:
    """The requested outputs of a classified call, in the order asked."""
    arrays = {
        "logits": lambda: logits.astype(np.float32),
        "probabilities": lambda: probabilities.astype(np.float32),
        "label": lambda: np.array([labels[i] for i in probabilities.argmax(axis=1)], dtype=object),
    }
    outputs = [
        OutputTensor(wanted.name, OUTPUT_DATATYPES[wanted.name], arrays[wanted.name](), wanted.binary)
        for wanted in call.outputs
    ]
    return InferResponse(model_name, model_version, call.id, outputs, report_fields(reports))


def raw_bytes(array: np.ndarray) -> bytes:
    """An output's binary form: little-endian FP32, or length-prefixed UTF-8 for BYTES."""
    if array.dtype == object:
        return serialize_bytes(str(item).encode("utf-8") for item in array.ravel())
    return np.ascontiguousarray(array, dtype="<f4").tobytes()
