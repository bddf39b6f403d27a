"""Text-embeddings-inference's REST API: predict, rerank, zero-shot, tokenize, decode, info.

Each route serves the default model at its own path (``/predict``) and a named
model under ``/models/{model_name}`` (``/models/NAME/predict``); ``POST
/models/{model_name}`` is the model's task, as Hugging Face's inference API
addresses a model, so ``InferenceClient(model=URL + "/models/NAME")`` works.
Handlers translate between JSON and the engine; they never touch onnxruntime.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from importlib import metadata
from typing import Any

import numpy as np
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from service import __version__
from service.core.engine import Classified, Engine
from service.core.failures import EmptyInput, InvalidInput
from service.core.manifest import ZeroShotIds
from service.core.scoring import sigmoid, softmax, zero_shot_scores
from service.core.windows import FIRST, InputReport
from service.protocols.reports import report_headers
from service.protocols.tei.requests import (
    DecodeRequest,
    PredictRequest,
    RerankRequest,
    TokenizeRequest,
    ZeroShotRequest,
)
from service.protocols.tei.responses import (
    Info,
    Prediction,
    PredictionsWithDetails,
    RerankResult,
    Token,
    ZeroShotResult,
)
from service.protocols.validation import parse
from service.web.bodies import json_body
from service.web.responses import json_response, timing_headers
from service.web.routing import Endpoint, hold, urgency

_FUNCTIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "softmax": softmax,
    "sigmoid": sigmoid,
    "none": lambda logits: logits,
}


def engine_of(request: Request) -> Engine:
    """The engine of the request's model (``/models/{model_name}/...``, else the default model), held
    for the request's duration so a version swap cannot stop it mid-request."""
    return hold(request, request.path_params.get("model_name")).engine


def context(request: Request, engine: Engine) -> dict[str, Any]:
    """What request validation needs to know about this model and these settings."""
    return {"max_inputs": request.app.state.settings.max_inputs, "pairs": engine.takes_pairs}


async def _body(request: Request) -> bytes:
    return await json_body(request, request.app.state.settings.max_body_bytes)


def _ranked(labels: Sequence[str], scores: np.ndarray, top_k: int | None) -> list[dict[str, Any]]:
    # argmax is the first of the best, as the stable sort would rank it, for a fraction of the cost.
    order = [scores.argmax()] if top_k == 1 else np.argsort(-scores, kind="stable")[: top_k or len(labels)]
    return [{"label": labels[int(i)], "score": float(scores[i])} for i in order]


async def predict(request: Request) -> Response:
    engine = engine_of(request)
    return await _predict(request, engine, await _body(request))


async def _predict(request: Request, engine: Engine, raw: bytes) -> Response:
    body = parse(PredictRequest, raw, context(request, engine))
    result = await engine.classify(
        body.items,
        truncate=body.should_truncate,
        direction=body.direction,
        windowing=body.windowing(engine.windowing),
        **urgency(request),
    )
    function = body.parameters.function_to_apply if body.parameters else None
    if body.raw_scores:
        scores = result.logits
    elif function is not None:
        scores = _FUNCTIONS[function](result.logits.astype(np.float64))
    else:
        scores = engine.scores(result.logits, raw=False)
    ranked = [_ranked(engine.manifest.labels, row, body.k) for row in scores]
    answer: Any = ranked if body.nested else ranked[0]
    if body.details:
        answer = {"predictions": answer, "details": [report.to_dict() for report in result.reports]}
    return JSONResponse(answer, headers=_headers(result, request))


def _headers(result: Classified, request: Request, reports: Sequence[InputReport] | None = None) -> dict[str, str]:
    return {**timing_headers(result, request), **report_headers(result.reports if reports is None else reports)}


async def rerank(request: Request) -> Response:
    engine = engine_of(request)
    if not engine.is_reranker:
        raise InvalidInput("this model is not a reranker: /rerank needs a text-pair model with one output")
    return await _rerank(request, engine, await _body(request))


async def _rerank(request: Request, engine: Engine, raw: bytes) -> Response:
    body = parse(RerankRequest, raw, context(request, engine))
    if not body.texts:
        raise EmptyInput("`texts` cannot be empty")
    pairs = [(body.query, text) for text in body.texts]
    result = await engine.classify(
        pairs,
        truncate=body.should_truncate,
        direction=body.direction,
        windowing=body.windowing(engine.windowing),
        **urgency(request),
    )
    logits = result.logits[:, 0]
    scores = logits if body.raw_scores else sigmoid(logits.astype(np.float64))
    ranked = []
    for index in np.argsort(-scores, kind="stable"):
        entry: dict[str, Any] = {"index": int(index), "score": float(scores[index])}
        if body.return_text:
            entry["text"] = body.texts[index]
        if body.details:
            entry["details"] = result.reports[index].to_dict()
        ranked.append(entry)
    return JSONResponse(ranked, headers=_headers(result, request))


