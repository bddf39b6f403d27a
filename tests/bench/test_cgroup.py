"""The memory limit the LLM-shape benchmark runs its exports in: a real cgroup, a real child process.
Needs root and a writable memory controller: CI runs as root and must have one; skipped elsewhere."""

from __future__ import annotations

import subprocess
import sys

import pytest

from bench.cgroup import MemoryLimit
from tests.conftest import require

MiB = 2**20
# Touches every page of a buffer of the given size, so it is resident, not only reserved.
TOUCH = "import sys; b = bytearray(int(sys.argv[1]) * 2**20); b[::4096] = b'x' * len(b[::4096])"


@pytest.fixture
def limit():
    try:
        made = MemoryLimit(200 * MiB)
    except SystemExit as exc:  # CI runs as root with a memory controller: there it must work
        require(False, f"a writable memory cgroup ({exc})")
    yield made
    made.remove()


def test_a_child_under_the_limit_completes_and_its_peak_is_counted(limit):
    assert subprocess.run([sys.executable, "-c", TOUCH, "100"], preexec_fn=limit.join).returncode == 0
    assert 100 * MiB <= limit.peak() < 200 * MiB
    assert limit.oom_kills() == 0


def test_a_child_over_the_limit_is_killed_as_a_container_would_be(limit):
    assert subprocess.run([sys.executable, "-c", TOUCH, "400"], preexec_fn=limit.join).returncode == -9
    assert limit.peak() == 200 * MiB
    assert limit.oom_kills() == 1
