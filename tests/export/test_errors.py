"""Export failures that used to be slow, misleading or noisy: hub ids without a
network, paths that look like typos, conversion crashes, repeated warnings."""

from __future__ import annotations

import logging
import os
import shutil
import socket
import subprocess
import sys

import pytest

from export.cli import main
from export.errors import ExitCode
from tests.conftest import ROOT, needs_export

pytestmark = needs_export


def run(argv, capsys):
    code = main([*argv, "--quiet"])
    return code, capsys.readouterr().err.strip().splitlines()[-1]


@pytest.mark.parametrize("model", ["models/x", "./x", "a/b/c", "~/nowhere/x", "org/name/"])
def test_a_path_that_looks_like_a_typo_is_a_missing_path(tmp_path, monkeypatch, capsys, model):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").mkdir()
    code, line = run(["--model", model, "--out", str(tmp_path / "b")], capsys)
    assert (code, line) == (ExitCode.INPUT_NOT_FOUND, f"error: model path {model} does not exist")


def test_hub_id_offline_fails_at_once(tmp_path, capsys, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
    attempts: list[object] = []  # "at once": no connection is even tried, whatever the machine's speed
    connect = socket.socket.connect

    def counting(sock: socket.socket, address: object) -> None:
        attempts.append(address)
        connect(sock, address)

    monkeypatch.setattr(socket.socket, "connect", counting)
    code, line = run(["--model", "no-such-org/no-such-model", "--out", str(tmp_path / "b")], capsys)
    assert attempts == []
    assert code == ExitCode.INPUT_NOT_FOUND
    assert line == (
        "error: no-such-org/no-such-model is neither a local path nor a reachable hub model: "
        "the hub is not reachable (HF_HUB_OFFLINE is set) and it is not in the local cache"
    )


def test_hub_id_without_a_connection_fails_at_once(tmp_path):
    """No offline setting, but nothing answers at the endpoint: one refused connection, not retries."""
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    env.update(HF_ENDPOINT="http://127.0.0.1:9", HF_HOME=str(tmp_path / "hf"))
    # The export in a child process whose sockets count their connection attempts to the endpoint: "at once"
    # is one attempt, not a duration.
    counted = tmp_path / "attempts"
    child = f"""
import atexit, runpy, socket, sys
attempts = []
connect = socket.socket.connect
def counting(sock, address):
    if isinstance(address, tuple) and address[1:2] == (9,):
        attempts.append(address)
    return connect(sock, address)
socket.socket.connect = counting
atexit.register(lambda: open({str(counted)!r}, "w").write(str(len(attempts))))
sys.argv = ["export", "--model", "some-org/some-model", "--out", {str(tmp_path / "b")!r}, "--quiet"]
runpy.run_module("export", run_name="__main__", alter_sys=True)
"""
    proc = subprocess.run(
        [sys.executable, "-c", child],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == ExitCode.INPUT_NOT_FOUND
    assert proc.stderr.strip().splitlines()[-1] == (
        "error: some-org/some-model is neither a local path nor a reachable hub model: the hub is not reachable "
        "(127.0.0.1:9: Connection refused) and it is not in the local cache"
    )
    assert "Traceback" not in proc.stderr
    assert counted.read_text() == "1"  # one refused connection, no retries


def test_a_cached_hub_model_exports_offline(tiny_checkpoint, tmp_path, capsys, monkeypatch):
    """The hub cache layout huggingface_hub writes: refs/main names a snapshot directory."""
    from huggingface_hub import constants

    from service.core.manifest import read_manifest

    revision = "0" * 40
    repo = tmp_path / "cache" / "models--tiny-org--tiny-bert"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(revision)
    shutil.copytree(tiny_checkpoint("bert"), repo / "snapshots" / revision)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "b"
    code = main(["--model", "tiny-org/tiny-bert", "--out", str(out), "--variant", "fp32", "--quiet"])
    assert code == 0, capsys.readouterr().err
    manifest = read_manifest(out)
    assert manifest.model_id == "tiny-org/tiny-bert" and manifest.source["path"] == "tiny-org/tiny-bert"


def test_conversion_failure_has_its_own_exit_code(tiny_checkpoint, tmp_path, capsys, monkeypatch):
    import torch

    def crash(*args, **kwargs):
        raise RuntimeError("unordered_map::at\nC++ stack trace follows")

    monkeypatch.setattr(torch.onnx, "export", crash)
    code = main(["--model", str(tiny_checkpoint("bert")), "--out", str(tmp_path / "b"), "--quiet"])
    err = capsys.readouterr().err
    assert code == ExitCode.CONVERSION_FAILED == 13
    assert err == "error: bert0 could not be converted to ONNX: RuntimeError: unordered_map::at\n"
    assert list(tmp_path.iterdir()) == []


def test_the_pre_processing_hint_is_not_logged(tiny_bundle, tmp_path, caplog):
    """onnxruntime's hint at each quantization asks for a step these graphs do not need; the selective
    search quantizes many times, each in its own process for a large model."""
    from export import variants

    with caplog.at_level(logging.WARNING):
        for index in range(3):
            variants.quantize(tiny_bundle("bert") / "model.onnx", tmp_path / f"q{index}.onnx")
    assert [r for r in caplog.records if "pre-processing" in r.getMessage()] == []
    assert (tmp_path / "q2.onnx").is_file()
