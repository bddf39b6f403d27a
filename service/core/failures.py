"""Every refusal the service can make, in neutral terms: no status codes here.

Failure
├── QueueFull             admitted inputs would exceed the queue bound
├── DeadlineExceeded      the call's deadline passed before its inputs could run
├── ShuttingDown          the process is draining
├── VersionUnloaded       the model version a request held was unloaded while it ran
├── NotReady              the server or the model is loading, or failed to load
├── ModelNotFound         no such model, or no such version of it
├── InvalidInput          an input the model cannot take (a single text to a pair model, ...)
│   └── InputTooLong      a text over the max length (or over MAX_WINDOWS windows) with truncation off
├── EmptyInput            an empty list of inputs, or an input with no tokens
├── BadRequest            a request the protocol does not allow (Open Inference Protocol checks)
├── MalformedBody         a body that is not JSON, not the protocol's message, or not valid compressed data
├── PayloadTooLarge       a body over MAX_BODY_BYTES
├── UnsupportedMediaType  a content type or encoding the route does not read
├── Unauthenticated       no API key, or a wrong one
├── Forbidden             the repository API while it is off
└── LoadRefused           a model the repository API was asked to load failed to load

The core (engine, batcher, registry) raises the first ones; protocol decoders
raise the request-level ones. Each transport maps every class in one table:
HTTP in ``service.web.errors`` (status, ``error_type``, TEI's name), gRPC in
``service.protocols.oip.grpc_service`` (status code). A test walks this
hierarchy so that no failure is left unmapped.
"""

from __future__ import annotations


class Failure(Exception):
    """A refusal with a message meant for the caller; ``retry_after`` seconds when retrying helps."""

    retry_after: int | None = None

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class QueueFull(Failure):
    retry_after = 1

    def __init__(self, admitted: int, wanted: int, limit: int) -> None:
        super().__init__(
            f"inference queue is full ({admitted} inputs queued or running, {wanted} more asked for, limit {limit})"
        )


class DeadlineExceeded(Failure):
    pass


class ShuttingDown(Failure):
    def __init__(self, message: str = "the server is shutting down; retry on another replica") -> None:
        super().__init__(message)


class VersionUnloaded(Failure):
    pass


class NotReady(Failure):
    pass


class ModelNotFound(Failure):
    pass


class InvalidInput(Failure):
    pass


class InputTooLong(InvalidInput):
    @classmethod
    def tokens(cls, index: int, tokens: int, limit: int) -> InputTooLong:
        return cls(
            f"input {index} has {tokens} tokens, more than the model's limit of {limit}; "
            "send shorter text or set truncate to true"
        )

    @classmethod
    def windows(cls, index: int, needed: int, limit: int) -> InputTooLong:
        return cls(
            f"input {index} needs {needed} windows, more than the limit of {limit} per input (MAX_WINDOWS); "
            "send shorter text or set truncate to true to read its first windows"
        )


class EmptyInput(Failure):
    pass


class BadRequest(Failure):
    pass


class MalformedBody(Failure):
    pass


class PayloadTooLarge(Failure):
    pass


class UnsupportedMediaType(Failure):
    pass


class Unauthenticated(Failure):
    pass


class Forbidden(Failure):
    pass


class LoadRefused(Failure):
    pass


def all_failures() -> list[type[Failure]]:
    """Every failure class, the base first."""
    found: list[type[Failure]] = []
    pending: list[type[Failure]] = [Failure]
    while pending:
        cls = pending.pop(0)
        found.append(cls)
        pending.extend(cls.__subclasses__())
    return found
