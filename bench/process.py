"""Starting a server process for the benchmarks: a free port, then ready or a clear exit, then a clean stop.

Every benchmark that needs a server over HTTP starts it here, the same way: from the repository root,
its output discarded, ``PYTHONPATH`` on the root so ``python -m bench.naive_server`` resolves.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
# What a server gets to finish in-flight work and exit after SIGTERM, before it is killed.
STOP_SECONDS = 60.0


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


@dataclass(frozen=True)
class Server:
    process: subprocess.Popen
    url: str


def start(
    command: Sequence[str],
    port: int,
    *,
    env: Mapping[str, str] | None = None,
    name: str = "server",
    timeout: float = 300.0,
    path: str = "/health",
) -> Server:
    """Run ``command`` (which listens on ``port``) with ``env`` over this environment, and return once
    ``path`` answers 200. One that dies or is not ready in ``timeout`` is stopped before the exit."""
    process = subprocess.Popen(
        list(command),
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(process, url, name=name, timeout=timeout, path=path)
    except BaseException:
        stop(process)
        raise
    return Server(process, url)


def stop(*processes: subprocess.Popen, timeout: float = STOP_SECONDS) -> None:
    """SIGTERM to all at once (they drain side by side), then wait for each; one still running after
    ``timeout`` is killed."""
    for process in processes:
        if process.poll() is None:
            process.terminate()
    for process in processes:
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextmanager
def serving(command: Sequence[str], port: int, **options) -> Iterator[Server]:
    """``start``, and ``stop`` on the way out, however the block ends."""
    server = start(command, port, **options)
    try:
        yield server
    finally:
        stop(server.process)
