"""What the engine and the batcher refuse, in their own terms: no HTTP here.

EngineFailure
├── QueueFull        admitted inputs would exceed the queue bound
├── InputTooLong     a text over the max length with truncation off
├── InvalidInput     an input the model cannot take (a single text to a pair model, no tokens)
├── NotLoaded        the model is loading or failed to load
└── ShuttingDown     the process is draining

``service.errors.from_failure`` is the one place that turns these into a status
code, an ``error_type`` and headers.
"""

from __future__ import annotations


class EngineFailure(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class QueueFull(EngineFailure):
    def __init__(self, admitted: int, wanted: int, limit: int) -> None:
        super().__init__(
            f"inference queue is full ({admitted} inputs queued or running, {wanted} more asked for, "
            f"limit {limit})"
        )


class InputTooLong(EngineFailure):
    def __init__(self, index: int, tokens: int, limit: int) -> None:
        super().__init__(
            f"input {index} has {tokens} tokens, more than the model's limit of {limit}; "
            "send shorter text or set truncate to true"
        )


class InvalidInput(EngineFailure):
    pass


class NotLoaded(EngineFailure):
    pass


class ShuttingDown(EngineFailure):
    def __init__(self) -> None:
        super().__init__("the server is shutting down; retry on another replica")
