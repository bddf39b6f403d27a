"""Trace a loaded classifier into an ONNX graph whose output is ``logits``.

Graphs over the 2 GB protobuf limit keep their weights in one external-data file
beside the graph (``NAME.onnx.data``); every later step reads and writes that
pair, and the bundle holds it as ``model.onnx`` + ``model.onnx.data``.
"""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path
from typing import Any

import onnx
import torch

from export.errors import ConversionFailed
from export.sources import Source
from service.core.manifest import PAIR

OPSET = 17
# Protobuf cannot serialise a model of 2 GiB or more; leave room for the graph itself.
EXTERNAL_DATA_OVER = 2 * 1024**3 - 64 * 1024**2
# A bundle graph larger than this keeps its weights in external data even under the protobuf limit:
# ONNX Runtime maps that file into memory instead of reading it into a protobuf and copying it into
# tensors, which held about twice the graph's size once loaded (``python -m bench.variant_memory``:
# a 458 MB fp32 graph held 877 MB as one file, 518 MB with external data; docs/memory.md).
MAP_OVER = 64 * 1024**2
SAMPLE_TEXTS = ["a short example", "and another, slightly longer, example text"]


def export_onnx(source: Source, path: Path, *, external_data_over: int = EXTERNAL_DATA_OVER) -> Path:
    """Trace into ``path``; weights go to ``path.name + '.data'`` when the graph is larger
    than ``external_data_over`` bytes."""
    trace_dir = path.parent / f".{path.stem}-trace"
    trace_dir.mkdir()
    try:
        traced = _trace(source, trace_dir / path.name)
        # The tracer writes one file per tensor for models over 2 GB; one graph + one data file is the contract.
        files = list(trace_dir.iterdir())
        size = sum(f.stat().st_size for f in files)
        if files == [traced] and size <= external_data_over:
            # Already one file, as wanted: reading and rewriting it would hold the graph three times over.
            traced.replace(path)
        else:
            save_onnx(onnx.load(str(traced)), path, external=size > external_data_over)
    finally:
        shutil.rmtree(trace_dir, ignore_errors=True)
    return path


def convert_checkpoint(loaded_with: dict[str, Any], path: Path, external_data_over: int) -> Path:
    """Load the classifier as ``load_source(**loaded_with)`` and trace it: the conversion as a child
    process runs it (``export.isolated``), its tracer's copies of the weights gone when it ends."""
    from export.sources import load_source

    return export_onnx(load_source(**loaded_with), path, external_data_over=external_data_over)


def data_file(path: Path) -> Path:
    """Where the external data of the graph at ``path`` lives, if it has any."""
    return path.with_name(path.name + ".data")


def uses_external_data(path: Path) -> bool:
    return data_file(path).is_file()


def onnx_size(path: Path) -> int:
    return path.stat().st_size + (data_file(path).stat().st_size if uses_external_data(path) else 0)


def save_onnx(model: onnx.ModelProto, path: Path, *, external: bool) -> Path:
    """One graph file, plus one data file named after it when ``external``."""
    if data_file(path).exists():
        data_file(path).unlink()
    if external:
        onnx.save_model(
            model,
            str(path),
            save_as_external_data=True,
            all_tensors_to_one_file=True,
            location=data_file(path).name,
            size_threshold=1024,
        )
    else:
        onnx.save_model(model, str(path))
    return path


def copy_onnx(source: Path, target: Path, *, external: bool | None = None) -> Path:
    """Copy a graph, renaming its external-data file after ``target``; ``external`` moves its
    weights into (True) or out of (False) an external-data file, None keeps them as they are."""
    if external is None:
        external = uses_external_data(source)
    if not external and not uses_external_data(source):
        shutil.copyfile(source, target)
        return target
    return save_onnx(onnx.load(str(source)), target, external=external)


def external_locations(path: Path) -> set[str]:
    """Every external-data location the graph at ``path`` refers to."""
    locations: set[str] = set()
    for tensor in _tensors(onnx.load(str(path), load_external_data=False).graph):
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            locations.update(entry.value for entry in tensor.external_data if entry.key == "location")
    return locations


def _tensors(graph: onnx.GraphProto):
    """Initializers and attribute tensors, subgraphs included."""
    yield from graph.initializer
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.HasField("t"):
                yield attribute.t
            yield from attribute.tensors
            if attribute.HasField("g"):
                yield from _tensors(attribute.g)
            for subgraph in attribute.graphs:
                yield from _tensors(subgraph)


def _trace(source: Source, path: Path) -> Path:
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