def _zero_shot_ids(engine: Engine) -> ZeroShotIds:
    ids = engine.manifest.zero_shot
    if ids is None:
        raise InvalidInput(
            "this model cannot classify zero-shot: that needs a text-pair NLI model with "
            "entailment and contradiction labels"
        )
    return ids


async def zero_shot(request: Request) -> Response:
    engine = engine_of(request)
    _zero_shot_ids(engine)
    return await _zero_shot(request, engine, await _body(request))


async def _zero_shot(request: Request, engine: Engine, raw: bytes) -> Response:
    ids = _zero_shot_ids(engine)
    body = parse(ZeroShotRequest, raw, context(request, engine))
    # The pairs of one request (text, hypothesis for each label) go through the batcher together; the
    # text is the side read in windows, each window paired with the whole hypothesis.
    result = await engine.classify(
        body.pairs,
        truncate=body.should_truncate,
        windowing=body.windowing(engine.windowing),
        side=FIRST,
        **urgency(request),
    )
    scores = zero_shot_scores(result.logits[np.newaxis], ids, multi_label=body.parameters.multi_label)[0]
    order = np.argsort(-scores, kind="stable")
    labels = body.parameters.candidate_labels
    answer: dict[str, Any] = {
        "sequence": body.inputs,
        "labels": [labels[i] for i in order],
        "scores": [float(scores[i]) for i in order],
    }
    text = _text_report(result.reports)
    if body.details:
        answer["details"] = text.to_dict()
    return JSONResponse(answer, headers=_headers(result, request, [text]))


def _text_report(pairs: Sequence[InputReport]) -> InputReport:
    """The one text of a zero-shot request, read once per candidate label: cut if cut for any, in the
    windows of its longest reading, and every token read."""
    return InputReport(
        any(report.truncated for report in pairs),
        max(report.windows for report in pairs),
        sum(report.tokens for report in pairs),
    )


async def root(request: Request) -> Response:
    """The model's task at ``POST /``, as TEI and Hugging Face's inference API serve it: rerank
    for a reranker, zero-shot for an NLI model asked with ``candidate_labels``, else predict."""
    engine = engine_of(request)
    raw = await _body(request)
    if engine.is_reranker:
        return await _rerank(request, engine, raw)
    if engine.manifest.zero_shot is not None and ZeroShotRequest.is_one(raw):
        return await _zero_shot(request, engine, raw)
    return await _predict(request, engine, raw)


async def tokenize(request: Request) -> Response:
    engine = engine_of(request)
    body = parse(TokenizeRequest, await _body(request), context(request, engine))
    tokens = await engine.tokens(body.texts, add_special_tokens=body.add_special_tokens)
    return await json_response(tokens)


async def decode(request: Request) -> Response:
    engine = engine_of(request)
    body = parse(DecodeRequest, await _body(request), context(request, engine))
    if any(not ids for ids in body.sequences):
        raise EmptyInput("`ids` cannot be empty")
    return await json_response(await engine.decode(body.sequences, skip_special_tokens=body.skip_special_tokens))


async def info(request: Request) -> Response:
    engine = engine_of(request)
    manifest, settings = engine.manifest, request.app.state.settings
    verification = manifest.verification
    chosen: dict[str, Any] = next((v for v in verification.get("variants", []) if v["variant"] == manifest.variant), {})
    labels = manifest.labels
    return JSONResponse(
        {
            "model_id": manifest.model_id,
            "model_sha": None,
            "model_dtype": "float32",
            "served_model_name": engine.settings.model_name,
            "model_type": {
                "reranker" if engine.is_reranker else "classifier": {
                    "id2label": {str(i): label for i, label in enumerate(labels)},
                    "label2id": {label: i for i, label in enumerate(labels)},
                }
            },
            "max_concurrent_requests": settings.max_queue_size,
            "max_input_length": manifest.max_length,
            "max_batch_tokens": settings.max_batch_tokens,
            "max_batch_requests": settings.max_batch_size,
            "max_client_batch_size": settings.max_inputs,
            "auto_truncate": True,
            "tokenization_workers": 1,
            "version": __version__,
            "sha": None,
            "docker_label": None,
            "model_name": engine.settings.model_name,
            "labels": labels,
            "problem_type": manifest.problem_type,
            "max_length": manifest.max_length,
            "variant": manifest.variant,
            "opset": manifest.opset,
            "input_names": manifest.input_names,
            "verification": {
                "passed": bool(verification.get("passed")),
                "texts": verification.get("texts"),
                "agreement": chosen.get("agreement"),
                "max_prob_diff": chosen.get("max_prob_diff"),
                "max_logit_diff": chosen.get("max_logit_diff"),
            },
            "reverification": None if engine.reverification is None else engine.reverification.to_dict(),
            "engine": engine.engine_info,
            "versions": {"export": manifest.versions, "serve": serve_versions()},
            "long_texts": {
                "windows": engine.windowing.enabled,
                "window_overlap": engine.windowing.overlap,
                "max_windows": engine.windowing.max_windows,
                "aggregation": engine.windowing.aggregation or engine.aggregation,
            },
            "limits": {
                "max_inputs": settings.max_inputs,
                "max_body_bytes": settings.max_body_bytes,
                "max_batch_tokens": settings.max_batch_tokens,
            },
            "models": request.app.state.registry.index(),
        }
    )


