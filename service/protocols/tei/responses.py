"""Text-embeddings-inference's response bodies, as pydantic models: the OpenAPI document is generated from these.

Handlers build plain dicts on the hot path (cheaper than model instances); these
models describe exactly those dicts, and the API tests hold the two together.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, Field

from service.core.reverify import Reverification
from service.web.responses import ModelState, model_of


class Prediction(BaseModel):
    label: str
    score: float = Field(
        description="probability (softmax, or sigmoid for one-logit and multi-label models), "
        "or the logit with raw_scores"
    )


class InputDetails(BaseModel):
    """What happened to one input (with ``details``)."""

    truncated: bool = Field(description="part of the input went unread (cut at the max length or at MAX_WINDOWS)")
    windows: int = Field(description="windows the input was read in; 1 unless read whole in windows")
    tokens: int = Field(description="tokens the model read, special tokens included, overlaps once per window")


class PredictionsWithDetails(BaseModel):
    """``/predict`` with ``details``: the usual answer, and what happened to each input."""

    predictions: list[Prediction] | list[list[Prediction]]
    details: list[InputDetails]


class RerankResult(BaseModel):
    index: int = Field(description="position in the request's texts")
    text: str | None = Field(None, description="present only with return_text")
    score: float
    details: InputDetails | None = Field(None, description="present only with details")


class ZeroShotResult(BaseModel):
    """The zero-shot-classification pipeline's answer: labels sorted by score."""

    sequence: str
    labels: list[str]
    scores: list[float]
    details: InputDetails | None = Field(
        None, description="present only with details; tokens count every candidate label's reading"
    )


class Token(BaseModel):
    id: int
    text: str = Field(description="the input's own characters for this token, or the special token itself")
    special: bool
    start: int | None = Field(description="UTF-8 byte offset in the input; null for special tokens")
    stop: int | None


class ClassifierType(BaseModel):
    id2label: dict[str, str]
    label2id: dict[str, int]


class VerificationSummary(BaseModel):
    passed: bool
    texts: int | None
    agreement: float | None
    max_prob_diff: float | None
    max_logit_diff: float | None


# Derived from the core's dataclass, field for field, so the wire schema cannot drift from what is sent.
if TYPE_CHECKING:
    Reverified = BaseModel
else:
    Reverified = model_of(
        Reverification,
        "Reverified",
        "The bundle's reference set, run again on this CPU at load and held to the export's gate.",
        seconds="what the check cost at load",
        cpu_flags="the instruction sets that decide the engines' kernels",
        engine="the engine that ran the reference set: onnxruntime or openvino",
        precision="the precision of its matrix products: fp32, bf16 or int8",
    )


class EngineInfo(BaseModel):
    """What runs the model's graph on this machine, and why (ENGINE and its rule)."""

    engine: str = Field(description="onnxruntime or openvino")
    version: str
    precision: str = Field(description="fp32, bf16 (OpenVINO on a CPU with bf16 units) or int8")
    file: str = Field(description="the bundle file the engine runs")
    reason: str = Field(description="why ENGINE chose it: the setting, or the auto rule's reading of the CPU")
    fallback: str | None = Field(
        description="why the engine auto chose is not serving (it failed to load or its re-verification); "
        "null when it serves"
    )


class LongTexts(BaseModel):
    """How this model reads inputs longer than its max length unless a request says otherwise."""

    windows: bool = Field(description="read whole, in windows (WINDOWS, or the model's serving.json)")
    window_overlap: int
    max_windows: int
    aggregation: str = Field(description="mean or max: the setting, or the model kind's default under auto")


class Limits(BaseModel):
    max_inputs: int
    max_body_bytes: int
    max_batch_tokens: int


class Info(BaseModel):
    """Text-embeddings-inference's ``/info`` fields first, then this service's own."""

    model_id: str
    model_sha: str | None
    model_dtype: str
    served_model_name: str
    model_type: dict[Literal["classifier", "reranker"], ClassifierType]
    max_concurrent_requests: int
    max_input_length: int
    max_batch_tokens: int
    max_batch_requests: int | None
    max_client_batch_size: int
    auto_truncate: bool
    tokenization_workers: int
    version: str
    sha: str | None
    docker_label: str | None
    model_name: str
    labels: list[str]
    problem_type: str
    max_length: int
    variant: str
    opset: int
    input_names: list[str]
    verification: VerificationSummary
    reverification: Reverified | None = Field(description="null for a bundle exported without a reference set")
    engine: EngineInfo
    versions: dict[str, dict[str, str]]
    long_texts: LongTexts
    limits: Limits
    models: list[ModelState]
