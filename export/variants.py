"""Build the ONNX variants: fp32, fused fp32, dynamic int8 and selective int8.

Selective int8 keeps in fp32 the nodes whose quantization hurts accuracy most,
measured one node at a time on the validation set rather than guessed.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from service.core import gate

# onnx is imported where it is used: the command's --help and its variant names need only this module's
# constants, in an environment without the export stage's packages.

FP32 = "fp32"
OPTIMIZED = "fp32-optimized"
INT8, SELECTIVE, INT8_WEIGHTS, INT4_WEIGHTS = gate.INT8_VARIANTS  # held to the int8 tolerances of the gate
# Built by ``--variant auto`` whatever the budget.
CLASSIC = (FP32, OPTIMIZED, INT8, SELECTIVE)
# Weight-only variants (``export.weight_only``): smaller, but slower than dynamic int8 on the CPUs
# measured, so ``--variant auto`` builds them only when no variant above passes and fits.
WEIGHT_ONLY = (INT8_WEIGHTS, INT4_WEIGHTS)
VARIANTS = (*CLASSIC, *WEIGHT_ONLY)
INT8_VARIANTS = gate.INT8_VARIANTS
QUANTIZED_OPS = ("MatMul", "Attention", "EmbedLayerNormalization", "Gather")
# The selective search ranks only these. The token-embedding table stays int8 in every
# int8 variant: it is most of the model's bytes, and quantizing it alone stays inside
# the gate (`python -m bench.int8_options` on the default: 99.2% agreement, max |Δprob| 0.027).
SEARCHED_OPS = ("MatMul", "Attention")


def _fresh(target: Path) -> None:
    """onnx appends to an existing external-data file; start each graph from none."""
    data = target.with_name(target.name + ".data")
    if data.exists():
        data.unlink()


def optimize(source: Path, target: Path, *, external: bool = False) -> Path:
    """Apply ONNX Runtime's transformer fusions (attention, layer norm, GELU)."""
    from onnxruntime.transformers.optimizer import optimize_model

    # The optimizer logs every fusion it could not apply; those are expected for
    # families other than BERT and are not errors.
    logging.getLogger("onnxruntime.transformers").setLevel(logging.ERROR)
    model = optimize_model(str(source), model_type="bert", num_heads=0, hidden_size=0, opt_level=1, use_gpu=False)
    _fresh(target)
    model.save_model_to_file(str(target), use_external_data_format=external)
    return target


class _Without(logging.Filter):
    """Drop the records that hold ``fragment``."""

    def __init__(self, fragment: str) -> None:
        super().__init__()
        self.fragment = fragment

    def filter(self, record: logging.LogRecord) -> bool:
        return self.fragment not in record.getMessage()


# onnxruntime logs this on the root logger at every quantize_dynamic call: it asks for shape inference,
# which dynamic quantization of these graphs does not need (the gate measures what comes out).
_PREPROCESS_HINT = _Without("consider to run pre-processing before quantization")


def quantize(
    source: Path,
    target: Path,
    *,
    exclude: Iterable[str] = (),
    only: Iterable[str] | None = None,
    external: bool = False,
) -> Path:
    """Dynamic int8, per-channel weights; ``exclude`` nodes stay fp32."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    if _PREPROCESS_HINT not in logging.getLogger().filters:
        logging.getLogger().addFilter(_PREPROCESS_HINT)
    _fresh(target)

    quantize_dynamic(
        str(source),
        str(target),
        per_channel=True,
        # 7-bit weights avoid the u8*s8 saturation of CPUs without VNNI.
        reduce_range=True,
        weight_type=QuantType.QInt8,
        op_types_to_quantize=list(QUANTIZED_OPS),
        nodes_to_exclude=list(exclude),
        nodes_to_quantize=list(only) if only is not None else None,
        # Needed when the source graph was fused by the transformer optimizer:
        # its contrib ops carry no type information for their weights.
        extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
        use_external_data_format=external,
    )
    return target


def store_half(path: Path, *, min_elements: int = 4096) -> Path:
    """Store the large fp32 weights left in a graph (the nodes selective int8 keeps) as
    fp16, each followed by a Cast back to fp32.

    ONNX Runtime folds the Casts when the session loads, so the arithmetic stays fp32
    and as fast; only the file shrinks (the default bundle: 49 to 31 MB). The rounding
    this adds is measured by the gate like any other, on the graph that ships.
    """
    import onnx
    from onnx import helper, numpy_helper

    from export.convert import save_onnx, uses_external_data

    external = uses_external_data(path)
    model = onnx.load(str(path))
    graph = model.graph
    casts = []
    for init in list(graph.initializer):
        if init.data_type != onnx.TensorProto.FLOAT or math.prod(init.dims) < min_elements:
            continue
        half = numpy_helper.from_array(numpy_helper.to_array(init).astype("float16"), init.name + "/fp16")
        casts.append(
            helper.make_node("Cast", [half.name], [init.name], to=onnx.TensorProto.FLOAT, name=init.name + "/widen")
        )
        graph.initializer.remove(init)
        graph.initializer.append(half)
    for index, node in enumerate(casts):
        graph.node.insert(index, node)
    save_onnx(model, path, external=external)  # a graph over 2 GB stays in two files
    return path


def quantizable_nodes(model_path: Path) -> list[str]:
    """Matrix products with a constant weight: the candidates for staying in fp32."""
    import onnx

    model = onnx.load(str(model_path), load_external_data=False)
    initializers = {init.name for init in model.graph.initializer}
    return [
        node.name
        for node in model.graph.node
        if node.op_type in SEARCHED_OPS and any(name in initializers for name in node.input[1:2])
    ]


def rank_sensitivity(
    source: Path,
    workdir: Path,
    error_of: Callable[[Path], float],
    progress: Callable[[str], None] = lambda _: None,
    *,
    external: bool = False,
) -> list[tuple[str, float]]:
    """Quantize each node alone and measure the damage; most harmful first."""
    nodes = quantizable_nodes(source)
    scores = []
    for index, node in enumerate(nodes, 1):
        path = quantize(source, workdir / "probe.onnx", only=[node], external=external)
        scores.append((node, error_of(path)))
        progress(f"sensitivity {index}/{len(nodes)}: {node} -> {scores[-1][1]:.4f}")
    return sorted(scores, key=lambda item: item[1], reverse=True)


def _int8_columns(weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``quantize``'s int8 of a weight: the values and one scale per output channel (column)."""
    scale = np.abs(weight).max(axis=0, keepdims=True) / 64
    scale[scale == 0] = 1.0
    return np.clip(np.round(weight / scale), -64, 64).astype(np.int8), scale.astype(np.float32)


