"""The real service: uvicorn on a socket, in the serving-only environment."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.conftest import ROOT, needs_export
from tests.helpers import SERVE_PYTHON, ServerProcess, free_port, metric_value, require_serve_env, until

FORBIDDEN = ("torch", "transformers", "optimum", "sentence_transformers", "sklearn")
pytestmark = needs_export


@pytest.fixture(autouse=True)
def serving_environment():
    require_serve_env()


@pytest.mark.parametrize("module", FORBIDDEN)
def test_heavy_packages_are_not_importable_in_the_serving_environment(module):
    proc = subprocess.run([str(SERVE_PYTHON), "-c", f"import {module}"], capture_output=True, text=True)
    assert proc.returncode == 1
    assert f"No module named '{module}'" in proc.stderr


def test_service_never_imports_heavy_packages():
    """Even where they are installed (the export venv), the service does not load them."""
    code = (
        "import sys, service.cli, service.app, service.protocols.tei.routes, service.core.engine;"
        f"loaded = [m for m in {FORBIDDEN!r} if m in sys.modules]; print(loaded)"
    )
    proc = subprocess.run([str(ROOT / ".venv/bin/python"), "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert proc.stdout.strip() == "[]", proc.stderr


def test_onnx_runtime_telemetry_is_off_unless_asked_for():
    """ONNX Runtime uploads usage telemetry from a thread of its own unless ORT_DISABLE_TELEMETRY
    is set before it starts; importing the service sets it, and an explicit 0 opts back in."""
    code = "import os, service, onnxruntime; print(os.environ['ORT_DISABLE_TELEMETRY'])"

    def setting(**env: str) -> str:
        environment = {k: v for k, v in os.environ.items() if k != "ORT_DISABLE_TELEMETRY"} | env
        proc = subprocess.run(
            [str(SERVE_PYTHON), "-c", code], cwd=ROOT, capture_output=True, text=True, env=environment
        )
        assert proc.returncode == 0, proc.stderr
        return proc.stdout.strip()

    assert (setting(), setting(ORT_DISABLE_TELEMETRY="0")) == ("1", "0")


@pytest.fixture
def server(tiny_bundle):
    servers = []

    def start(bundle=None, *args):
        process = ServerProcess(bundle or tiny_bundle("bert"), *args)
        servers.append(process)
        return process

    yield start
    for process in servers:
        process.stop()


def loaded_modules(pid: int) -> str:
    return Path(f"/proc/{pid}/maps").read_text()


def test_real_server_predicts_and_loads_no_torch(server, tiny_checkpoint):
    from export.sources import load_source

    process = server()
    process.wait_ready()
    response = httpx.post(process.url + "/predict", json={"inputs": ["what is my balance", "hi"]})
    assert response.status_code == 200
    expected = load_source(str(tiny_checkpoint("bert"))).reference(["what is my balance", "hi"])
    probs = np.exp(expected) / np.exp(expected).sum(axis=1, keepdims=True)
    assert [r[0]["label"] for r in response.json()] == [f"label_{i}" for i in probs.argmax(1)]
    assert [r[0]["score"] for r in response.json()] == pytest.approx(probs.max(1).tolist(), abs=1e-5)
    maps = loaded_modules(process.proc.pid)
    assert "onnxruntime" in maps
    assert "torch" not in maps and "sklearn" not in maps


def test_refuses_a_tampered_bundle(tiny_bundle, tmp_path):
    bundle = tmp_path / "b"
    shutil.copytree(tiny_bundle("bert"), bundle)
    with (bundle / "model.onnx").open("ab") as handle:
        handle.write(b"\0")
    proc = subprocess.run(
        [str(SERVE_PYTHON), "-m", "service", "--bundle", str(bundle)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 3
    assert proc.stderr.startswith(f"error: bundle {bundle} failed its integrity check: model.onnx: sha256 ")
    assert "Traceback" not in proc.stderr


def test_bad_setting_exits_2(tiny_bundle):
    proc = subprocess.run(
        [str(SERVE_PYTHON), "-m", "service", "--bundle", str(tiny_bundle("bert")), "--port", "x"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (proc.returncode, proc.stderr) == (2, "error: --port has an invalid value 'x'\n")


@pytest.mark.parametrize("flag", ["--port", "--grpc-port"])
def test_a_taken_port_exits_4_before_loading_the_model(tiny_bundle, flag):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        other = ["--port", str(free_port())] if flag == "--grpc-port" else []
        proc = subprocess.run(
            [str(SERVE_PYTHON), "-m", "service", "--bundle", str(tiny_bundle("bert")), *other, flag, str(port)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert (proc.returncode, proc.stderr) == (4, f"error: {flag} {port} on 127.0.0.1: Address already in use\n")


def test_concurrent_callers_each_get_their_own_answer(server, tiny_bundle):
    from service.core.classifier import OnnxClassifier

    process = server(None, "--max-wait-ms", "5")
    process.wait_ready()
    texts = [f"request number {i} " + "word " * (i % 17) for i in range(200)]
    direct = OnnxClassifier.from_bundle(tiny_bundle("bert")).logits(texts)

    async def call(client, i):
        response = await client.post("/predict", json={"inputs": texts[i], "raw_scores": True})
        assert response.status_code == 200
        return {item["label"]: item["score"] for item in response.json()}

    async def run_all():
        limits = httpx.Limits(max_connections=64)
        async with httpx.AsyncClient(base_url=process.url, limits=limits, timeout=60) as client:
            return await asyncio.gather(*(call(client, i) for i in range(len(texts))))

    answers = asyncio.run(run_all())
    for i, answer in enumerate(answers):
        got = [answer[f"label_{k}"] for k in range(3)]
        np.testing.assert_allclose(got, direct[i], atol=1e-4)
    metrics = httpx.get(process.url + "/metrics").text
    batches = float(metrics.split('classifier_batch_size_count{model="classifier"} ')[1].split()[0])
    assert batches < len(texts), "concurrent requests were never merged into one batch"


def test_sigterm_drains_in_flight_requests_and_exits_0(server):
    # A 5 s batching window keeps requests queued when SIGTERM arrives: it is sent once all twenty are queued
    # (a few milliseconds), and the drain lets the window end and the batch answer.
    process = server(None, "--max-wait-ms", "5000", "--max-batch-size", "1000", "--drain-timeout", "60")
    process.wait_ready()

    async def run():
        async with httpx.AsyncClient(base_url=process.url, timeout=120) as client:
            calls = [asyncio.create_task(client.post("/predict", json={"inputs": f"text {i}"})) for i in range(20)]
            await until(lambda: metric_value(process.url, "classifier_admitted_inputs") == 20, "20 inputs admitted")
            process.proc.send_signal(signal.SIGTERM)
            return await asyncio.gather(*calls)

    responses = asyncio.run(run())
    assert [r.status_code for r in responses] == [200] * 20
    assert process.proc.wait(timeout=30) == 0
    with pytest.raises(httpx.TransportError):
        httpx.get(process.url + "/live", timeout=2)


def test_ctrl_c_stops_the_server_cleanly(server):
    process = server()
    process.wait_ready()
    assert httpx.post(process.url + "/predict", json={"inputs": "hello"}).status_code == 200
    process.proc.send_signal(signal.SIGINT)
    assert process.proc.wait(timeout=30) == 0
    log = process.log.read_text()
    # The access line of the last request was written out before the exit, and nothing else followed.
    assert '"path": "/predict", "status": 200' in log
    assert "Traceback" not in log and "KeyboardInterrupt" not in log


def test_access_log_is_json_without_input_text(server):
    import json

    process = server()
    process.wait_ready()
    httpx.post(process.url + "/predict", json={"inputs": "my secret account number 1234"})
    process.stop()
    lines = [json.loads(line) for line in process.log.read_text().splitlines() if line.startswith("{")]
    requests = [entry for entry in lines if entry.get("msg") == "request" and entry["path"] == "/predict"]
    assert requests and requests[0]["status"] == 200 and "request_id" in requests[0]
    assert "secret" not in process.log.read_text()


def test_inputs_are_logged_only_when_asked(server):
    process = server(None, "--log-level", "debug", "--log-inputs", "true")
    process.wait_ready()
    httpx.post(process.url + "/predict", json={"inputs": "visible on request"})
    process.stop()
    assert '"texts": ["visible on request"]' in process.log.read_text()
