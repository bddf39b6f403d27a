"""The OpenAPI document, generated from the route table and the pydantic models."""

from __future__ import annotations

import functools
from typing import Any

from pydantic import BaseModel, TypeAdapter
from pydantic.json_schema import JsonSchemaMode, models_json_schema
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from service import __version__
from service.web.errors import ERROR_TABLE
from service.web.responses import ErrorBody
from service.web.routing import Endpoint

_REF = "#/components/schemas/{model}"


def _schema(kind: Any, mode: JsonSchemaMode, definitions: dict[str, Any]) -> dict[str, Any]:
    """A reference to a model (registered under components), or an inline schema for other types."""
    if isinstance(kind, type) and issubclass(kind, BaseModel):
        references, defs = models_json_schema([(kind, mode)], ref_template=_REF)
        definitions.update(defs.get("$defs", {}))
        return references[(kind, mode)]
    schema = TypeAdapter(kind).json_schema(ref_template=_REF, mode=mode)
    definitions.update(schema.pop("$defs", {}))
    return schema


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _operation(spec: Endpoint, definitions: dict[str, Any]) -> dict[str, Any]:
    names: dict[int, list[str]] = {}
    for kind, status in ERROR_TABLE.items():
        names.setdefault(status, []).append(kind)
    error = _schema(ErrorBody, "serialization", definitions)
    if spec.response is None:
        ok = {"description": "OK", "content": {spec.response_media_type: {"schema": {"type": "string"}}}}
    else:
        ok = _json(_schema(spec.response, "serialization", definitions), "OK")
    operation: dict[str, Any] = {
        "tags": [spec.tag],
        "summary": spec.summary,
        "description": spec.description,
        "responses": {
            "200": ok,
            **{str(code): _json(error, "error_type " + " or ".join(names[code])) for code in spec.errors},
        },
    }
    parameters = [name.strip("{}") for name in spec.path.split("/") if name.startswith("{")]
    if parameters:
        operation["parameters"] = [
            {"name": name, "in": "path", "required": True, "schema": {"type": "string"}} for name in parameters
        ]
    if spec.request is not None:
        operation["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": _schema(spec.request, "validation", definitions)}},
        }
    if spec.open:
        operation["security"] = []
    return operation


@functools.lru_cache(maxsize=8)
def build_spec(endpoints: tuple[Endpoint, ...], secured: bool) -> dict[str, Any]:
    definitions: dict[str, Any] = {}
    paths: dict[str, dict[str, Any]] = {}
    for spec in endpoints:
        if spec.in_schema:
            paths.setdefault(spec.path, {})[spec.method.lower()] = _operation(spec, definitions)
    document: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {"title": "ONNX text-classifier service", "version": __version__},
        "paths": paths,
        "components": {"schemas": definitions},
    }
    if secured:
        # Swagger UI's Authorize button offers this scheme: the key goes in as the bearer token.
        document["components"]["securitySchemes"] = {
            "bearer": {"type": "http", "scheme": "bearer", "description": "one of the keys in API_KEYS"}
        }
        document["security"] = [{"bearer": []}]
    return document


async def openapi(request: Request) -> Response:
    settings = request.app.state.settings
    return JSONResponse(build_spec(tuple(request.app.state.endpoints), bool(settings.api_keys)))


ENDPOINTS = [Endpoint("/openapi.json", "GET", openapi, "This document", open=True, in_schema=False)]
