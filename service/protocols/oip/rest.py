"""The Open Inference Protocol over HTTP (KServe v2 / Triton), as tritonclient.http and KServe clients send it.

Two body forms are read into the neutral ``infer.InferRequest`` and written from
the neutral ``infer.InferResponse``:

- JSON: ``{"inputs": [{"name": "text", "datatype": "BYTES", "shape": [2], "data": ["a", "b"]}]}``.
  ``data`` may also be nested (``[["a"], ["b"]]`` with shape ``[2, 1]``).
- The binary tensor data extension (tritonclient's default): the
  ``Inference-Header-Content-Length`` header gives the length of the JSON part;
  the raw bytes of the inputs follow it in input order, ``parameters.binary_data_size``
  bytes each. Outputs come back the same way when asked (``binary_data`` on a
  requested output, or ``binary_data_output`` on the request).

Errors on these routes are the protocol's body (its clients read ``error``), 400 for a bad request.
"""

from __future__ import annotations

import json
import re
import zlib
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from service import NAME, __version__
from service.core.failures import BadRequest, NotReady, PayloadTooLarge, UnsupportedMediaType
from service.core.loaded import Loaded
from service.protocols.oip import dataplane, infer
from service.protocols.validation import parse
from service.web.bodies import read_body
from service.web.responses import ModelState, timing_headers
from service.web.routing import CALL, Endpoint, hold

HEADER_LENGTH = "inference-header-content-length"
# Triton reads a request without a Content-Type as JSON, and tritonclient sends none.
MEDIA_TYPES = ("", "application/json", "application/octet-stream")


# Wire models of the JSON part (validation and the OpenAPI document) -------------------------


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
    parameters: dict[str, Any] | None = Field(
        None,
        description="binary_data_output; and for long texts truncate, windows, window_overlap, aggregation",
    )
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
    parameters: dict[str, str] | None = Field(
        None,
        description="present when an input was cut or read in windows: truncated_inputs (their positions, "
        "comma-separated) and windows (each input's window count, comma-separated)",
    )
    outputs: list[InferOutputTensor]


class ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]


class TensorMetadata(BaseModel):
    name: str
    datatype: str
    shape: list[int]


class ModelMetadata(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]
    parameters: dict[str, Any] | None = Field(
        None,
        description="engine: what runs the graph on this machine and why; reverification: the bundle's reference "
        "set run again on this CPU at load",
    )


class Ready(BaseModel):
    ready: bool
    name: str | None = None


class Live(BaseModel):
    live: bool


# Bodies in and out ------------------------------------------------------------------------


def from_http(body: bytes, headers: Mapping[str, str], *, max_body_bytes: int) -> infer.InferRequest:
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
    request = parse(InferRequest, head, invalid=BadRequest)
    tensors = []
    for tensor in request.inputs:
        parameters = tensor.parameters or {}
        size = parameters.get("binary_data_size")
        if size is None:
            tensors.append(infer.Tensor(tensor.name, tensor.datatype, tensor.shape, parameters, data=tensor.data))
            continue
        if tensor.data is not None:
            raise BadRequest(f"input {tensor.name!r} has both data and parameters.binary_data_size; send one")
        if type(size) is not int or size < 0:
            raise BadRequest(
                f"parameters.binary_data_size of input {tensor.name!r} must be a whole number of bytes, got {size!r}"
            )
        if size > len(binary):
            raise BadRequest(
                f"input {tensor.name!r} declares {size} bytes of binary data but only "
                f"{len(binary)} remain after the JSON part"
            )
        tensors.append(infer.Tensor(tensor.name, tensor.datatype, tensor.shape, parameters, raw=binary[:size]))
        binary = binary[size:]
    if binary:
        raise BadRequest(
            f"{len(binary)} bytes follow the JSON part that no input's parameters.binary_data_size accounts for"
        )
    outputs = [infer.OutputRequest(output.name, output.parameters or {}) for output in request.outputs or ()]
    return infer.InferRequest(tensors, outputs, request.parameters or {}, request.id)


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
        raise BadRequest(
            f"Inference-Header-Content-Length is {header_length!r}; it must be a whole number "
            f"of bytes, at most the body's {len(body)}"
        )
    return body[: int(length)], body[int(length) :]