def probe_graph(source: Path, target: Path, *, external: bool = False) -> list[str]:
    """Write a copy of the fp32 graph in which any one searched node can run as dynamic int8 would.

    Each searched node gets a boolean input ``probe/N``: when true, its activation goes through
    DynamicQuantizeLinear and back (uint8, one scale for the tensor, as at run time) and its weight is
    swapped for the fake-quantized copy of what ``quantize`` stores. One session then measures every
    node's damage, one run each, instead of one quantization and one session per node. Returns the
    searched nodes in graph order; ``probe/N`` belongs to the N-th.

    The copies are stored as int8 with a DequantizeLinear (a quarter of an fp32 copy: 0.35 GB, not
    1.4 GB, for a 0.5B-parameter decoder), and with ``external`` the graph keeps its weights in an
    external-data file: the probe of a graph near 2 GB is over protobuf's limit as one file.
    """
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(source))
    graph = model.graph
    initializers = {init.name: init for init in graph.initializer}
    names = quantizable_nodes(source)
    index_of = {name: index for index, name in enumerate(names)}
    ordered = []
    for node in graph.node:  # each probe just before the node it feeds keeps the graph in topological order
        index = index_of.get(node.name)
        if index is not None:
            switch, activation, weight = f"probe/{index}", node.input[0], node.input[1]
            graph.input.append(helper.make_tensor_value_info(switch, onnx.TensorProto.BOOL, []))
            values, columns = _int8_columns(numpy_helper.to_array(initializers[weight]))
            stored = numpy_helper.from_array(values, f"{weight}/int8")
            column_scale = numpy_helper.from_array(columns.reshape(-1), f"{weight}/int8/scale")
            graph.initializer.extend([stored, column_scale])
            fake = f"{weight}/fake"
            q, scale, zero = (f"{switch}/{part}" for part in ("q", "scale", "zero"))
            ordered += [
                helper.make_node(
                    "DequantizeLinear", [stored.name, column_scale.name], [fake], name=f"{switch}/weights", axis=1
                ),
                helper.make_node("DynamicQuantizeLinear", [activation], [q, scale, zero], name=f"{switch}/quantize"),
                helper.make_node("DequantizeLinear", [q, scale, zero], [f"{switch}/x"], name=f"{switch}/dequantize"),
                helper.make_node("Where", [switch, f"{switch}/x", activation], [f"{switch}/in"], name=f"{switch}/a"),
                helper.make_node("Where", [switch, fake, weight], [f"{switch}/weight"], name=f"{switch}/w"),
            ]
            node.input[0], node.input[1] = f"{switch}/in", f"{switch}/weight"
        ordered.append(node)
    del graph.node[:]
    graph.node.extend(ordered)
    from export.convert import save_onnx

    save_onnx(model, target, external=external)
    return names


class Probe:
    """One session over ``probe_graph``: logits with any set of the searched nodes run as int8 would."""

    def __init__(self, source: Path, workdir: Path, *, external: bool = False) -> None:
        import onnxruntime as ort

        path = workdir / "probe.onnx"
        self.nodes = probe_graph(source, path, external=external)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        # Constant folding would turn every int8 weight copy back into fp32 (a second copy of the model's
        # matrices); dequantizing them at each run costs little beside the run itself.
        self.session = ort.InferenceSession(
            str(path), options, providers=["CPUExecutionProvider"], disabled_optimizers=["ConstantFolding"]
        )

    def switches(self, quantized: Iterable[str]) -> dict[str, np.ndarray]:
        """The ``probe/N`` inputs that run exactly the nodes in ``quantized`` as int8."""
        on = set(quantized)
        return {f"probe/{index}": np.array(name in on) for index, name in enumerate(self.nodes)}


def probed_damage(
    probe: Probe,
    run: Callable[[dict[str, np.ndarray]], np.ndarray],
    error_of: Callable[[np.ndarray], float],
) -> list[tuple[str, float]]:
    """Each searched node's damage with it alone as int8 (``error_of`` the logits ``run`` gives for the
    probe's switches), most harmful first."""
    damage = [(name, error_of(run(probe.switches([name])))) for name in probe.nodes]
    return sorted(damage, key=lambda item: item[1], reverse=True)
