"""What this CPU offers the model: the instruction sets that decide which kernels run, and its cores."""

from __future__ import annotations

import math
import os
from pathlib import Path

# The instruction sets that decide which kernels ONNX Runtime and OpenVINO run.
CPU_FLAGS = (
    "avx2",
    "avx512f",
    "avx512_vnni",
    "avx_vnni",
    "avx512_bf16",
    "amx_tile",
    "amx_int8",
    "amx_bf16",
)
# Matrix units that multiply bf16 natively: Intel's AMX, and AVX-512 BF16 (Cooper Lake, AMD Zen 4 and later).
BF16_FLAGS = ("amx_bf16", "avx512_bf16")


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> list[str]:
    try:
        words = set(cpuinfo.read_text().split())
    except OSError:
        return []
    return [flag for flag in CPU_FLAGS if flag in words]


def available_cores(cgroup_cpu_max: Path = Path("/sys/fs/cgroup/cpu.max")) -> int:
    """Cores this process may use: its CPU affinity, capped by a cgroup v2 CPU quota.

    onnxruntime's own default counts the host's cores, which oversubscribes a
    container limited to fewer (docker --cpus, Kubernetes limits).
    """
    cores = len(os.sched_getaffinity(0))
    try:
        quota, period = cgroup_cpu_max.read_text().split()
        if quota != "max":
            cores = min(cores, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, cores)
