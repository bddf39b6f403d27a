"""Request bodies, validated strictly: no silent coercion of numbers into text."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr


class PredictRequest(BaseModel):
    """Compatible with text-embeddings-inference's ``/predict``."""

    model_config = ConfigDict(extra="ignore")

    inputs: StrictStr | Annotated[list[StrictStr], Field(min_length=1)] = Field(
        description="one text, or a list of texts; an empty string is classified like any other text"
    )
    truncate: StrictBool = Field(True, description="cut texts longer than the model's max length instead of refusing them")
    raw_scores: StrictBool = Field(False, description="return logits instead of probabilities")
    top_k: Annotated[StrictInt, Field(ge=1)] | None = Field(None, description="return only the k best labels")


class InferInput(BaseModel):
    name: StrictStr
    shape: list[StrictInt]
    datatype: Literal["BYTES"]
    data: list[StrictStr]
    parameters: dict | None = None


class RequestedOutput(BaseModel):
    name: Literal["logits", "probabilities", "label"]
    parameters: dict | None = None


class InferRequest(BaseModel):
    """Open Inference Protocol v2 inference request with one BYTES input of texts."""

    id: StrictStr | None = None
    parameters: dict | None = None
    inputs: Annotated[list[InferInput], Field(min_length=1, max_length=1)]
    outputs: list[RequestedOutput] | None = None
