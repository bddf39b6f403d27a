"""The OpenAPI document; ``service.docs`` renders it at ``/docs`` with Swagger UI."""

from __future__ import annotations

import functools
from typing import Any

from pydantic.json_schema import models_json_schema
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from service import docs
from service.errors import ERROR_TABLE
from service.schemas import InferRequest, PredictRequest

_ERROR = {"$ref": "#/components/schemas/Error"}


def _json(schema: dict[str, Any], description: str = "OK") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*codes: int) -> dict[str, Any]:
    names: dict[int, list[str]] = {}
    for kind, status in ERROR_TABLE.items():
        names.setdefault(status, []).append(kind)
    return {str(code): _json(_ERROR, "error_type " + " or ".join(names[code])) for code in codes}


def _op(summary: str, description: str, responses: dict[str, Any], body: str | None = None, secured: bool = True):
    op: dict[str, Any] = {"summary": summary, "description": description, "responses": responses}
    if body:
        op["requestBody"] = {"required": True, "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{body}"}}}}
    if not secured:
        op["security"] = []
    return op


_LABEL_SCORES = {"type": "array", "items": {"type": "object", "properties": {
    "label": {"type": "string"}, "score": {"type": "number"}}, "required": ["label", "score"]}}
_WITH_BODY = (400, 401, 408, 413, 415, 422, 429, 503)


@functools.lru_cache(maxsize=8)
def build_spec(model_name: str, secured: bool) -> dict[str, Any]:
    _, defs = models_json_schema(
        [(PredictRequest, "validation"), (InferRequest, "validation")], ref_template="#/components/schemas/{model}"
    )
    schemas = defs["$defs"]
    schemas["Error"] = {"type": "object", "required": ["error", "error_type"], "properties": {
        "error": {"type": "string"}, "error_type": {"type": "string", "enum": sorted(ERROR_TABLE)}}}
    plain = {"type": "object"}
    paths = {
        "/predict": {"post": _op(
            "Classify texts (text-embeddings-inference compatible)",
            "One text returns a list of {label, score} sorted by score; a list of texts returns a list of "
            "such lists. Scores are softmax probabilities (sigmoid for multi-label models) unless raw_scores.",
            {"200": _json({"oneOf": [_LABEL_SCORES, {"type": "array", "items": _LABEL_SCORES}]}), **_errors(*_WITH_BODY)},
            body="PredictRequest")},
        "/info": {"get": _op("Model and bundle information", "Labels, problem type, max length, variant, "
                             "verification summary and versions.", {"200": _json(plain), **_errors(401)})},
        "/health": {"get": _op("Readiness", "200 once the model is loaded and warmed up, 503 with the reason before.",
                               {"200": _json(plain), **_errors(503)}, secured=False)},
        "/live": {"get": _op("Liveness", "200 while the process serves HTTP.", {"200": _json(plain)}, secured=False)},
        "/metrics": {"get": _op("Prometheus metrics", "Request counts, phase latencies, batch sizes, queue depth.",
                                {"200": {"description": "OK", "content": {"text/plain": {"schema": {"type": "string"}}}}},
                                secured=False)},
        "/v2": {"get": _op("Server metadata (Open Inference Protocol v2)", "", {"200": _json(plain), **_errors(401)})},
        "/v2/health/live": {"get": _op("Server liveness (v2)", "", {"200": _json(plain)}, secured=False)},
        "/v2/health/ready": {"get": _op("Server readiness (v2)", "", {"200": _json(plain), **_errors(503)}, secured=False)},
        f"/v2/models/{model_name}": {"get": _op("Model metadata (v2)", "Inputs: text (BYTES). Outputs: logits, "
                                                "probabilities (FP32) and label (BYTES).", {"200": _json(plain), **_errors(401, 404)})},
        f"/v2/models/{model_name}/ready": {"get": _op("Model readiness (v2)", "", {"200": _json(plain), **_errors(401, 404, 503)})},
        f"/v2/models/{model_name}/infer": {"post": _op(
            "Inference (v2)", "One BYTES input of texts; returns the requested outputs (all three by default).",
            {"200": _json(plain), **_errors(404, *_WITH_BODY)}, body="InferRequest")},
    }
    spec: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {"title": "ONNX text-classifier service", "version": "0.1.0"},
        "paths": paths,
        "components": {"schemas": schemas},
    }
    if secured:
        # Swagger UI's Authorize button offers this scheme: the key goes in as the bearer token.
        spec["components"]["securitySchemes"] = {"bearer": {
            "type": "http", "scheme": "bearer", "description": "one of the keys in API_KEYS"}}
        spec["security"] = [{"bearer": []}]
    return spec


async def openapi(request: Request) -> Response:
    settings = request.app.state.engine.settings
    return JSONResponse(build_spec(settings.model_name, bool(settings.api_keys)))


ROUTES = [Route("/openapi.json", openapi, methods=["GET"]), *docs.ROUTES]
