"""Request bodies validated by pydantic, with its errors told in one dialect for every protocol.

Parsing and validating happen in one pass, which also refuses lone surrogates,
invalid UTF-8 and absurd nesting as malformed JSON before anything else runs.
Every problem becomes one ``location: message`` clause; a missing or empty list
says ``must not be empty``, whichever route or protocol it came through.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from service.core.failures import Failure, InvalidInput, MalformedBody

Model = TypeVar("Model", bound=BaseModel)


def parse(
    model: type[Model], body: bytes, context: Mapping[str, Any] | None = None, *, invalid: type[Failure] = InvalidInput
) -> Model:
    """``body`` as ``model``, or MalformedBody for bad JSON and ``invalid`` for anything else."""
    try:
        return model.model_validate_json(body, context=context)
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        if any(error["type"] == "json_invalid" for error in errors):
            raise MalformedBody(f"request body is not valid JSON: {errors[0]['ctx']['error']}") from None
        raise invalid(describe(errors)) from None


def describe(errors: list[Any]) -> str:
    """One clause per problem; alternatives of a union that fail on the same value are told once."""
    problems: list[str] = []
    for error in errors:
        location = ".".join(str(part) for part in error["loc"] if not _is_branch(part))
        if error["type"] == "value_error":
            # Our own validators' messages stand alone; pydantic would prefix "Value error, ".
            message = str(error["ctx"]["error"])
        elif error["type"] == "too_short" and error.get("input") in ([], ""):
            message = "must not be empty"
        else:
            message = error["msg"]
        problem = f"{location}: {message}" if location else message
        if _is_empty_list(error) and any(_is_empty_list(other) for other in errors if other is not error):
            problem = f"{location}: must not be empty"
        if problem not in problems:
            problems.append(problem)
    return "; ".join(problems)


def _is_branch(part: object) -> bool:
    # pydantic names the member of a union it tried ("str", "list[str]", "function-after[...]").
    return isinstance(part, str) and ("[" in part or part in ("str", "int", "bool", "float"))


def _is_empty_list(error: Any) -> bool:
    return error.get("input") == []
