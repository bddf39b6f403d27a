"""Heavy export steps of large models run in a child process of their own (``export.isolated``): the
same bundle comes out as from one process, and a step's errors come back as themselves."""

from __future__ import annotations

import os
import signal

import pytest

from export import isolated
from export.errors import OutOfResources, UsageError
from tests.conftest import needs_export


def refuses(value: str) -> None:
    raise UsageError(f"refused {value}")


def killed_by_the_kernel() -> None:
    os.kill(os.getpid(), signal.SIGKILL)  # what the OOM killer does to a step that outgrows the machine


def where() -> int:
    return os.getpid()


def test_a_step_runs_in_another_process_and_its_errors_come_back_as_themselves():
    assert isolated.run("asking", where) != os.getpid()
    with pytest.raises(UsageError, match="^refused this$"):
        isolated.run("refusing", refuses, "this")


def test_a_step_killed_for_memory_is_out_of_resources():
    with pytest.raises(OutOfResources) as raised:
        isolated.run("quantizing", killed_by_the_kernel)
    assert str(raised.value) == (
        "the export step that was quantizing was killed before it finished, most likely for memory: "
        "give the export more memory (docs/export.md#large-models)"
    )


@needs_export
def test_steps_in_child_processes_make_the_same_bundle(tmp_path):
    """The tiny decoder as if it were large: conversion, fusions, quantization and the selective search
    (a tighter gate makes int8 fail) each in a child; the bundle's bytes and every gate figure are the same."""
    from export.pipeline import export_bundle
    from service.core.gate import Thresholds
    from service.core.manifest import read_manifest
    from tests import tiny_models

    model = str(tiny_models.build_decoder("qwen2", tmp_path / "qwen2", tie_word_embeddings=True))
    lines: list[str] = []
    strict = Thresholds(int8_max_prob_diff=0.005)
    apart = export_bundle(
        out=tmp_path / "apart", model=model, isolate_over=0, progress=lines.append, thresholds=strict, openvino=False
    )
    together = export_bundle(out=tmp_path / "together", model=model, thresholds=strict, openvino=False)
    assert any("each step in a process of its own" in line for line in lines)
    assert any(line.startswith("measuring each node's quantization damage") for line in lines)
    assert [r.to_dict() for r in apart.reports] == [r.to_dict() for r in together.reports]
    assert {r.variant for r in apart.reports} >= {"fp32", "fp32-optimized", "int8", "int8-selective"}
    assert read_manifest(tmp_path / "apart").files == read_manifest(tmp_path / "together").files


def waits_forever(pid_file: str) -> None:
    import threading
    from pathlib import Path

    Path(pid_file).write_text(str(os.getpid()))
    threading.Event().wait()


def test_a_step_stops_when_its_export_is_killed(tmp_path):
    """A killed export leaves no step running on (minutes of CPU and gigabytes for a large model)."""
    import subprocess
    import sys

    from tests.conftest import ROOT
    from tests.helpers import wait_for

    pid_file = tmp_path / "step.pid"
    code = (
        "from export import isolated; from tests.export import test_isolated as t; "
        f"isolated.run('waiting', t.waits_forever, {str(pid_file)!r})"
    )
    export = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT)
    try:
        wait_for(lambda: pid_file.exists() and pid_file.read_text() != "", "the step started")
        step = int(pid_file.read_text())
    finally:
        export.kill()
        export.wait()
    wait_for(lambda: not _alive(step), "the step stopped with its export")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A child that died but is not yet reaped is a zombie: gone for this purpose.
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(") ")[-1][0] != "Z"
    except FileNotFoundError:
        return False
