"""The memory budget of ``--variant auto``: expected resident memory of a variant, and the choice.

Expected RSS of the service holding a variant, before any batch::

    expected RSS = BASE + FACTOR[variant] x graph size (model.onnx plus its external data)

BASE (150 MiB) is the service process without a model (Python, the web stack, ONNX Runtime, the
tokenizer: the default bundle's service is ready at 172 MiB with 31 MB of graph). FACTOR is what a
session holds per byte of graph, measured with ``python -m bench.variant_memory`` on random Qwen2
graphs of 117 and 458 MB (docs/memory.md), and depends on how the bundle stores its weights: graphs
over ``MAP_OVER`` (64 MiB) are written with external data, which ONNX Runtime maps into memory, and
then hold about their size once (fp32 1.06, int8 1.30, int8-weights 1.42, int4-weights 1.74 measured:
matrix weights repacked for the kernels, ``MatMulNBits`` with its own packed copy, int4 unpacked for
int8 arithmetic); smaller graphs are read into a protobuf and copied into tensors, about twice (1.9 to
2.35). The factors below round those up. Batches come on top (``MAX_BATCH_TOKENS``; docs/memory.md),
so leave room for them in the budget.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from export.errors import DoesNotFit, UsageError
from service.core.gate import VariantReport

MiB = 2**20
BASE = 150 * MiB
# Graphs above this are written with external data (``export.convert.MAP_OVER``; not imported: torch).
MAP_OVER = 64 * MiB
# variant -> (factor with external data, factor as one file)
FACTOR = {
    "fp32": (1.1, 1.95),
    "fp32-optimized": (1.1, 1.95),
    "int8": (1.35, 2.1),
    "int8-selective": (1.35, 2.1),
    "int8-weights": (1.45, 2.1),
    "int4-weights": (1.8, 2.4),
}
# The shortest window a budget may bring a declared length down to.
MIN_WINDOW = 256
# A quantized graph's bytes per parameter: one for int8 weights, plus block scales and the few tensors
# kept in fp32 (the 0.5B shape: 494M parameters, 556 MB int8-weights, 494 MB int8).
QUANTIZED_BYTES_PER_PARAMETER = 1.15
_UNITS = {"": 1, "b": 1, "k": 10**3, "m": 10**6, "g": 10**9, "ki": 2**10, "mi": 2**20, "gi": 2**30}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmg]i?)?b?\s*$", re.IGNORECASE)


def parse_size(text: str) -> int:
    """``1GiB``, ``1Gi`` (as Kubernetes writes it), ``800MB``, ``1.5G`` or a number of bytes."""
    match = _SIZE.match(text)
    if not match:
        raise UsageError(f"--max-memory {text!r} is not a size such as 1GiB, 1Gi, 800MB or 1073741824")
    value = float(match.group(1)) * _UNITS[(match.group(2) or "").lower()]
    if value < 1:
        raise UsageError(f"--max-memory {text!r} must be more than zero")
    return int(value)


def expected_rss(variant: str, size_bytes: int) -> int:
    mapped, whole = FACTOR.get(variant, FACTOR["fp32"])
    return int(BASE + (mapped if size_bytes > MAP_OVER else whole) * size_bytes)


def fits(report: VariantReport, budget: int | None) -> bool:
    return budget is None or expected_rss(report.variant, report.size_bytes) <= budget


def gib(size: int) -> str:
    """A memory size as people write limits: MiB below 1 GiB, GiB with two decimals above."""
    return f"{size / 2**20:.0f} MiB" if size < 2**30 else f"{size / 2**30:.2f} GiB"


def refuse(reports: Sequence[VariantReport], budget: int) -> DoesNotFit:
    """One line: the budget, what the smallest passing variant needs, and which variants fit but failed."""
    passing = sorted((r for r in reports if r.passed), key=lambda r: expected_rss(r.variant, r.size_bytes))
    smallest = passing[0]
    failed_fitting = [r.variant for r in reports if not r.passed and fits(r, budget)]
    also = f"; {', '.join(failed_fitting)} would fit but failed the gate" if failed_fitting else ""
    return DoesNotFit(
        f"no variant that passed the gate fits --max-memory {gib(budget)}: the smallest, {smallest.variant}, "
        f"needs about {gib(expected_rss(smallest.variant, smallest.size_bytes))}{also}"
    )


def window_bytes(length: int, *, heads: int, intermediate: int) -> int:
    """ONNX Runtime's activations for one window of ``length`` tokens through the exported graph, whose
    attention is eager: about 3.4 maps of heads x length² floats alive at once, and the feed-forward
    layer's two intermediate activations. Measured on the 0.5B shape's int8-weights graph (14 heads,
    intermediate 4864): 24, 52, 186 and 739 MB for 256, 512, 1024 and 2048 tokens; this gives 22, 70,
    239 and 878 (docs/memory.md#large-models)."""
    return int(4 * length * (3.4 * heads * length + 2 * intermediate))


def window_length(declared: int, *, heads: int, intermediate: int, parameters: int, budget: int) -> int:
    """The longest window, ``declared`` or the powers of two below it down to ``MIN_WINDOW``, whose
    activations fit in ``budget`` beside the model held in a quantized variant. A long input is read in
    windows of the bundle's max_length, one window a batch (``LONG_BATCH_TOKENS``), so one window is what
    the service must find room for."""
    room = budget - expected_rss("int8-weights", int(parameters * QUANTIZED_BYTES_PER_PARAMETER))
    length = declared
    while length > MIN_WINDOW and window_bytes(length, heads=heads, intermediate=intermediate) > room:
        length = max(MIN_WINDOW, 1 << ((length - 1).bit_length() - 1))
    return length
