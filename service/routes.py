"""HTTP endpoints: TEI-compatible REST and Open Inference Protocol v2.

Handlers translate between JSON and the engine; they never touch onnxruntime.
"""

from __future__ import annotations

import functools
import time
from importlib import metadata
from typing import Any, Sequence

import numpy as np
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from service import NAME, __version__, v2_codec
from service.engine import Classified, Engine
from service.errors import NotFound, NotReady
from service.http import parse_json, read_body, unless_disconnected
from service.metrics import CONTENT_TYPE
from service.schemas import PredictRequest


def _engine(request: Request) -> Engine:
    return request.app.state.engine


def _timing_headers(result: Classified, started: float) -> dict[str, str]:
    ms = lambda seconds: str(round(seconds * 1000, 3))  # noqa: E731
    return {
        "x-tokenization-time": ms(result.tokenize_seconds),
        "x-queue-time": ms(result.queue_seconds),
        "x-inference-time": ms(result.inference_seconds),
        "x-total-time": ms(time.perf_counter() - started),
    }


def _ranked(labels: Sequence[str], scores: np.ndarray, top_k: int | None) -> list[dict[str, Any]]:
    order = np.argsort(-scores, kind="stable")[: top_k or len(labels)]
    return [{"label": labels[i], "score": float(scores[i])} for i in order]


def _limits(engine: Engine) -> dict[str, int]:
    return {"max_inputs": engine.settings.max_inputs}


async def predict(request: Request) -> Response:
    started = time.perf_counter()
    engine = _engine(request)
    body = await parse_json(request, PredictRequest, engine.settings.max_body_bytes, _limits(engine))
    result = await unless_disconnected(request, engine.classify(body.texts, truncate=body.truncate))
    scores = engine.scores(result.logits, body.raw_scores)
    labels = engine.manifest.labels
    ranked = [_ranked(labels, row, body.top_k) for row in scores]
    content = ranked[0] if isinstance(body.inputs, str) else ranked
    return JSONResponse(content, headers=_timing_headers(result, started))


async def info(request: Request) -> Response:
    engine = _engine(request)
    manifest = engine.manifest
    verification = manifest.verification
    chosen = next((v for v in verification.get("variants", []) if v["variant"] == manifest.variant), {})
    return JSONResponse({
        "model_id": manifest.model_id,
        "model_name": engine.settings.model_name,
        "labels": manifest.labels,
        "problem_type": manifest.problem_type,
        "max_length": manifest.max_length,
        "variant": manifest.variant,
        "opset": manifest.opset,
        "input_names": manifest.input_names,
        "verification": {
            "passed": bool(verification.get("passed")),
            "texts": verification.get("texts"),
            "agreement": chosen.get("agreement"),
            "max_prob_diff": chosen.get("max_prob_diff"),
            "max_logit_diff": chosen.get("max_logit_diff"),
        },
        "versions": {"export": manifest.versions, "serve": _serve_versions()},
        "limits": {
            "max_inputs": engine.settings.max_inputs,
            "max_body_bytes": engine.settings.max_body_bytes,
            "max_batch_tokens": engine.settings.max_batch_tokens,
        },
    })


@functools.cache
def _serve_versions() -> dict[str, str]:
    return {name: metadata.version(name) for name in ("onnxruntime", "tokenizers", "starlette", "uvicorn")}


async def health(request: Request) -> Response:
    engine = _engine(request)
    if not engine.ready:
        raise NotReady(engine.not_ready_reason)
    return JSONResponse({"status": "ok"})


async def live(request: Request) -> Response:
    return JSONResponse({"status": "alive"})


async def metrics(request: Request) -> Response:
    return Response(_engine(request).metrics.render(), media_type=CONTENT_TYPE)


# Open Inference Protocol v2 -------------------------------------------------------
# Bodies are read and written by service.v2_codec; these handlers only reach the engine.

def _model(request: Request) -> Engine:
    engine = _engine(request)
    name = request.path_params["model_name"]
    if name != engine.settings.model_name:
        raise NotFound(f"model {name!r} is not served here; this server serves {engine.settings.model_name!r}")
    version = request.path_params.get("model_version", v2_codec.MODEL_VERSION)
    if version != v2_codec.MODEL_VERSION:
        raise NotFound(f"model {name!r} has no version {version!r}; it has version {v2_codec.MODEL_VERSION!r}")
    return engine


async def v2_server(request: Request) -> Response:
    return JSONResponse({"name": NAME, "version": __version__, "extensions": list(v2_codec.EXTENSIONS)})


async def v2_live(request: Request) -> Response:
    return JSONResponse({"live": True})


async def v2_ready(request: Request) -> Response:
    engine = _engine(request)
    if not engine.ready:
        raise NotReady(engine.not_ready_reason)
    return JSONResponse({"ready": True})


async def v2_model(request: Request) -> Response:
    engine = _model(request)
    return JSONResponse(v2_codec.model_metadata(engine.settings.model_name, len(engine.manifest.id2label)))


async def v2_model_ready(request: Request) -> Response:
    engine = _model(request)
    if not engine.ready:
        raise NotReady(engine.not_ready_reason)
    return JSONResponse({"name": engine.settings.model_name, "ready": True})


async def v2_infer(request: Request) -> Response:
    started = time.perf_counter()
    engine = _model(request)
    settings = engine.settings
    body = await read_body(request, settings.max_body_bytes)
    call = v2_codec.read_request(body, request.headers, max_inputs=settings.max_inputs,
                                 max_body_bytes=settings.max_body_bytes)
    result = await unless_disconnected(request, engine.classify(call.texts, truncate=True))
    tensors = v2_codec.output_tensors(result.logits, engine.scores(result.logits, raw=False), engine.manifest.labels)
    content, headers = v2_codec.write_response(call, tensors, model_name=settings.model_name)
    return Response(content, headers={**headers, **_timing_headers(result, started)})


ROUTES = [
    Route("/predict", predict, methods=["POST"]),
    Route("/info", info, methods=["GET"]),
    Route("/health", health, methods=["GET"]),
    Route("/live", live, methods=["GET"]),
    Route("/metrics", metrics, methods=["GET"]),
    Route("/v2", v2_server, methods=["GET"]),
    Route("/v2/health/live", v2_live, methods=["GET"]),
    Route("/v2/health/ready", v2_ready, methods=["GET"]),
    Route("/v2/models/{model_name}", v2_model, methods=["GET"]),
    Route("/v2/models/{model_name}/ready", v2_model_ready, methods=["GET"]),
    Route("/v2/models/{model_name}/infer", v2_infer, methods=["POST"]),
    Route("/v2/models/{model_name}/versions/{model_version}", v2_model, methods=["GET"]),
    Route("/v2/models/{model_name}/versions/{model_version}/ready", v2_model_ready, methods=["GET"]),
    Route("/v2/models/{model_name}/versions/{model_version}/infer", v2_infer, methods=["POST"]),
]
OPEN_PATHS = ("/health", "/live", "/metrics", "/v2/health/live", "/v2/health/ready", "/docs", "/openapi.json")
