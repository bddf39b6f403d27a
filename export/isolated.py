"""Run one heavy export step in a child process, so that the memory it takes goes back when it ends.

Tracing, the transformer fusions, quantization and the selective search's probe each hold several
copies of the weights for a while (the tracer's folded constants, protobufs being parsed and written,
ONNX Runtime's arena). In one long process those peaks pile up: C allocators keep what was freed for
later, and an arena never shrinks. A 160M-parameter decoder reached 12 GB that way; each step in its
own process keeps the export's peak to the largest single step (docs/export.md#large-models).

The child is spawned, not forked: the parent holds ONNX Runtime and PyTorch thread pools, which a
fork would copy in an undefined state. Errors cross back as themselves (they are pickled), so the
command's exit codes and one-line messages hold; a child the kernel kills for memory becomes
``OutOfResources``.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import signal
import sys
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import ParamSpec, TypeVar

from export.errors import OutOfResources

P = ParamSpec("P")
R = TypeVar("R")


def _die_with_parent() -> None:
    """A step whose export was killed stops too, instead of running on for minutes (Linux's prctl)."""
    if sys.platform == "linux":
        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def run(step: str, function: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
    """``function(*args, **kwargs)`` in a fresh process; ``step`` names it in the error if the process dies.

    ``function`` must be importable at module level, and its arguments and result picklable."""
    with ProcessPoolExecutor(
        max_workers=1, mp_context=multiprocessing.get_context("spawn"), initializer=_die_with_parent
    ) as pool:
        try:
            return pool.submit(function, *args, **kwargs).result()
        except BrokenProcessPool:
            raise OutOfResources(
                f"the export step that was {step} was killed before it finished, most likely for memory: "
                "give the export more memory (docs/export.md#large-models)"
            ) from None
