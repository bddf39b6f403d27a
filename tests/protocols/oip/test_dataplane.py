"""The Open Inference Protocol's one inference call, on stand-ins for the registry and the engine: the order
of its steps is the promise (hold, receive, room, decode), whichever transport calls it."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import numpy as np
import pytest

from service.core.calls import Call
from service.core.failures import ModelNotFound, QueueFull
from service.core.windows import Windowing
from service.protocols.oip import dataplane, infer


class Engine:
    def __init__(self, steps: list[str], room: int) -> None:
        self.steps, self.room = steps, room
        self.takes_pairs = False
        self.windowing = Windowing()
        self.manifest = SimpleNamespace(labels=["no", "yes"])

    def check_room(self, count: int) -> None:
        self.steps.append(f"room {count}")
        if count > self.room:
            raise QueueFull(0, count, self.room)

    async def classify(self, texts, **urgency):
        self.steps.append("classify")
        self.urgency = urgency
        logits = np.array([[0.0, 1.0]] * len(texts), dtype=np.float32)
        return SimpleNamespace(logits=logits, reports=())

    def scores(self, logits, raw):
        return logits


class Registry:
    def __init__(self, steps: list[str], engine: Engine | None) -> None:
        self.steps, self.engine = steps, engine
        self.settings = SimpleNamespace(max_inputs=4)

    def hold(self, call, name, version):
        self.steps.append(f"hold {name} {version}")
        if self.engine is None:
            raise ModelNotFound(f"model {name!r} is not served here")
        return SimpleNamespace(name=name, version="1", engine=self.engine)


def wire(texts: list[str]) -> infer.InferRequest:
    return infer.InferRequest([infer.Tensor("text", "BYTES", [len(texts)], data=list(texts))], id="r-1")


def run(steps: list[str], engine: Engine | None, texts: list[str]) -> dataplane.Inferred:
    request = wire(texts)

    def decode() -> infer.InferRequest:
        steps.append("decode")
        return request

    async def receive() -> dataplane.Arrived:
        steps.append("receive")
        return dataplane.Arrived(request.inputs, decode)

    call = Call("http", "POST", "/v2/models/m/infer", "id", deadline=12.5)
    return asyncio.run(dataplane.model_infer(Registry(steps, engine), call, "m", None, receive))


def test_the_call_holds_receives_checks_room_decodes_then_classifies():
    steps: list[str] = []
    inferred = run(steps, Engine(steps, room=8), ["a", "b"])
    assert steps == ["hold m None", "receive", "room 2", "decode", "classify"]
    response = inferred.response
    assert (response.model_name, response.model_version, response.id) == ("m", "1", "r-1")
    assert [output.name for output in response.outputs] == ["logits", "probabilities", "label"]
    assert response.outputs[2].array.tolist() == ["yes", "yes"]


def test_a_full_queue_refuses_before_anything_is_decoded():
    steps: list[str] = []
    with pytest.raises(QueueFull):
        run(steps, Engine(steps, room=1), ["a", "b"])
    assert steps == ["hold m None", "receive", "room 2"]


def test_an_unknown_model_is_told_before_the_request_is_received():
    steps: list[str] = []
    with pytest.raises(ModelNotFound):
        run(steps, None, ["a"])
    assert steps == ["hold m None"]


def test_the_transports_deadline_stands_when_the_request_names_none():
    steps: list[str] = []
    engine = Engine(steps, room=8)
    run(steps, engine, ["a"])
    assert engine.urgency["deadline"] == 12.5
