"""Trace a loaded classifier into a single-file ONNX graph whose output is ``logits``."""

from __future__ import annotations

import warnings
from pathlib import Path

import onnx
import torch

from export.errors import ConversionFailed
from export.sources import Source
from service.manifest import PAIR

OPSET = 17
SAMPLE_TEXTS = ["a short example", "and another, slightly longer, example text"]


def export_onnx(source: Source, path: Path) -> Path:
    inputs = [(text, "a second text") for text in SAMPLE_TEXTS] if source.task == PAIR else SAMPLE_TEXTS
    sample = source.tokenizer.encode_batch(inputs)
    width = max(len(e.ids) for e in sample)
    columns = {
        "input_ids": [e.ids + [0] * (width - len(e.ids)) for e in sample],
        "attention_mask": [[1] * len(e.ids) + [0] * (width - len(e.ids)) for e in sample],
        "token_type_ids": [e.type_ids + [0] * (width - len(e.ids)) for e in sample],
    }
    args = tuple(torch.tensor(columns[name], dtype=torch.long) for name in source.input_names)
    dynamic_axes = {name: {0: "batch", 1: "sequence"} for name in source.input_names}
    dynamic_axes["logits"] = {0: "batch"}
    try:
        with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
            # The TorchScript tracer warns about every Python-level branch on shapes;
            # correctness is proven afterwards by verification, not by these warnings.
            warnings.simplefilter("ignore")
            torch.onnx.export(
                source.module,
                args,
                str(path),
                input_names=source.input_names,
                output_names=["logits"],
                dynamic_axes=dynamic_axes,
                opset_version=OPSET,
                do_constant_folding=True,
                dynamo=False,
            )
        onnx.checker.check_model(str(path))
    except Exception as exc:  # the tracer and the exporter raise anything from RuntimeError to IndexError
        raise ConversionFailed(
            f"{source.model_id} could not be converted to ONNX: {type(exc).__name__}: {_first_line(exc)}"
        ) from None
    return path


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or "no message"
    return text.splitlines()[0][:300]


def graph_inputs(path: Path) -> list[str]:
    """The inputs the traced graph really takes: tracing drops the ones the model
    ignores (DeBERTa-v3 with ``type_vocab_size=0`` never reads ``token_type_ids``)."""
    model = onnx.load(str(path), load_external_data=False)
    initializers = {init.name for init in model.graph.initializer}
    return [i.name for i in model.graph.input if i.name not in initializers]
