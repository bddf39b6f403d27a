"""Open Inference Protocol v2 (KServe / Triton) over HTTP.

Errors on these routes are the protocol's ``{"error": str}``, 400 for a bad request.
"""

from __future__ import annotations

import time
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from service import NAME, __version__, v2_codec
from service.endpoints import Endpoint
from service.engine import Engine
from service.errors import NotFound, NotReady
from service.http import read_body, unless_disconnected
from service.routes import engine_of, timing_headers
from service.v2_codec import InferRequest, InferResponse
from service.wire import Live, ModelMetadata, Ready, ServerMetadata

MODEL_VERSION = v2_codec.MODEL_VERSION


def _model(request: Request) -> Engine:
    engine = engine_of(request)
    name = request.path_params["model_name"]
    if name != engine.settings.model_name:
        raise NotFound(f"model {name!r} is not served here; this server serves {engine.settings.model_name!r}")
    version = request.path_params.get("model_version", MODEL_VERSION)
    if version != MODEL_VERSION:
        raise NotFound(f"model {name!r} has no version {version!r}; it has version {MODEL_VERSION!r}")
    return engine


async def server_metadata(request: Request) -> Response:
    return JSONResponse({"name": NAME, "version": __version__, "extensions": list(v2_codec.EXTENSIONS)})


async def server_live(request: Request) -> Response:
    return JSONResponse({"live": True})


async def server_ready(request: Request) -> Response:
    engine = engine_of(request)
    if not engine.ready:
        raise NotReady(engine.not_ready_reason)
    return JSONResponse({"ready": True})


async def model_metadata(request: Request) -> Response:
    engine = _model(request)
    return JSONResponse(v2_codec.model_metadata(engine.settings.model_name, len(engine.manifest.id2label),
                                                engine.takes_pairs))


async def model_ready(request: Request) -> Response:
    engine = _model(request)
    if not engine.ready:
        raise NotReady(engine.not_ready_reason)
    return JSONResponse({"name": engine.settings.model_name, "ready": True})


async def infer(request: Request) -> Response:
    """JSON or binary tensors in (``service.v2_codec``), JSON or binary outputs back."""
    started = time.perf_counter()
    engine = _model(request)
    settings = engine.settings
    body = await read_body(request, settings.max_body_bytes)
    call = v2_codec.read_request(body, request.headers, max_inputs=settings.max_inputs,
                                 max_body_bytes=settings.max_body_bytes, pairs=engine.takes_pairs)
    result = await unless_disconnected(request, engine.classify(call.texts, truncate=True))
    tensors = v2_codec.output_tensors(result.logits, engine.scores(result.logits, raw=False), engine.manifest.labels)
    content, headers = v2_codec.write_response(call, tensors, model_name=settings.model_name)
    return Response(content, headers={**headers, **timing_headers(result, started)})


_MODEL = "/v2/models/{model_name}"
_VERSION = "/v2/models/{model_name}/versions/{model_version}"
ENDPOINTS = [
    Endpoint("/v2", "GET", server_metadata, "Server metadata", response=ServerMetadata, errors=(401,),
             dialect="v2", tag="v2"),
    Endpoint("/v2/health/live", "GET", server_live, "Server liveness", response=Live, open=True, dialect="v2", tag="v2"),
    Endpoint("/v2/health/ready", "GET", server_ready, "Server readiness", response=Ready, errors=(503,), open=True,
             dialect="v2", tag="v2"),
]
for _prefix in (_MODEL, _VERSION):
    ENDPOINTS += [
        Endpoint(_prefix, "GET", model_metadata, "Model metadata",
                 "Inputs: text (and text_pair for pair models), BYTES. Outputs: logits and probabilities (FP32), "
                 "label (BYTES).", response=ModelMetadata, errors=(401, 404), dialect="v2", tag="v2"),
        Endpoint(_prefix + "/ready", "GET", model_ready, "Model readiness", response=Ready,
                 errors=(401, 404, 503), dialect="v2", tag="v2"),
        Endpoint(_prefix + "/infer", "POST", infer, "Inference",
                 "BYTES input `text` (and `text_pair` for pair models); returns the requested outputs, all three "
                 "by default.", request=InferRequest, response=InferResponse,
                 errors=(400, 401, 404, 413, 415, 429, 503), dialect="v2", tag="v2"),
    ]
