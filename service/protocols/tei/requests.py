"""Request bodies, validated strictly in one pass: no silent coercion of numbers into text.

Per-request limits that depend on settings (``max_inputs``) arrive through the
validation context, so every request rule lives here.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    StrictBool,
    StrictInt,
    StrictStr,
    ValidationError,
    ValidationInfo,
    ValidatorFunctionWrapHandler,
    field_validator,
    model_validator,
)

from service.core.windows import Windowing


def _within_limit(count: int, info: ValidationInfo) -> None:
    limit = (info.context or {}).get("max_inputs")
    if limit is not None and count > limit:
        raise ValueError(f"{count} inputs is more than the limit of {limit} per request")


def _at_most_max_inputs(items: list[Any], info: ValidationInfo) -> list[Any]:
    _within_limit(len(items), info)
    return items


# A list field that counts against MAX_INPUTS (in a union, a field validator must pick the branch instead).
Limited = AfterValidator(_at_most_max_inputs)


TextOrPair = str | tuple[str, str]


class InferenceParameters(BaseModel):
    """Hugging Face inference ``parameters`` (sent by ``InferenceClient.text_classification``)."""

    model_config = ConfigDict(extra="ignore")

    top_k: Annotated[StrictInt, Field(ge=1)] | None = None
    function_to_apply: Literal["sigmoid", "softmax", "none"] | None = None


class _LongTexts(BaseModel):
    """What to do with inputs longer than the model reads at once (docs/long-texts.md), shared by the
    routes that classify."""

    truncate: StrictBool | None = Field(
        None,
        description="cut inputs longer than the model's max length, or than MAX_WINDOWS windows, "
        "(null or absent: true) instead of refusing them",
    )
    windows: StrictBool | None = Field(
        None,
        description="read a long input whole, in overlapping windows whose scores are combined "
        "(null or absent: the model's default, WINDOWS)",
    )
    window_overlap: Annotated[StrictInt, Field(ge=0)] | None = Field(
        None, description="tokens consecutive windows share (null or absent: WINDOW_OVERLAP)"
    )
    aggregation: Literal["mean", "max"] | None = Field(
        None, description="how the windows' scores become one (null or absent: AGGREGATION)"
    )
    details: StrictBool = Field(
        False, description="add what happened to each input (truncated, windows, tokens) to the answer"
    )

    def windowing(self, defaults: Windowing) -> Windowing:
        return defaults.overridden(enabled=self.windows, overlap=self.window_overlap, aggregation=self.aggregation)

    @property
    def should_truncate(self) -> bool:
        return self.truncate is not False


class _Truncation(_LongTexts):
    """TEI's truncation options, with the long-text ones."""

    truncation_direction: Literal["Left", "Right", "left", "right"] = Field(
        "Right", description="which end of a long input is cut"
    )

    @property
    def direction(self) -> Literal["left", "right"]:
        return "left" if self.truncation_direction.lower() == "left" else "right"


