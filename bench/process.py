"""Waiting for a server process the benchmarks started: ready, or a clear exit."""

from __future__ import annotations

import subprocess
import time

import httpx


def wait_ready(process: subprocess.Popen, url: str, *, name: str = "server", timeout: float = 300.0) -> None:
    """Return once ``url``/health answers 200; exit with a message if the process dies or the time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"error: {name} exited with {process.returncode}")
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise SystemExit(f"error: {name} not ready after {timeout:g} s")
