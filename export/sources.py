"""Load a trained classifier as (graph to export, original pipeline to compare against).

Three kinds of input:
  * a Hugging Face ``*ForSequenceClassification`` checkpoint directory (or hub id);
  * a sentence-transformers body plus a linear head (``--head model.joblib``);
  * the built-in default (no ``--model``).

Whatever the original does after the encoder (pooling, normalisation, head) is
put inside the exported module, so the graph always ends in logits.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from collections.abc import Callable, Sequence
from copy import deepcopy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tokenizers import Tokenizer

from export import default_model
from export.budget import window_length
from export.decoders import DECODER_MODEL_TYPES, DecoderClassifier
from export.decoders import INPUT_NAMES as DECODER_INPUTS
from export.errors import (
    CorruptWeights,
    HeadMismatch,
    InputNotFound,
    NotAClassifier,
    UnsupportedArchitecture,
)
from export.heads import load_head
from service.core.classifier import TextInput
from service.core.manifest import DEFAULT_THRESHOLD, PAIR, PROBLEM_TYPES, SINGLE_LABEL, TEXT, zero_shot_ids

SUPPORTED_MODEL_TYPES = tuple(
    sorted(
        (
            "albert",
            "bert",
            "deberta-v2",
            "distilbert",
            "electra",
            "modernbert",
            "mpnet",
            "roberta",
            "xlm-roberta",
            *DECODER_MODEL_TYPES,
        )
    )
)
# Position ids start after the padding index in these families, so two positions
# of max_position_embeddings are never usable.
_POSITION_OFFSET = {"roberta": 2, "xlm-roberta": 2}
_HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")
_REFERENCE_BATCH = 16
# Padded tokens in one batch of the reference run: bounds its activations (a 0.5B decoder's
# eager attention and MLP hold tens of MB per 1,000 tokens) whatever the batch size.
_REFERENCE_TOKENS = 4096
# The longest truncation length taken from a tokenizer's declared ``model_max_length`` (and the
# model's position limit) without --max-length: the exported graph's eager attention holds
# heads x length^2 fp32 scores per layer (235 MB for 14 heads at 2,048 tokens, 3.8 GB at 8,192),
# which one long text must fit in the service's memory. Longer inputs are read in windows
# (docs/long-texts.md); --max-length sets any length up to the position limit.
MAX_LENGTH_CAP = 2048
# What transformers sets ``model_max_length`` to when a tokenizer declares none (int(1e30)).
_UNDECLARED = 10**29
SETFIT_CONFIG = "config_setfit.json"
SETFIT_HEAD = "model_head.pkl"
# One input's windows: their logits (a row each) and their real tokens.
Windows = tuple[np.ndarray, np.ndarray]


@dataclass
class Source:
    """A loaded classifier, ready to export and to verify against."""

    model_id: str
    kind: str
    module: torch.nn.Module
    input_names: list[str]
    id2label: dict[int, str]
    problem_type: str
    max_length: int
    tokenizer: Tokenizer
    reference: Callable[[Sequence[TextInput]], np.ndarray]
    strip_whitespace: bool = False
    details: dict[str, Any] = field(default_factory=dict)
    task: str = TEXT
    threshold: float = DEFAULT_THRESHOLD
    # PyTorch logits of every window of each input (``export.windows_check``): the original
    # tokenizer's own overflow windows, ``overlap`` tokens shared, of a pair the ``side`` one windowed.
    window_reference: Callable[[Sequence[TextInput], int, str], list[Windows]] | None = None

    # The arguments ``load_source`` was called with: a child process loads the same model from them.
    loaded_with: dict[str, Any] = field(default_factory=dict)

    def weight_bytes(self) -> int:
        """The bytes of the PyTorch model's parameters and buffers."""
        tensors = [*self.module.parameters(), *self.module.buffers()]
        return sum(tensor.numel() * tensor.element_size() for tensor in tensors)

    def release_model(self) -> None:
        """Let go of the PyTorch model once its reference logits exist: the export's later steps read the
        graph, and an LLM-sized model is as large as the graph (the closures above hold it too)."""
        import gc

        from service.core.classifier import release_free_memory

        def released(*_: object) -> Any:
            raise RuntimeError(f"the PyTorch model of {self.model_id} was released after conversion")

        self.module = torch.nn.Module()
        self.reference = released
        self.window_reference = None
        gc.collect()
        release_free_memory()