class PredictRequest(_Truncation):
    """Text-embeddings-inference's ``/predict`` body, plus ``top_k`` and Hugging Face ``parameters``.

    ``inputs`` forms: a text; ``[[text], [text, text_pair], ...]`` (a batch); and a flat list,
    which is a batch of texts for a single-text model but one ``[text, text_pair]`` for a
    pair model (TEI reads a flat list of two as a pair for every model).
    """

    model_config = ConfigDict(extra="ignore")

    inputs: (
        StrictStr
        | Annotated[list[StrictStr], Field(min_length=1)]
        | Annotated[list[Annotated[list[StrictStr], Field(min_length=1, max_length=2)]], Field(min_length=1)]
    ) = Field(
        description="a text, a list of texts, [text, text_pair], or a batch [[text], [text, text_pair], ...]; "
        "an empty string is classified like any other text"
    )
    raw_scores: StrictBool = Field(False, description="return logits instead of probabilities")
    top_k: Annotated[StrictInt, Field(ge=1)] | None = Field(None, description="return only the k best labels")
    parameters: InferenceParameters | None = Field(
        None,
        description="Hugging Face inference parameters; with a single text the answer is then [[...]], "
        "as Hugging Face's InferenceClient expects",
    )
    _items: list[TextOrPair] = PrivateAttr(default_factory=list)
    _nested: bool = PrivateAttr(default=False)

    @field_validator("inputs", mode="wrap")
    @classmethod
    def _one_message(cls, value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        # Three alternatives would each report their own failure; one sentence says it better.
        try:
            return handler(value)
        except ValidationError:
            if value == []:
                raise ValueError("must not be empty") from None
            raise ValueError(
                "must be a text, a list of texts, [text, text_pair] or a batch "
                "[[text], [text, text_pair], ...] of strings"
            ) from None

    @model_validator(mode="after")
    def _resolve(self, info: ValidationInfo) -> PredictRequest:
        pairs = bool((info.context or {}).get("pairs"))
        inputs = self.inputs
        if isinstance(inputs, str):
            self._items, self._nested = [inputs], self.parameters is not None
        elif isinstance(inputs[0], str) and pairs:
            if len(inputs) != 2:
                raise ValueError(
                    f"this model classifies text pairs: send [text, text_pair] or a batch "
                    f"[[text, text_pair], ...], not a list of {len(inputs)} texts"
                )
            self._items, self._nested = [(inputs[0], inputs[1])], False
        elif isinstance(inputs[0], str):
            self._items, self._nested = list(inputs), True
        else:
            self._items = [item[0] if len(item) == 1 else (item[0], item[1]) for item in inputs]
            self._nested = True
        _within_limit(len(self._items), info)
        check_kinds(self._items, pairs)
        return self

    @property
    def items(self) -> list[TextOrPair]:
        return self._items

    @property
    def nested(self) -> bool:
        """Whether the answer is a list of rankings (a batch) rather than one ranking."""
        return self._nested

    @property
    def k(self) -> int | None:
        return (self.parameters.top_k if self.parameters else None) or self.top_k


def check_kinds(items: list[TextOrPair], pairs: bool) -> None:
    """A pair model takes pairs only, a single-text model single texts only."""
    for index, item in enumerate(items):
        if pairs and isinstance(item, str):
            raise ValueError(f"this model classifies text pairs, but input {index} is a single text")
        if not pairs and not isinstance(item, str):
            raise ValueError(f"this model classifies single texts, but input {index} is a text pair")


class ZeroShotParameters(BaseModel):
    model_config = ConfigDict(extra="ignore")

    candidate_labels: Annotated[list[StrictStr], Field(min_length=1), Limited]
    hypothesis_template: StrictStr = Field(
        "This example is {}.", description="the hypothesis each label is put into; must contain {}"
    )
    multi_label: StrictBool = Field(False, description="score each label on its own instead of across labels")

    @field_validator("hypothesis_template")
    @classmethod
    def _has_slot(cls, template: str) -> str:
        if "{}" not in template:
            raise ValueError("must contain {} where the label goes, as in 'This example is {}.'")
        return template


class _PeekParameters(BaseModel):
    candidate_labels: Any = None


class _ZeroShotPeek(BaseModel):
    parameters: _PeekParameters | None = None


class ZeroShotRequest(_LongTexts):
    """Hugging Face's zero-shot-classification body (what ``InferenceClient.zero_shot_classification`` sends)."""

    model_config = ConfigDict(extra="ignore")

    inputs: StrictStr
    parameters: ZeroShotParameters

    @staticmethod
    def is_one(raw: bytes) -> bool:
        """Whether a body asks for zero-shot classification (``POST /`` serves both tasks)."""
        try:
            peek = _ZeroShotPeek.model_validate_json(raw)
        except ValidationError:
            return False
        return peek.parameters is not None and peek.parameters.candidate_labels is not None

    @property
    def pairs(self) -> list[tuple[str, str]]:
        template = self.parameters.hypothesis_template
        return [(self.inputs, template.replace("{}", label, 1)) for label in self.parameters.candidate_labels]


class RerankRequest(_Truncation):
    """Text-embeddings-inference's ``/rerank``."""

    model_config = ConfigDict(extra="ignore")

    query: StrictStr
    texts: Annotated[list[StrictStr], Limited]
    raw_scores: StrictBool = Field(False, description="return logits instead of sigmoid scores")
    return_text: StrictBool = Field(False, description="include each text in the answer")


class TokenizeRequest(BaseModel):
    """Text-embeddings-inference's ``/tokenize``: no truncation, special tokens by default."""

    model_config = ConfigDict(extra="ignore")

    inputs: StrictStr | Annotated[list[StrictStr], Field(min_length=1)]
    add_special_tokens: StrictBool = True
    prompt_name: StrictStr | None = Field(None, description="not supported: bundles carry no prompts")

    @field_validator("inputs")
    @classmethod
    def _count(cls, inputs: str | list[str], info: ValidationInfo) -> str | list[str]:
        if isinstance(inputs, list):
            _within_limit(len(inputs), info)
        return inputs

    @field_validator("prompt_name")
    @classmethod
    def _no_prompts(cls, prompt_name: str | None) -> None:
        if prompt_name is not None:
            raise ValueError(f"prompt {prompt_name!r} is not known: this model has no prompts")
        return None

    @property
    def texts(self) -> list[str]:
        return [self.inputs] if isinstance(self.inputs, str) else self.inputs


# Token ids are unsigned 32-bit numbers in tokenizers (and in TEI's API); a larger one is the client's error.
TokenId = Annotated[int, Field(ge=0, lt=2**32)]


class DecodeRequest(BaseModel):
    """Text-embeddings-inference's ``/decode``."""

    model_config = ConfigDict(extra="ignore")

    ids: list[TokenId] | Annotated[list[list[TokenId]], Field(min_length=1)]
    skip_special_tokens: StrictBool = True

    @field_validator("ids")
    @classmethod
    def _count(cls, ids: list, info: ValidationInfo) -> list:
        if ids and isinstance(ids[0], list):
            _within_limit(len(ids), info)
        return ids

    @property
    def sequences(self) -> list[list[int]]:
        return self.ids if self.ids and isinstance(self.ids[0], list) else [self.ids]  # type: ignore[list-item]
