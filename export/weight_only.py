"""Weight-only variants: blockwise int8 or int4 weights, fp32 activations and arithmetic.

Every matrix product with a constant weight becomes ONNX Runtime's ``MatMulNBits`` (its weights
in blocks of ``BLOCK_SIZE`` rows, one fp32 scale per block), and the token-embedding lookup (a
``Gather`` on a constant table, tied to an LM head or not: a classifier graph has no LM head)
becomes ``GatherBlockQuantized`` on the same kind of blocks. Unlike dynamic int8, nothing depends
on the batch: no activation is quantized, so a text gets the same logits alone or in a batch.

Why these settings (``python -m bench.weight_only_options``: a Qwen2 of hidden 256 and 4 layers,
fine-tuned briefly, max |Δlogit| against the original on the 238 built-in texts; docs/export.md):

* ``accuracy_level`` 4: int8 arithmetic inside ``MatMulNBits`` on CPUs with VNNI/AMX, as
  onnxruntime-genai runs LLMs (level 0, fp32 arithmetic, halved the error but gives up that speed);
* int8: blocks of 32, symmetric (0.125; blocks of 128: 0.145 for a file 8 % smaller; asymmetric
  blocks were worse at either size);
* int4: blocks of 32, asymmetric (0.59, against 0.89 symmetric and 0.87-1.16 for blocks of 128):
  int4 is the variant that loses most, so it gets the finest blocks and zero points.

``MatMulNBitsQuantizer`` can quantize a ``Gather`` only to int4 and only by moving the graph to
opset 21, which changes the meaning of ops such as ``ReduceMean`` in an opset-17 graph; the
embedding table is therefore quantized here, to ``uint8`` data with ``bits`` 8 or 4 (two values a
byte), which ONNX Runtime's CPU kernel reads at any opset.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from export.convert import save_onnx
from export.variants import INT4_WEIGHTS, INT8_WEIGHTS, WEIGHT_ONLY

VARIANTS = WEIGHT_ONLY
BITS = {INT8_WEIGHTS: 8, INT4_WEIGHTS: 4}
BLOCK_SIZE = {INT8_WEIGHTS: 32, INT4_WEIGHTS: 32}
SYMMETRIC = {INT8_WEIGHTS: True, INT4_WEIGHTS: False}  # of the matrix products; embedding blocks are symmetric
ACCURACY_LEVEL = 4
# Tables smaller than this stay fp32: position or token-type tables of a few rows gain nothing.
MIN_TABLE_ELEMENTS = 4096


def quantize(
    source: Path,
    target: Path,
    variant: str,
    *,
    external: bool = False,
    block_size: int | None = None,
    symmetric: bool | None = None,
    accuracy_level: int = ACCURACY_LEVEL,
    embeddings: bool = True,
) -> Path:
    """Write ``variant`` of the fp32 graph at ``source`` to ``target`` (``block_size`` and
    ``symmetric`` of the matrix products: the defaults, or others to measure)."""
    bits, block = BITS[variant], block_size or BLOCK_SIZE[variant]
    symmetric = SYMMETRIC[variant] if symmetric is None else symmetric
    model = quantize_matmuls(onnx.load(str(source)), bits, block, symmetric=symmetric, accuracy_level=accuracy_level)
    if embeddings:
        quantize_embeddings(model, bits, block)
    return save_onnx(model, target, external=external)


def quantize_matmuls(
    model: onnx.ModelProto,
    bits: int,
    block_size: int,
    *,
    symmetric: bool = True,
    accuracy_level: int = ACCURACY_LEVEL,
) -> onnx.ModelProto:
    from onnxruntime.quantization.matmul_nbits_quantizer import (
        DefaultWeightOnlyQuantConfig,
        MatMulNBitsQuantizer,
    )

    # The quantizer logs every node it quantizes at INFO on its own logger.
    logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer").setLevel(logging.WARNING)
    config = DefaultWeightOnlyQuantConfig(
        block_size=block_size,
        is_symmetric=symmetric,
        accuracy_level=accuracy_level,
        op_types_to_quantize=("MatMul",),
        bits=bits,
    )
    quantizer = MatMulNBitsQuantizer(
        model,
        bits=bits,
        block_size=block_size,
        is_symmetric=symmetric,
        accuracy_level=accuracy_level,
        op_types_to_quantize=("MatMul",),
        algo_config=config,
    )
    quantizer.process()
    return quantizer.model.model


def quantize_embeddings(model: onnx.ModelProto, bits: int, block_size: int) -> list[str]:
    """Replace each ``Gather`` on a large constant 2-D table by ``GatherBlockQuantized``; the names
    of the tables replaced."""
    graph = model.graph
    initializers = {init.name: init for init in graph.initializer}
    readers: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            readers[name] = readers.get(name, 0) + 1
    replaced = []
    for index, node in enumerate(graph.node):
        table = initializers.get(node.input[0]) if node.op_type == "Gather" and node.input else None
        if table is None or len(table.dims) != 2 or table.data_type != onnx.TensorProto.FLOAT:
            continue
        rows, width = table.dims
        axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
        if rows * width < MIN_TABLE_ELEMENTS or axis != 0 or width % block_size or readers[table.name] != 1:
            continue
        data, scales = _blocks(numpy_helper.to_array(table), bits, block_size)
        quantized = numpy_helper.from_array(data, f"{table.name}/q{bits}")
        scale = numpy_helper.from_array(scales, f"{table.name}/scales")
        graph.node[index].CopyFrom(
            helper.make_node(
                "GatherBlockQuantized",
                [quantized.name, node.input[1], scale.name],
                list(node.output),
                name=f"{node.name or table.name}/q{bits}",
                domain="com.microsoft",
                gather_axis=0,
                quantize_axis=1,
                block_size=block_size,
                bits=bits,
            )
        )
        graph.initializer.remove(table)
        graph.initializer.extend([quantized, scale])
        replaced.append(table.name)
    if replaced and not any(opset.domain == "com.microsoft" for opset in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    return replaced


def _blocks(table: np.ndarray, bits: int, block_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric blocks along each row: unsigned data with the kernel's implied zero point
    (2^(bits-1)), 4-bit values packed two a byte, low nibble first; and one scale a block."""
    rows, width = table.shape
    blocks = table.reshape(rows, width // block_size, block_size)
    top = 2 ** (bits - 1) - 1
    scales = np.abs(blocks).max(axis=-1) / top
    scales[scales == 0] = 1.0
    values = np.clip(np.round(blocks / scales[..., None]), -top, top).astype(np.int16) + top + 1
    data = values.reshape(rows, width).astype(np.uint8)
    if bits == 4:
        data = data[:, 0::2] | (data[:, 1::2] << 4)
    return data, scales.astype(np.float32)