@functools.cache
def serve_versions() -> dict[str, str]:
    versions = {name: metadata.version(name) for name in ("onnxruntime", "tokenizers", "starlette", "uvicorn")}
    return {"service": __version__, **versions}


_INPUT_ERRORS = (400, 401, 413, 415, 422, 429, 503, 504)
_SCORES = list[Prediction] | list[list[Prediction]] | PredictionsWithDetails
ENDPOINTS = [
    Endpoint(
        "/",
        "POST",
        root,
        "The model's task (text-embeddings-inference compatible)",
        "Answers as /rerank for a reranker (a text-pair model with one output) and as /predict otherwise.",
        request=PredictRequest,
        response=_SCORES,
        errors=_INPUT_ERRORS,
        dialect="tei",
        tag="tei",
    ),
    Endpoint(
        "/predict",
        "POST",
        predict,
        "Classify texts or text pairs (text-embeddings-inference compatible)",
        "A text returns a list of {label, score} sorted by score; a batch returns one such list per input. "
        "Scores are softmax probabilities, or sigmoid for one-logit and multi-label models, unless raw_scores. "
        "With Hugging Face `parameters` and a single text the answer is [[...]].",
        request=PredictRequest,
        response=_SCORES,
        errors=_INPUT_ERRORS,
        dialect="tei",
        tag="tei",
    ),
    Endpoint(
        "/rerank",
        "POST",
        rerank,
        "Rank texts against a query (text-embeddings-inference compatible)",
        "For reranker bundles: each (query, text) pair is scored (sigmoid of the logit unless raw_scores); "
        "the answer is sorted by score.",
        request=RerankRequest,
        response=list[RerankResult],
        errors=_INPUT_ERRORS,
        dialect="tei",
        tag="tei",
    ),
    Endpoint(
        "/zero-shot",
        "POST",
        zero_shot,
        "Zero-shot classification with an NLI model",
        "Hugging Face's zero-shot-classification: each candidate label is put into the hypothesis template and "
        "scored as a (text, hypothesis) pair; the candidates of one request are batched together. Scores sum "
        "to 1 across labels unless multi_label.",
        request=ZeroShotRequest,
        response=ZeroShotResult,
        errors=_INPUT_ERRORS,
        dialect="tei",
        tag="tei",
    ),
    Endpoint(
        "/tokenize",
        "POST",
        tokenize,
        "Tokenize texts (text-embeddings-inference compatible)",
        "Untruncated tokens of each text, with UTF-8 byte offsets; always a list per input.",
        request=TokenizeRequest,
        response=list[list[Token]],
        errors=(400, 401, 413, 415, 422, 503),
        dialect="tei",
        tag="tei",
    ),
    Endpoint(
        "/decode",
        "POST",
        decode,
        "Token ids back to text (text-embeddings-inference compatible)",
        request=DecodeRequest,
        response=list[str],
        errors=(400, 401, 413, 415, 422, 503),
        dialect="tei",
        tag="tei",
    ),
    Endpoint(
        "/info",
        "GET",
        info,
        "Model and bundle information",
        "Text-embeddings-inference's fields, then labels, problem type, variant, verification and versions, "
        "and every model this server has with its state.",
        response=Info,
        errors=(401,),
        dialect="tei",
        tag="tei",
    ),
]


PREFIX = "/models/{model_name}"


def _per_model(spec: Endpoint) -> Endpoint:
    return dataclasses.replace(
        spec,
        path=PREFIX + spec.path.rstrip("/"),
        summary=spec.summary.split(" (")[0] + ", by model name",
        errors=tuple(sorted({*spec.errors, 404})),
        tag="models",
    )


ENDPOINTS += [_per_model(spec) for spec in ENDPOINTS]
