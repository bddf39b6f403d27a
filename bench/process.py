"""Starting a server process for the benchmarks: a free port, then ready or a clear exit."""

from __future__ import annotations

import socket
import subprocess
import time

import httpx


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_ready(
    process: subprocess.Popen, url: str, *, name: str = "server", timeout: float = 300.0, path: str = "/health"
) -> None:
    """Return once ``url + path`` answers 200; exit with a message if the process dies or the time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"error: {name} exited with {process.returncode}")
        try:
            if httpx.get(url + path, timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise SystemExit(f"error: {name} not ready after {timeout:g} s")
