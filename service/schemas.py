"""Request bodies, validated strictly in one pass: no silent coercion of numbers into text.

Per-request limits that depend on settings (``max_inputs``) arrive through the
validation context, so every request rule lives here.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, ValidationInfo, field_validator, model_validator


def _within_limit(count: int, info: ValidationInfo) -> None:
    limit = (info.context or {}).get("max_inputs")
    if limit is not None and count > limit:
        raise ValueError(f"{count} inputs is more than the limit of {limit} per request")


class PredictRequest(BaseModel):
    """Compatible with text-embeddings-inference's ``/predict``."""

    model_config = ConfigDict(extra="ignore")

    inputs: StrictStr | Annotated[list[StrictStr], Field(min_length=1)] = Field(
        description="one text, or a list of texts; an empty string is classified like any other text"
    )
    truncate: StrictBool = Field(True, description="cut texts longer than the model's max length instead of refusing them")
    raw_scores: StrictBool = Field(False, description="return logits instead of probabilities")
    top_k: Annotated[StrictInt, Field(ge=1)] | None = Field(None, description="return only the k best labels")

    @field_validator("inputs")
    @classmethod
    def _count(cls, inputs: str | list[str], info: ValidationInfo) -> str | list[str]:
        if isinstance(inputs, list):
            _within_limit(len(inputs), info)
        return inputs

    @property
    def texts(self) -> list[str]:
        return [self.inputs] if isinstance(self.inputs, str) else self.inputs


class InferInput(BaseModel):
    name: StrictStr
    shape: list[StrictInt]
    datatype: Literal["BYTES"]
    data: Annotated[list[StrictStr], Field(min_length=1)]
    parameters: dict | None = None

    @field_validator("data")
    @classmethod
    def _count(cls, data: list[str], info: ValidationInfo) -> list[str]:
        _within_limit(len(data), info)
        return data

    @model_validator(mode="after")
    def _shape_matches(self) -> InferInput:
        if self.shape not in ([len(self.data)], [len(self.data), 1]):
            raise ValueError(f"input {self.name!r} has shape {self.shape} but {len(self.data)} elements")
        return self


class RequestedOutput(BaseModel):
    name: Literal["logits", "probabilities", "label"]
    parameters: dict | None = None


class InferRequest(BaseModel):
    """Open Inference Protocol v2 inference request with one BYTES input of texts."""

    id: StrictStr | None = None
    parameters: dict | None = None
    inputs: Annotated[list[InferInput], Field(min_length=1, max_length=1)]
    outputs: list[RequestedOutput] | None = None
