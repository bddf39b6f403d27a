"""Triton's repository extension of the Open Inference Protocol over HTTP.

The repository API (``POST /v2/repository/index``,
``/v2/repository/models/{model_name}/load`` and ``/unload``) changes what the
server serves, so it is off unless MODEL_CONTROL=explicit and is never open: it
answers 403 while API_KEYS is empty, and 401 without a valid key.

A load's ``parameters`` may name a shadow version (``service.core.shadow``):
``{"parameters": {"shadow_version": "3", "shadow_fraction": 0.1}}`` loads version 3
as a shadow of the serving version; ``"shadow_version": ""`` clears it, which
promotes it. Other parameters (Triton's ``config`` and ``file:`` overrides) are
refused: a bundle is its own configuration.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from service.core.failures import BadRequest, Forbidden
from service.protocols.validation import parse
from service.web.bodies import read_body
from service.web.responses import ModelState
from service.web.routing import Endpoint


def _control(request: Request) -> None:
    settings = request.app.state.settings
    if settings.model_control != "explicit":
        raise Forbidden(
            f"the repository API is off: this server runs with MODEL_CONTROL={settings.model_control}; "
            "start it with MODEL_CONTROL=explicit to load and unload models through it"
        )
    if not settings.api_keys:
        raise Forbidden(
            "the repository API needs API_KEYS: loading and unloading models is never open to unauthenticated callers"
        )


async def repository_index(request: Request) -> Response:
    _control(request)
    return JSONResponse(request.app.state.registry.index(unloaded=True))


class LoadParameters(BaseModel):
    # Strict: JSON's true is not a fraction, nor "0.5" a number.
    model_config = ConfigDict(extra="forbid", strict=True)
    shadow_version: str | None = Field(default=None, pattern=r"^([1-9][0-9]{0,17})?$")
    shadow_fraction: float | None = Field(default=None, gt=0, le=1)


class LoadRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    parameters: LoadParameters = LoadParameters()


async def load(request: Request) -> Response:
    _control(request)
    name = request.path_params["model_name"]
    body = await read_body(request, request.app.state.settings.max_body_bytes)
    asked = parse(LoadRequest, body, invalid=BadRequest).parameters if body.strip() else LoadParameters()
    await request.app.state.registry.load(
        name, shadow_version=asked.shadow_version, shadow_fraction=asked.shadow_fraction
    )
    return JSONResponse([row for row in request.app.state.registry.index() if row["name"] == name])


async def unload(request: Request) -> Response:
    _control(request)
    name = request.path_params["model_name"]
    await request.app.state.registry.unload(name)
    return JSONResponse([row for row in request.app.state.registry.index() if row["name"] == name])


_CONTROL_ERRORS = (400, 401, 403, 404)
ENDPOINTS = [
    Endpoint(
        "/v2/repository/index",
        "POST",
        repository_index,
        "Repository index (Triton's repository extension)",
        "Every model of the repository with its versions and state, loaded or not. Needs "
        "MODEL_CONTROL=explicit and an API key.",
        response=list[ModelState],
        errors=_CONTROL_ERRORS,
        dialect="v2",
        tag="repository",
    ),
    Endpoint(
        "/v2/repository/models/{model_name}/load",
        "POST",
        load,
        "Load or reload a model",
        "Reads the model's directory again: a new or changed version is hash-checked, loaded and warmed beside "
        "the one serving, then takes over; a bundle that fails is refused (400) and the old version keeps "
        "serving. `parameters.shadow_version` loads that version as a shadow of the serving one, seeing "
        "`parameters.shadow_fraction` of its inputs; an empty `shadow_version` clears the shadow (promoting it). "
        "Answers the model's rows of the index. Needs MODEL_CONTROL=explicit and an API key.",
        request=LoadRequest,
        response=list[ModelState],
        errors=_CONTROL_ERRORS,
        dialect="v2",
        tag="repository",
    ),
    Endpoint(
        "/v2/repository/models/{model_name}/unload",
        "POST",
        unload,
        "Unload a model",
        "The model stops taking requests; those running finish first. Needs MODEL_CONTROL=explicit and an API key.",
        response=list[ModelState],
        errors=_CONTROL_ERRORS,
        dialect="v2",
        tag="repository",
    ),
]
