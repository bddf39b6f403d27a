"""Shared helpers for service tests: ready-waiting and real server processes."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path

import httpx

from tests.conftest import ROOT

SERVE_PYTHON = ROOT / ".venv-serve" / "bin" / "python"


def require_serve_env() -> None:
    from tests.conftest import require

    require(SERVE_PYTHON.exists(), "the serving-only environment .venv-serve (scripts/setup.sh creates it)")


def wait_ready(client, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if client.get("/health").status_code == 200:
            return
        time.sleep(0.02)
    raise AssertionError("service did not become ready")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServerProcess:
    """``python -m service`` in the serving-only virtual environment, on a real socket."""

    def __init__(self, bundle: Path | None, *args: str, env: dict[str, str] | None = None) -> None:
        """Serve ``bundle``, or with ``bundle=None`` whatever ``args`` name (``--repository DIR``)."""
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = ROOT / ".pytest_cache" / f"server-{self.port}.log"
        self.log.parent.mkdir(exist_ok=True)
        self._log_handle = self.log.open("wb")
        self.proc = subprocess.Popen(
            [str(SERVE_PYTHON), "-m", "service", *(["--bundle", str(bundle)] if bundle else []),
             "--port", str(self.port), *args],
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=self._log_handle,
            env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
        )

    def wait_ready(self, timeout: float = 90.0, path: str = "/health") -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited with {self.proc.returncode}: {self.log.read_text()}")
            try:
                if httpx.get(self.url + path, timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        raise AssertionError("server did not become ready")

    def log_with(self, text: str, timeout: float = 5.0) -> str:
        """The log once it holds ``text``: the service writes its log lines from a thread, in batches."""
        deadline = time.monotonic() + timeout
        while text not in (log := self.log.read_text()) and time.monotonic() < deadline:
            time.sleep(0.02)
        return log

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log_handle.close()


def readme_snippet(marker: str) -> str:
    """The README's one Python block containing ``marker``: the tests run what users copy."""
    text = (ROOT / "README.md").read_text()
    blocks = [block.split("```", 1)[0] for block in text.split("```python\n")[1:]]
    (snippet,) = [block for block in blocks if marker in block]
    return snippet