def to_http(response: infer.InferResponse) -> tuple[bytes, dict[str, str]]:
    """The response body and its content headers; binary outputs follow the JSON part in output order."""
    head: dict[str, Any] = {"model_name": response.model_name, "model_version": response.model_version}
    if response.id is not None:
        head["id"] = response.id
    if response.parameters:
        head["parameters"] = response.parameters
    outputs, chunks = [], []
    for tensor in response.outputs:
        output: dict[str, Any] = {"name": tensor.name, "datatype": tensor.datatype, "shape": list(tensor.array.shape)}
        if tensor.binary:
            chunks.append(infer.raw_bytes(tensor.array))
            output["parameters"] = {"binary_data_size": len(chunks[-1])}
        else:
            output["data"] = tensor.array.ravel().tolist()
        outputs.append(output)
    head["outputs"] = outputs
    content = json.dumps(head, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode("utf-8")
    if not chunks:
        return content, {"content-type": "application/json"}
    return content + b"".join(chunks), {"content-type": "application/octet-stream", HEADER_LENGTH: str(len(content))}


# Routes -------------------------------------------------------------------------------------


def _model(request: Request) -> Loaded:
    """The model version the path names (the newest without /versions/N), held for the request."""
    return hold(request, request.path_params["model_name"], request.path_params.get("model_version"))


async def server_metadata(request: Request) -> Response:
    return JSONResponse({"name": NAME, "version": __version__, "extensions": list(infer.EXTENSIONS)})


async def server_live(request: Request) -> Response:
    return JSONResponse({"live": True})


async def server_ready(request: Request) -> Response:
    registry = request.app.state.registry
    if not registry.ready:
        raise NotReady(registry.not_ready_reason)
    return JSONResponse({"ready": True})


async def model_metadata(request: Request) -> Response:
    held = _model(request)
    engine = held.engine
    metadata = infer.model_metadata(
        held.name,
        len(engine.manifest.id2label),
        engine.takes_pairs,
        versions=request.app.state.registry.versions(held.name),
    )
    # KServe's metadata allows parameters; gRPC's message has none
    metadata["parameters"] = {"engine": engine.engine_info}
    if engine.reverification is not None:
        metadata["parameters"]["reverification"] = engine.reverification.to_dict()
    return JSONResponse(metadata)


async def model_ready(request: Request) -> Response:
    held = _model(request)
    return JSONResponse({"name": held.name, "ready": True})


async def models(request: Request) -> Response:
    return JSONResponse(request.app.state.registry.index())


async def infer_route(request: Request) -> Response:
    """JSON or binary tensors in, JSON or binary outputs back (``dataplane.model_infer`` does the call)."""
    max_body_bytes = request.app.state.settings.max_body_bytes

    async def receive() -> dataplane.Arrived:
        body = await read_body(request, max_body_bytes)
        wire = from_http(body, request.headers, max_body_bytes=max_body_bytes)
        return dataplane.Arrived(wire.inputs, lambda: wire)  # the JSON part is parsed; decode checks its texts

    inferred = await dataplane.model_infer(
        request.app.state.registry,
        request.scope[CALL],
        request.path_params["model_name"],
        request.path_params.get("model_version"),
        receive,
    )
    content, headers = to_http(inferred.response)
    return Response(content, headers={**headers, **timing_headers(inferred.result, request)})


_MODEL = "/v2/models/{model_name}"
_VERSION = "/v2/models/{model_name}/versions/{model_version}"
ENDPOINTS = [
    Endpoint(
        "/v2", "GET", server_metadata, "Server metadata", response=ServerMetadata, errors=(401,), dialect="v2", tag="v2"
    ),
    Endpoint(
        "/v2/health/live", "GET", server_live, "Server liveness", response=Live, open=True, dialect="v2", tag="v2"
    ),
    Endpoint(
        "/v2/health/ready",
        "GET",
        server_ready,
        "Server readiness",
        response=Ready,
        errors=(503,),
        open=True,
        dialect="v2",
        tag="v2",
    ),
    Endpoint(
        "/v2/models",
        "GET",
        models,
        "Models and their versions, with their state",
        "The rows of Triton's repository index: one per loaded, loading or refused version.",
        response=list[ModelState],
        errors=(401,),
        dialect="v2",
        tag="v2",
    ),
]
for _prefix in (_MODEL, _VERSION):
    ENDPOINTS += [
        Endpoint(
            _prefix,
            "GET",
            model_metadata,
            "Model metadata",
            "Inputs: text (and text_pair for pair models), BYTES. Outputs: logits and probabilities (FP32), "
            "label (BYTES).",
            response=ModelMetadata,
            errors=(401, 404),
            dialect="v2",
            tag="v2",
        ),
        Endpoint(
            _prefix + "/ready",
            "GET",
            model_ready,
            "Model readiness",
            response=Ready,
            errors=(401, 404, 503),
            dialect="v2",
            tag="v2",
        ),
        Endpoint(
            _prefix + "/infer",
            "POST",
            infer_route,
            "Inference",
            "BYTES input `text` (and `text_pair` for pair models); returns the requested outputs, all three "
            "by default.",
            request=InferRequest,
            response=InferResponse,
            errors=(400, 401, 404, 413, 415, 429, 503, 504),
            dialect="v2",
            tag="v2",
        ),
    ]