class _LogitsOnly(torch.nn.Module):
    """A ``*ForSequenceClassification`` model whose only output is its logits."""

    def __init__(self, model: torch.nn.Module, input_names: list[str]) -> None:
        super().__init__()
        self.model = model
        self.input_names = input_names

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return self.model(**dict(zip(self.input_names, inputs))).logits


class _EmbedAndClassify(torch.nn.Module):
    """Encoder -> pooling -> optional L2 normalisation -> linear head."""

    def __init__(
        self,
        encoder: torch.nn.Module,
        input_names: list[str],
        pooling: str,
        normalize: bool,
        weight: np.ndarray,
        bias: np.ndarray,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.input_names = input_names
        self.pooling = pooling
        self.normalize = normalize
        self.register_buffer("weight", torch.tensor(weight, dtype=torch.float32))
        self.register_buffer("bias", torch.tensor(bias, dtype=torch.float32))

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        features = dict(zip(self.input_names, inputs))
        hidden = self.encoder(**features).last_hidden_state
        mask = features["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        if self.pooling == "mean":
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        elif self.pooling == "max":
            pooled = (hidden + (1.0 - mask) * -1e9).max(dim=1).values
        else:  # cls
            pooled = hidden[:, 0]
        if self.normalize:
            pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
        return pooled @ self.weight.T + self.bias


def load_source(
    model: str | None,
    *,
    head: str | None = None,
    max_length: int | None = None,
    task: str | None = None,
    max_memory: int | None = None,
) -> Source:
    """``task`` forces "text" or "pair"; None detects it from the checkpoint. ``max_memory``: the budget a
    declared length must fit one window of (``export.budget.window_length``); ``max_length`` is taken as it is."""
    source = _load(model, head=head, max_length=max_length, task=task, max_memory=max_memory)
    source.loaded_with = {
        "model": model,
        "head": head,
        "max_length": max_length,
        "task": task,
        "max_memory": max_memory,
    }
    return source


def _load(
    model: str | None, *, head: str | None, max_length: int | None, task: str | None, max_memory: int | None = None
) -> Source:
    if model is None:
        return _load_sentence_head(
            default_model.body_path(),
            Path(head) if head else default_model.head_path(),
            max_length=max_length,
            label_map=default_model.label_map_path() if head is None else None,
            model_id=default_model.MODEL_ID if head is None else None,
        )
    path = Path(model)
    hub_id = None
    if not path.exists():
        if _looks_like_path(model):
            raise InputNotFound(f"model path {model} does not exist")
        hub_id, path = model, hub_snapshot(model)
    if not path.is_dir():
        raise NotAClassifier(f"{model} is a file; expected a checkpoint directory")
    if _st_model_type(path) == "CrossEncoder":
        if head is not None:
            raise NotAClassifier(f"{model} is a sentence-transformers CrossEncoder; it takes no --head")
        return _load_checkpoint(str(path), max_length=max_length, task=task, hub_id=hub_id, max_memory=max_memory)
    if (path / "modules.json").is_file():
        setfit = _setfit_config(path)
        if head is None and setfit is not None and (path / SETFIT_HEAD).is_file():
            head = str(path / SETFIT_HEAD)
        if head is None:
            raise NotAClassifier(
                f"{model} is a sentence-transformers body without a classification head; "
                "pass --head HEAD.joblib (a scikit-learn linear model)"
            )
        return _load_sentence_head(path, Path(head), max_length=max_length, setfit=setfit, model_id=hub_id)
    if head is not None:
        raise NotAClassifier(f"--head needs a sentence-transformers body; {model} has no modules.json")
    return _load_checkpoint(str(path), max_length=max_length, task=task, hub_id=hub_id, max_memory=max_memory)


def _looks_like_path(model: str) -> bool:
    """A missing path, not a hub id: ``./x``, ``/x``, ``~/x``, ``a/b/c``, or ``models/x``
    where ``models/`` exists here. Hub ids are ``name`` or ``org/name``."""
    if model.startswith((".", "/", "~")) or "\\" in model or model.count("/") > 1 or model.endswith("/"):
        return True
    if not _HUB_ID.match(model) and "/" in model:
        return True
    head = model.split("/", 1)[0]
    return "/" in model and Path(head).is_dir()


# Weights and files the export never reads: other formats a hub repository may also hold.
_HUB_IGNORE = ["*.onnx", "onnx/*", "openvino/*", "*.h5", "*.msgpack", "*.ot", "*.tflite", "coreml/*", "*.gguf"]


def hub_snapshot(model_id: str, probe_timeout: float = 3.0) -> Path:
    """The local copy of a hub model: from the cache when the hub cannot be reached
    (offline setting or no connection, found out at once, not after retries),
    downloaded otherwise."""
    import huggingface_hub
    from huggingface_hub import constants

    offline = constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE")
    reason = "HF_HUB_OFFLINE is set" if offline else _unreachable(constants.ENDPOINT, probe_timeout)
    try:
        if reason:
            return Path(huggingface_hub.snapshot_download(model_id, local_files_only=True))
        return Path(huggingface_hub.snapshot_download(model_id, ignore_patterns=_HUB_IGNORE))
    except Exception as exc:  # hub errors come in many types; all mean "cannot get this model"
        where = f"the hub is not reachable ({reason}) and it is not in the local cache" if reason else _first_line(exc)
        raise InputNotFound(f"{model_id} is neither a local path nor a reachable hub model: {where}") from None


def _unreachable(endpoint: str, timeout: float) -> str | None:
    """Why the hub endpoint cannot be reached, or None when a TCP connection opens."""
    import socket
    from urllib.parse import urlsplit

    parts = urlsplit(endpoint)
    host, port = parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except OSError as exc:
        return f"{host}:{port}: {exc.strerror or type(exc).__name__}"


def _setfit_config(path: Path) -> dict[str, Any] | None:
    """``config_setfit.json`` as the setfit package writes it (labels, normalize_embeddings)."""
    config = path / SETFIT_CONFIG
    if not config.is_file():
        return None
    try:
        data = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CorruptWeights(f"{config} cannot be read: {_first_line(exc)}") from None
    return data if isinstance(data, dict) else {}


def _st_model_type(path: Path) -> str | None:
    """``CrossEncoder``, ``SentenceTransformer``, ... as sentence-transformers 5 records it."""
    config = path / "config_sentence_transformers.json"
    try:
        return json.loads(config.read_text(encoding="utf-8")).get("model_type")
    except (OSError, ValueError, AttributeError):
        return None


def _detect_task(config: Any, path: Path | None, requested: str | None) -> tuple[str, str]:
    """(task, why): the flag wins; then what the checkpoint says about itself."""
    if requested is not None:
        return requested, "--task"
    # sentence-transformers marks CrossEncoders in config.json (2.x and 3.x/4.x) or its own file (5.x).
    if hasattr(config, "sbert_ce_default_activation_function") or isinstance(
        getattr(config, "sentence_transformers", None), dict
    ):
        return PAIR, "sentence-transformers CrossEncoder config"
    if path is not None and _st_model_type(path) == "CrossEncoder":
        return PAIR, "sentence-transformers CrossEncoder config"
    if zero_shot_ids({int(k): str(v) for k, v in config.id2label.items()}) is not None:
        return PAIR, "NLI label names"
    return TEXT, "default"


def _st_max_length(path: Path | None) -> int | None:
    """A CrossEncoder's own truncation length, when it saved one."""
    if path is None:
        return None
    try:
        value = json.loads((path / "sentence_bert_config.json").read_text(encoding="utf-8")).get("max_seq_length")
    except (OSError, ValueError, AttributeError):
        return None
    return int(value) if isinstance(value, int) and value > 1 else None


def _read_config(model: str, shown: str) -> Any:
    from transformers import AutoConfig

    if not (Path(model) / "config.json").is_file():
        raise NotAClassifier(f"{shown} has no config.json: not a Hugging Face checkpoint")
    try:
        return AutoConfig.from_pretrained(model)
    except (OSError, ValueError, KeyError) as exc:
        raise UnsupportedArchitecture(f"{shown}/config.json cannot be read: {_first_line(exc)}") from None


def _load_checkpoint(
    model: str,
    *,
    max_length: int | None,
    task: str | None = None,
    hub_id: str | None = None,
    max_memory: int | None = None,
) -> Source:
    """A local checkpoint directory (a hub model's cached snapshot when ``hub_id`` is set)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    shown = hub_id or model
    config = _read_config(model, shown)
    architectures = getattr(config, "architectures", None) or []
    if not any(a.endswith("ForSequenceClassification") for a in architectures):
        raise NotAClassifier(
            f"{shown} is not a sequence classifier (architectures: {', '.join(architectures) or 'none'}); "
            "expected a *ForSequenceClassification checkpoint"
        )
    if config.model_type not in SUPPORTED_MODEL_TYPES:
        raise UnsupportedArchitecture(
            f"model type {config.model_type!r} is not supported; supported: {', '.join(SUPPORTED_MODEL_TYPES)}"
        )
    original = _load_weights(AutoModelForSequenceClassification, model)
    exported = _eager_copy(original, AutoModelForSequenceClassification)
    try:
        hf_tokenizer = AutoTokenizer.from_pretrained(model, use_fast=True)
    except (OSError, ValueError) as exc:
        raise InputNotFound(f"{shown} has no usable tokenizer: {_first_line(exc)}") from None
    if not getattr(hf_tokenizer, "is_fast", False):
        raise UnsupportedArchitecture(f"{shown} has no fast tokenizer (tokenizer.json) to serve with")

    local = Path(model)
    limit = max_length or _st_max_length(local) or _checkpoint_max_length(config, hf_tokenizer)
    lowered: dict[str, int] = {}
    if max_memory is not None and not max_length and not _st_max_length(local):
        fitted = _fitting_length(limit, config, original, max_memory)
        if fitted < limit:
            lowered = {"max_length_declared": limit}
            limit = fitted
    decoder = config.model_type in DECODER_MODEL_TYPES
    input_names = list(DECODER_INPUTS) if decoder else _input_names(hf_tokenizer, exported)
    problem_type = config.problem_type or SINGLE_LABEL
    if problem_type not in PROBLEM_TYPES:
        raise UnsupportedArchitecture(f"problem_type {problem_type!r} is not one of {', '.join(PROBLEM_TYPES)}")
    detected, task_from = _detect_task(config, local, task)

    def reference(inputs: Sequence[TextInput]) -> np.ndarray:
        """The original's logits, in batches of similar length (sorted). A decoder's batches hold
        texts of one length only, so no padding: each text's logits are what they are alone
        (transformers refuses padded batches without a pad token, and left padding would shift positions)."""
        lengths = [
            len(hf_tokenizer(*_as_args(item), truncation=True, max_length=limit)["input_ids"]) for item in inputs
        ]
        # transformers refuses any batch of more than one text from a model without a pad token.
        size = 1 if decoder and config.pad_token_id is None else _REFERENCE_BATCH
        out: np.ndarray | None = None
        for rows in reference_batches(lengths, same_length=decoder, max_size=size):
            chunk = [inputs[row] for row in rows]
            texts = _split_pairs(chunk) if detected == PAIR else (chunk,)
            batch = hf_tokenizer(*texts, padding=not decoder, truncation=True, max_length=limit, return_tensors="pt")
            features = {name: batch[name] for name in input_names if name in batch}
            with torch.inference_mode():
                logits = original(**features).logits.float().numpy()
            if out is None:
                out = np.empty((len(inputs), logits.shape[1]), dtype=np.float32)
            out[rows] = logits
        return out if out is not None else np.empty((0, len(config.id2label)), dtype=np.float32)

    def window_reference(inputs: Sequence[TextInput], overlap: int, side: str) -> list[Windows]:
        def run(features: dict[str, torch.Tensor]) -> np.ndarray:
            return original(**features).logits.float().numpy()

        return _windows_of(hf_tokenizer, input_names, limit, inputs, overlap, side, run)

    return Source(
        model_id=hub_id or Path(model).resolve().name,
        kind="hf-sequence-classification",
        module=(DecoderClassifier(exported) if decoder else _LogitsOnly(exported, input_names)).eval(),
        input_names=input_names,
        id2label={int(k): str(v) for k, v in config.id2label.items()},
        problem_type=problem_type,
        max_length=limit,
        tokenizer=_bundle_tokenizer(hf_tokenizer, limit),
        reference=reference,
        details={
            "path": hub_id or str(Path(model).resolve()),
            "model_type": config.model_type,
            "task_from": task_from,
            **lowered,
        },
        task=detected,
        window_reference=window_reference,
    )


def _windows_of(
    hf_tokenizer: Any,
    input_names: list[str],
    limit: int,
    inputs: Sequence[TextInput],
    overlap: int,
    side: str,
    run: Callable[[dict[str, torch.Tensor]], np.ndarray],
) -> list[Windows]:
    """Each input's windows as transformers makes them (``return_overflowing_tokens`` with ``stride``),
    each run alone by ``run`` (no padding to blur the reference; decoders may have no pad token): per
    input, the logits (a row per window) and each window's tokens."""
    results = []
    for item in inputs:
        if isinstance(item, str):
            texts: tuple[str, ...] = (item,)
            truncation: str | bool = True
        else:
            texts = (item[0], item[1])
            truncation = "only_second" if side == "second" else "only_first"
        batch = hf_tokenizer(
            *texts, truncation=truncation, max_length=limit, stride=overlap, return_overflowing_tokens=True
        )
        logits = []
        for window in range(len(batch["input_ids"])):
            features = {name: torch.tensor([batch[name][window]]) for name in input_names if name in batch}
            with torch.inference_mode():
                logits.append(run(features))
        results.append((np.concatenate(logits), np.array([len(ids) for ids in batch["input_ids"]])))
    return results


def reference_batches(
    lengths: Sequence[int],
    *,
    same_length: bool = False,
    max_size: int = _REFERENCE_BATCH,
    max_tokens: int = _REFERENCE_TOKENS,
) -> list[list[int]]:
    """Indices of ``lengths`` in batches sorted by length: at most ``max_size`` inputs and ``max_tokens``
    padded tokens each (an input longer than that alone gets a batch of its own); with ``same_length``,
    only inputs of one length share a batch."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    batches: list[list[int]] = []
    for index in order:
        current = batches[-1] if batches else None
        if (
            current is not None
            and len(current) < max_size
            and (len(current) + 1) * lengths[index] <= max_tokens
            and (not same_length or lengths[current[0]] == lengths[index])
        ):
            current.append(index)
        else:
            batches.append([index])
    return batches


def _as_args(item: TextInput) -> tuple[str, ...]:
    return (item,) if isinstance(item, str) else (item[0], item[1])


def _split_pairs(chunk: Sequence[TextInput]) -> tuple[list[str], list[str]]:
    """A pair model's inputs as the tokenizer's two arguments: the texts and their pairs."""
    pairs = [item for item in chunk if not isinstance(item, str)]
    assert len(pairs) == len(chunk), "a pair model's inputs are (text, text_pair) pairs"
    return [a for a, _ in pairs], [b for _, b in pairs]


def _load_weights(factory: Any, model: str, **kwargs: Any) -> torch.nn.Module:
    try:
        with warnings.catch_warnings():
            # A head created from scratch would mean the checkpoint has no trained classifier.
            warnings.simplefilter("error", UserWarning)
            loaded = factory.from_pretrained(model, **kwargs)
    except (OSError, RuntimeError, ValueError, UserWarning) as exc:
        raise CorruptWeights(f"weights of {model} are missing or unreadable: {_first_line(exc)}") from None
    except Exception as exc:  # safetensors raises its own, unexported error type
        if type(exc).__name__ == "SafetensorError":
            raise CorruptWeights(f"weights of {model} are corrupt: {_first_line(exc)}") from None
        raise
    return loaded.eval()


def _fitting_length(declared: int, config: Any, model: torch.nn.Module, max_memory: int) -> int:
    """``declared``, or the longest shorter window that fits ``max_memory`` beside the model quantized."""
    heads = getattr(config, "num_attention_heads", 12)
    return window_length(
        declared,
        heads=heads,
        intermediate=getattr(config, "intermediate_size", 4 * getattr(config, "hidden_size", 64 * heads)),
        parameters=sum(p.numel() for p in model.parameters()),
        budget=max_memory,
    )


def _checkpoint_max_length(config: Any, hf_tokenizer: Any) -> int:
    """The tokenizer's declared length, up to the model's position limit and ``MAX_LENGTH_CAP``;
    512 (or the position limit) when it declares none."""
    positions = getattr(config, "max_position_embeddings", 512) - _POSITION_OFFSET.get(config.model_type, 0)
    declared = getattr(hf_tokenizer, "model_max_length", None)
    if declared and declared < _UNDECLARED:
        return int(min(declared, positions, MAX_LENGTH_CAP))
    return int(min(512, positions))


def _input_names(hf_tokenizer: Any, model: torch.nn.Module) -> list[str]:
    import inspect

    accepted = inspect.signature(model.forward).parameters
    names = [n for n in ("input_ids", "attention_mask", "token_type_ids") if n in accepted]
    return [n for n in names if n in hf_tokenizer.model_input_names or n == "input_ids"]


def _bundle_tokenizer(hf_tokenizer: Any, max_length: int) -> Tokenizer:
    tokenizer = Tokenizer.from_str(hf_tokenizer.backend_tokenizer.to_str())
    tokenizer.enable_truncation(max_length=max_length)
    pad_token = hf_tokenizer.pad_token or "[PAD]"
    pad_id = hf_tokenizer.pad_token_id if hf_tokenizer.pad_token_id is not None else 0
    # The service pads batches itself; it reads the pad id from here.
    tokenizer.enable_padding(pad_id=pad_id, pad_token=pad_token)
    return tokenizer


def _load_sentence_head(
    body: Path,
    head: Path,
    *,
    max_length: int | None,
    label_map: Path | None = None,
    model_id: str | None = None,
    setfit: dict[str, Any] | None = None,
) -> Source:
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer

    if not head.is_file():
        raise InputNotFound(f"head file {head} does not exist")
    try:
        st = SentenceTransformer(str(body), device="cpu")
    except (OSError, RuntimeError, ValueError) as exc:
        raise CorruptWeights(f"sentence-transformers body {body} cannot be loaded: {_first_line(exc)}") from None
    modules = list(st)
    if not modules or not isinstance(modules[0], Transformer):
        raise UnsupportedArchitecture(f"{body} does not start with a Transformer module")
    extra = [m for m in modules[1:] if not isinstance(m, (Pooling, Normalize))]
    if extra:
        raise UnsupportedArchitecture(
            f"{body} has modules the exporter cannot reproduce: {', '.join(type(m).__name__ for m in extra)}"
        )
    transformer = modules[0]
    if getattr(transformer, "do_lower_case", False):
        raise UnsupportedArchitecture(f"{body} lower-cases in sentence-transformers, which the bundle cannot reproduce")
    model_type = transformer.auto_model.config.model_type
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise UnsupportedArchitecture(f"body model type {model_type!r} is not supported")
    pooling = _pooling_mode(next((m for m in modules if isinstance(m, Pooling)), None))
    # SetFit normalises embeddings itself when its config says so, on top of any Normalize module.
    extra_normalize = bool((setfit or {}).get("normalize_embeddings"))
    normalize = extra_normalize or any(isinstance(m, Normalize) for m in modules)

    linear = load_head(head)
    weight, bias, classes = linear.weight, linear.bias, linear.classes
    width = transformer.auto_model.config.hidden_size
    if weight.shape[1] != width:
        raise HeadMismatch(f"head {head.name} expects {weight.shape[1]} features but the body produces {width}")
    if label_map is not None:
        import joblib

        names = default_model.class_names(classes, joblib.load(label_map))
    else:
        names = _label_names(classes, (setfit or {}).get("labels"), head)

    limit = max_length or int(st.max_seq_length)
    st.max_seq_length = limit
    hf_tokenizer = transformer.tokenizer
    exported_body = _eager_copy(transformer.auto_model)
    input_names = _input_names(hf_tokenizer, exported_body)

    def reference(texts: Sequence[TextInput]) -> np.ndarray:
        embeddings = st.encode(
            list(texts), batch_size=_REFERENCE_BATCH, convert_to_numpy=True, normalize_embeddings=extra_normalize
        )
        return linear.logits(embeddings)

    def run_windows(features: dict[str, torch.Tensor]) -> np.ndarray:
        embeddings = st.forward(dict(features))["sentence_embedding"]
        if extra_normalize:
            embeddings = torch.nn.functional.normalize(embeddings, p=2, dim=1)
        return linear.logits(embeddings.float().numpy())

    def window_reference(texts: Sequence[TextInput], overlap: int, side: str) -> list[Windows]:
        # sentence-transformers strips every text before tokenizing, as it does in ``encode``.
        stripped = [text.strip() for text in texts if isinstance(text, str)]
        return _windows_of(hf_tokenizer, input_names, limit, stripped, overlap, side, run_windows)

    is_setfit = setfit is not None and head.resolve() == (body / SETFIT_HEAD).resolve()
    return Source(
        model_id=model_id or (body.resolve().name if is_setfit else f"{body.resolve().name}+{head.name}"),
        kind="setfit" if is_setfit else "sentence-transformers+linear-head",
        module=_EmbedAndClassify(exported_body, input_names, pooling, normalize, weight, bias).eval(),
        input_names=input_names,
        id2label=dict(enumerate(names)),
        problem_type=linear.problem_type,
        max_length=limit,
        tokenizer=_bundle_tokenizer(hf_tokenizer, limit),
        reference=reference,
        # sentence-transformers strips every text before tokenizing.
        strip_whitespace=True,
        window_reference=window_reference,
        details={
            "body": str(body.resolve()),
            "head": str(head.resolve()),
            "model_type": model_type,
            "pooling": pooling,
            "normalize": normalize,
            "head_type": linear.kind,
        },
    )


def _eager_copy(model: torch.nn.Module, factory: Any = None) -> torch.nn.Module:
    """The same weights with eager attention, which traces into fusable ONNX. The copy shares the
    original's tensors instead of holding its own: an LLM-sized model would otherwise be held twice."""
    from transformers import AutoModel

    with warnings.catch_warnings(), torch.device("meta"):
        warnings.simplefilter("ignore")
        # A config of its own: from_config sets the attention choice on the config it is given, and the
        # original reads its own at every call.
        copy = (factory or AutoModel).from_config(deepcopy(model.config), attn_implementation="eager")
    copy.load_state_dict(model.state_dict(), assign=True)
    # Buffers left out of the state dict (rotary frequencies) are still on the meta device.
    originals = dict(model.named_buffers(remove_duplicate=False))
    for name, buffer in copy.named_buffers(remove_duplicate=False):
        if buffer.is_meta:
            owner, _, attribute = name.rpartition(".")
            setattr(copy.get_submodule(owner), attribute, originals[name])
    return copy.eval()


def _pooling_mode(pooling: Any) -> str:
    if pooling is None:
        raise UnsupportedArchitecture("sentence-transformers body has no Pooling module")
    mode = pooling.get_config_dict().get("pooling_mode")
    if mode not in ("mean", "max", "cls"):
        raise UnsupportedArchitecture(f"pooling mode {mode!r} is not supported (one of mean, max or cls)")
    return mode


def _label_names(classes: list[Any], setfit_labels: Any, head: Path) -> list[str]:
    """SetFit's own label names when it saved them; then the head's string classes;
    then the class values themselves."""
    if setfit_labels is not None:
        if not isinstance(setfit_labels, list) or len(setfit_labels) != len(classes):
            raise HeadMismatch(
                f"config_setfit.json names {len(setfit_labels) if isinstance(setfit_labels, list) else 'no list of'} "
                f"labels but head {head.name} has {len(classes)} outputs"
            )
        if all(isinstance(c, (int, np.integer)) for c in classes):
            # Integer classes index the label list (they may be a subset, in sorted order).
            return [str(setfit_labels[int(c)]) if 0 <= int(c) < len(setfit_labels) else str(c) for c in classes]
        return [str(label) for label in setfit_labels]
    return [str(c) for c in classes]


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:300]
