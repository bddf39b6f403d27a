"""ONNX Runtime's CPU session: runs every graph a bundle carries, on every CPU."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from service.core.backends.base import ONNXRUNTIME, RunsItsGraph
from service.core.cpu import available_cores

_shared_thread_pool = False


def share_one_thread_pool(intra_op_threads: int = 0, inter_op_threads: int = 1) -> None:
    """Run every session created after this call on one process-wide pair of thread pools
    and one memory arena.

    ONNX Runtime's environment is process-wide and created with the first session,
    so this must run before any session exists (later calls change nothing). N
    models then share ``intra_op_threads`` threads instead of bringing N x cores,
    and one arena instead of N arenas each grown to its own largest batch. The
    price: ONNX Runtime stops spinning between runs (``session.force_spinning_stop``)
    only for per-session pools, so shared threads spin briefly after each batch;
    and the shared arena keeps what a removed model's batches grew it to (for the
    other models to reuse) instead of handing it back.
    """
    global _shared_thread_pool
    if not _shared_thread_pool:
        ort.set_global_thread_pool_sizes(intra_op_threads or available_cores(), inter_op_threads)
        cpu = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT)
        ort.create_and_register_allocator(cpu, None)
        _shared_thread_pool = True


def session_options(intra_op_threads: int = 0, inter_op_threads: int = 1) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if _shared_thread_pool:  # the pools' sizes were set once for the process
        options.use_per_session_threads = False
        options.add_session_config_entry("session.use_env_allocators", "1")
    else:
        # Parallelism inside one batch; 0 means every core this process may use.
        options.intra_op_num_threads = intra_op_threads or available_cores()
        options.inter_op_num_threads = inter_op_threads
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    # Threads spin between the operators of one run (waking sleeping threads for
    # each operator cost ~0.2 ms per short query), then stop as soon as the run
    # returns, so idle threads do not steal the cores that tokenization, the event
    # loop and neighbours need.
    options.add_session_config_entry("session.intra_op.allow_spinning", "1")
    options.add_session_config_entry("session.force_spinning_stop", "1")
    # Memory patterns plan one block per input shape and the arena then grows to the next
    # power of two: with dynamic shapes that held 1.6x the memory a batch needs (1.2 GB
    # against 0.75 GB for 64 x 256 tokens of the default model) and cost short queries nothing.
    options.enable_mem_pattern = False
    return options


def run_options(*, shrink_arena: bool) -> ort.RunOptions:
    options = ort.RunOptions()
    # A failed run raises, and the service logs that once with the request's id; ONNX
    # Runtime's own stderr line would say it a second time, without the id.
    options.log_severity_level = 4
    if shrink_arena:
        options.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
    return options


class OnnxRuntimeBackend(RunsItsGraph):
    name = ONNXRUNTIME
    version = ort.__version__

    def __init__(
        self, model_path: Path, *, variant: str = "", intra_op_threads: int = 0, inter_op_threads: int = 1
    ) -> None:
        self.model_path = Path(model_path)
        self.variant = variant
        self._run_options = run_options(shrink_arena=False)
        self._shrinking_run_options = run_options(shrink_arena=True)
        self.session = ort.InferenceSession(
            str(model_path),
            sess_options=session_options(intra_op_threads, inter_op_threads),
            providers=["CPUExecutionProvider"],
        )
        self.input_names = [i.name for i in self.session.get_inputs()]

    @property
    def precision(self) -> str:
        # Every quantized variant multiplies in int8: dynamic int8 by design, the weight-only ones (int4
        # included) because MatMulNBits runs at accuracy level 4, int8 arithmetic (export/weight_only.py).
        return "int8" if self.variant.startswith(("int8", "int4")) else "fp32"

    def run(self, feeds: dict[str, np.ndarray], *, large: bool = False) -> np.ndarray:
        options = self._shrinking_run_options if large else self._run_options
        (logits,) = self.session.run(["logits"], feeds, options)
        return np.asarray(logits, dtype=np.float32)
