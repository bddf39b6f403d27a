"""Open Inference Protocol v2 (KServe / Triton) over HTTP.

Errors on these routes are the protocol's ``{"error": str}``, 400 for a bad request.
"""

from __future__ import annotations

import time
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from service import NAME, __version__, v2_codec
from service.endpoints import Endpoint
from service.errors import NotReady
from service.http import read_body
from service.registry import Loaded
from service.routes import timing_headers
from service.v2_codec import InferRequest, InferResponse
from service.wire import Live, ModelMetadata, ModelState, Ready, ServerMetadata

def _model(request: Request) -> Loaded:
    """The model version the path names (the newest without /versions/N), held for the request."""
    return request.app.state.registry.hold(
        request.scope, request.path_params["model_name"], request.path_params.get("model_version"))


async def server_metadata(request: Request) -> Response:
    return JSONResponse({"name": NAME, "version": __version__, "extensions": list(v2_codec.EXTENSIONS)})


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
    return JSONResponse(v2_codec.model_metadata(held.name, len(engine.manifest.id2label), engine.takes_pairs,
                                                versions=request.app.state.registry.versions(held.name)))


async def model_ready(request: Request) -> Response:
    held = _model(request)
    return JSONResponse({"name": held.name, "ready": True})


async def models(request: Request) -> Response:
    return JSONResponse(request.app.state.registry.index())


async def infer(request: Request) -> Response:
    """JSON or binary tensors in (``service.v2_codec``), JSON or binary outputs back."""
    started = time.perf_counter()
    held = _model(request)
    engine = held.engine
    settings = engine.settings
    body = await read_body(request, settings.max_body_bytes)
    call = v2_codec.read_request(body, request.headers, max_inputs=settings.max_inputs,
                                 max_body_bytes=settings.max_body_bytes, pairs=engine.takes_pairs)
    result = await engine.classify(call.texts, truncate=True)
    tensors = v2_codec.output_tensors(result.logits, engine.scores(result.logits, raw=False), engine.manifest.labels)
    content, headers = v2_codec.write_response(call, tensors, model_name=held.name, model_version=held.version)
    return Response(content, headers={**headers, **timing_headers(result, started)})


_MODEL = "/v2/models/{model_name}"
_VERSION = "/v2/models/{model_name}/versions/{model_version}"
ENDPOINTS = [
    Endpoint("/v2", "GET", server_metadata, "Server metadata", response=ServerMetadata, errors=(401,),
             dialect="v2", tag="v2"),
    Endpoint("/v2/health/live", "GET", server_live, "Server liveness", response=Live, open=True, dialect="v2", tag="v2"),
    Endpoint("/v2/health/ready", "GET", server_ready, "Server readiness", response=Ready, errors=(503,), open=True,
             dialect="v2", tag="v2"),
    Endpoint("/v2/models", "GET", models, "Models and their versions, with their state",
             "The rows of Triton's repository index: one per loaded, loading or refused version.",
             response=list[ModelState], errors=(401,), dialect="v2", tag="v2"),
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
