"""Which engine runs a bundle on this machine: a fixed rule over the setting, the bundle, the installed
OpenVINO and the CPU's flags. Never timings, so the same machine always makes the same choice; the
reference set then proves the choice at load (``service.core.loading``).

``auto`` picks OpenVINO when all of these hold, and ONNX Runtime otherwise:

* OpenVINO is installed, at ``MIN_OPENVINO`` or later (2025.4 answered wrongly in bf16);
* the bundle carries a graph for it and a reference set to prove it with;
* the CPU multiplies bf16 natively (``amx_bf16``, or ``avx512_bf16``: on an AVX-512 BF16 CPU without AMX,
  OpenVINO in bf16 ran the default bundle 2.3-2.7x ONNX Runtime's int8-selective graph at batch 32 and
  1.4-1.8x at batch 1, closer to the original; docs/performance.md).

Without bf16 units OpenVINO would run f32, which is no faster than ONNX Runtime there: ``auto`` stays on
ONNX Runtime. ``onnxruntime`` and ``openvino`` name the engine outright; an explicit ``openvino`` that
cannot run is an error, never a silent fallback.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import metadata

from service.core.backends.base import ONNXRUNTIME, OPENVINO
from service.core.cpu import BF16_FLAGS
from service.core.manifest import Manifest

ENGINE_SETTINGS = ("auto", ONNXRUNTIME, OPENVINO)
MIN_OPENVINO = (2026, 4)


class EngineUnavailable(Exception):
    """ENGINE names an engine that cannot run this bundle here."""


@dataclass(frozen=True)
class Choice:
    engine: str
    precision: str  # what the engine is asked for: fp32 / bf16 (ONNX Runtime: the graph's own)
    reason: str
    explicit: bool  # named by the setting: a failure refuses the version instead of falling back


def installed_openvino() -> tuple[int, int] | None:
    """OpenVINO's release as (year, minor), or None when it is not installed; read without importing it."""
    try:
        major, minor = metadata.version("openvino").split(".")[:2]
        return int(major), int(minor)
    except (metadata.PackageNotFoundError, ValueError):
        return None


def choose(setting: str, manifest: Manifest, flags: list[str], openvino: tuple[int, int] | None) -> Choice:
    bf16 = [flag for flag in BF16_FLAGS if flag in flags]
    precision = "bf16" if bf16 else "fp32"
    if setting == ONNXRUNTIME:
        return Choice(ONNXRUNTIME, "", "ENGINE=onnxruntime", explicit=True)
    unavailable = _openvino_unavailable(manifest, openvino)
    if setting == OPENVINO:
        if unavailable:
            raise EngineUnavailable(f"ENGINE=openvino cannot run this bundle: {unavailable}")
        return Choice(OPENVINO, precision, f"ENGINE=openvino; {_units(bf16)}", explicit=True)
    if unavailable:
        return Choice(ONNXRUNTIME, "", f"auto: {unavailable}", explicit=False)
    if manifest.reference_set is None:
        return Choice(ONNXRUNTIME, "", "auto: the bundle has no reference set to prove OpenVINO with", False)
    if not bf16:
        return Choice(ONNXRUNTIME, "", f"auto: {_units(bf16)}, where OpenVINO would run f32", explicit=False)
    return Choice(OPENVINO, precision, f"auto: {_units(bf16)}", explicit=False)


def _openvino_unavailable(manifest: Manifest, openvino: tuple[int, int] | None) -> str:
    if openvino is None:
        return "OpenVINO is not installed (requirements-openvino.txt)"
    if openvino < MIN_OPENVINO:
        found = ".".join(map(str, openvino))
        return f"OpenVINO {found} is older than {'.'.join(map(str, MIN_OPENVINO))}, which answers correctly in bf16"
    if manifest.engine_file(OPENVINO) is None:
        return (
            "the bundle carries no graph for OpenVINO (exported without it, before format 4, or left out of this copy)"
        )
    return ""


def _units(bf16: list[str]) -> str:
    if bf16:
        return f"the CPU multiplies bf16 natively ({', '.join(bf16)})"
    return f"the CPU has no bf16 matrix units ({' or '.join(BF16_FLAGS)})"
