"""The Open Inference Protocol's inference call, once for every transport: hold, room, decode, classify, respond.

Each transport only adapts its wire: the HTTP route (``rest.infer_route``) and the
gRPC servicer (``grpc_service.InferenceService.ModelInfer``) hand ``model_infer``
the call, the model's name and version and a way to receive the request, then
encode the neutral ``infer.InferResponse`` it returns and map its failures to
their own statuses.

The order is the protocol's promise under load: the model version is held first
(an unknown or unready model is told before the body is read), then the request
is received as far as the shapes of its inputs, and a full queue refuses it
there, before the elements of any input are copied out and decoded. So a flood
of large messages costs a look at their shapes, not a decode each.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from service.core.calls import Call
from service.core.engine import Classified
from service.core.registry import ModelRegistry
from service.protocols.oip import infer


@dataclass(frozen=True)
class Arrived:
    """A request as far as it has been read: its inputs' names and shapes, and how to decode the rest."""

    inputs: Sequence[Any]  # each with a ``name`` and a ``shape``; nothing else is read before the room check
    decode: Callable[[], infer.InferRequest]  # called only once the model has room for the inputs


@dataclass(frozen=True)
class Inferred:
    response: infer.InferResponse
    result: Classified  # where the time went, for a transport that reports it


async def model_infer(
    registry: ModelRegistry,
    call: Call,
    model_name: str | None,
    model_version: str | None,
    receive: Callable[[], Awaitable[Arrived]],
) -> Inferred:
    """Classify one inference request on the model version it names (the newest without a version)."""
    held = registry.hold(call, model_name, model_version)
    engine = held.engine
    arrived = await receive()
    max_inputs = registry.settings.max_inputs
    engine.check_room(infer.declared_inputs(arrived.inputs, max_inputs))
    checked = infer.decode(arrived.decode(), max_inputs=max_inputs, pairs=engine.takes_pairs)
    long_texts = checked.long_texts
    # The protocol's own deadline and priority parameters, when given, win over the transport's.
    result = await engine.classify(
        checked.texts,
        truncate=long_texts.truncate,
        windowing=long_texts.windowing(engine.windowing),
        deadline=call.deadline if checked.deadline is None else checked.deadline,
        priority=call.priority if checked.priority is None else call.ask(checked.priority),
    )
    response = infer.respond(
        checked,
        result.logits,
        engine.scores(result.logits, raw=False),
        engine.manifest.labels,
        model_name=held.name,
        model_version=held.version,
        reports=result.reports,
    )
    return Inferred(response, result)
