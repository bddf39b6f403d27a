"""Shared helpers for service tests: ready-waiting and real server processes."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from bench.process import free_port, wait_ready
from tests.conftest import ROOT

SERVE_PYTHON = ROOT / ".venv-serve" / "bin" / "python"


def require_serve_env() -> None:
    from tests.conftest import require

    require(SERVE_PYTHON.exists(), "the serving-only environment .venv-serve (scripts/setup.sh creates it)")


# How long a wait for a condition may take before the test calls it a hang. Only a guard against a test
# that would otherwise never end: a loaded machine may be slow, never wrong, so it is far above any real wait.
HANG_SECONDS = 120.0


def wait_for(condition: Callable[[], object], what: str, timeout: float = HANG_SECONDS) -> None:
    """Poll ``condition`` until it holds: synchronisation on a state, never on a duration."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what}: not reached in {timeout:g} s")
        time.sleep(0.01)


async def until(condition: Callable[[], object], what: str, timeout: float = HANG_SECONDS) -> None:
    """``wait_for`` inside an event loop: other tasks run while ``condition`` does not hold yet."""
    import asyncio

    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what}: not reached in {timeout:g} s")
        await asyncio.sleep(0.01)


def metric_value(url: str, name: str, labels: str = '{model="classifier"}') -> float | None:
    """One sample from /metrics, or None while the series has not appeared."""
    text = httpx.get(url + "/metrics").text
    match = re.search(rf"^{re.escape(name)}{re.escape(labels)} (\S+)$", text, re.MULTILINE)
    return None if match is None else float(match.group(1))


def wait_app_ready(client, timeout: float = HANG_SECONDS) -> None:
    """Until an in-process app (a TestClient running its lifespan) answers /health with 200."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if client.get("/health").status_code == 200:
            return
        time.sleep(0.02)
    raise AssertionError("service did not become ready")


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
            [
                str(SERVE_PYTHON),
                "-m",
                "service",
                *(["--bundle", str(bundle)] if bundle else []),
                "--port",
                str(self.port),
                *args,
            ],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=self._log_handle,
            env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
        )

    def wait_ready(self, timeout: float = HANG_SECONDS, path: str = "/health") -> None:
        try:
            wait_ready(self.proc, self.url, timeout=timeout, path=path)
        except SystemExit as exc:  # the benchmarks' way of saying it; a failed assertion here
            raise AssertionError(f"{exc}: {self.log.read_text()}") from None

    def log_with(self, text: str, timeout: float = HANG_SECONDS) -> str:
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
    """The one Python block containing ``marker`` in README.md or the docs site (docs/**/*.md):
    the tests run what users copy."""
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
    blocks = [block.split("```", 1)[0] for page in pages for block in page.read_text().split("```python\n")[1:]]
    (snippet,) = [block for block in blocks if marker in block]
    return snippet


def make_key_pair(directory: Path, name: str) -> tuple[Path, Path]:
    """A fresh elliptic-curve (P-256) key pair as PEM files: ``NAME.pem`` (private) and ``NAME.pub``."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    private, public = directory / f"{name}.pem", directory / f"{name}.pub"
    private.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    public.write_bytes(
        key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return private, public


def read_response(sock: socket.socket) -> bytes:
    """One whole response on a kept-alive connection: the head, then as many body bytes as it says. A single
    recv may return the head alone, the body following in another segment when the machine is loaded."""
    raw = b""
    while b"\r\n\r\n" not in raw:
        chunk = sock.recv(65536)
        assert chunk, f"the connection closed before a whole head: {raw!r}"
        raw += chunk
    head, _, body = raw.partition(b"\r\n\r\n")
    found = re.search(rb"(?im)^content-length: *(\d+)", head)
    length = int(found.group(1)) if found else 0
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk, f"the connection closed before a whole body: {raw!r}"
        body += chunk
    return head + b"\r\n\r\n" + body
