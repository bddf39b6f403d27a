"""The real image in a real Docker engine: build, run, call, inspect, stop.

Runs wherever a Docker engine and the base image are available (.ci/docker-engine.sh
and .ci/base-image.sh set both up) and skips otherwise, except under CI or with
RUN_DOCKER_TESTS=1, where a missing engine is a failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import subprocess
import time

import httpx
import pytest

from service.core.cpu import BF16_FLAGS, cpu_flags
from tests.conftest import ROOT, needs_export
from tests.helpers import free_port

IMAGE = "onnx-classifier:test"
BASE_IMAGE = os.environ.get("BASE_IMAGE", "local/python:3.11-bookworm")
# The image holds at most 150 MB above its base, default bundle included; README
# "Size" shows where the bytes go (scripts/image-size.sh).
SIZE_BUDGET_MB = 150
# WITH_OPENVINO=1 adds OpenVINO's trimmed CPU runtime (100 MB) and keeps the bundle's OpenVINO graph (45 MB):
# 278 MB above the base (docs/deployment/image.md "Size").
OPENVINO_SIZE_BUDGET_MB = 290
# The OpenVINO image serves with OpenVINO only where the CPU multiplies bf16 natively (service/core/backends/choice.py).
BF16_UNITS = [flag for flag in BF16_FLAGS if flag in cpu_flags()]
OPENVINO_VERSION = (ROOT / "requirements-openvino.txt").read_text().split("openvino==")[1].split()[0]

REQUIRED = bool(os.environ.get("CI")) or os.environ.get("RUN_DOCKER_TESTS") == "1"


def _missing() -> str | None:
    """Why the image tests cannot run here, or None when they can."""
    if not shutil.which("docker"):
        return "no docker client installed (run .ci/docker-engine.sh)"
    if subprocess.run(["docker", "info"], capture_output=True, timeout=60).returncode != 0:
        return "no Docker engine running (run .ci/docker-engine.sh)"
    if subprocess.run(["docker", "image", "inspect", BASE_IMAGE], capture_output=True, timeout=60).returncode != 0:
        return f"Docker engine running, but no base image {BASE_IMAGE} (run .ci/base-image.sh)"
    return None


MISSING = None if REQUIRED else _missing()
pytestmark = [
    needs_export,
    pytest.mark.docker,
    pytest.mark.skipif(MISSING is not None, reason=MISSING or ""),
]


def docker(*args: str, check: bool = True, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run(["docker", *args], capture_output=True, text=True, check=check, timeout=timeout)


def build(tag: str, default_bundle, *build_args: str) -> str:
    assert shutil.which("docker"), "docker client missing"
    assert docker("info", check=False).returncode == 0, "no Docker engine running (.ci/docker-engine.sh)"
    target = ROOT / "bundles" / "default"
    if not (target / "bundle.json").exists():
        shutil.copytree(default_bundle, target, dirs_exist_ok=True)
    subprocess.run(["bash", "scripts/wheelhouse.sh"], cwd=ROOT, check=True, timeout=600)
    args = ["--build-arg", f"BASE_IMAGE={BASE_IMAGE}", *build_args]
    result = subprocess.run(
        ["docker", "build", "-f", "Dockerfile.slim", *args, "-t", tag, "."],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return tag


@pytest.fixture(scope="module")
def image(default_bundle):
    yield build(IMAGE, default_bundle)
    docker("rmi", "-f", IMAGE, check=False)


@pytest.fixture(scope="module")
def grpc_image(default_bundle):
    """The image KServe runs (deploy/kserve/servingruntime.yaml): gRPC and tracing in."""
    tag = IMAGE + "-grpc"
    yield build(tag, default_bundle, "--build-arg", "WITH_GRPC=1", "--build-arg", "WITH_OTEL=1")
    docker("rmi", "-f", tag, check=False)


def run_container(image: str, *publish: str, options: tuple[str, ...] = ()):
    """A started container of ``image`` (extra ``docker run`` options), healthy, with its
    published ports as {container port: host:port}."""
    ports = {inner: free_port() for inner in ("8000", *publish)}
    name = f"classifier-test-{ports['8000']}"
    mapping = [arg for inner, outer in ports.items() for arg in ("-p", f"127.0.0.1:{outer}:{inner}")]
    docker("run", "-d", "--name", name, "--read-only", "--tmpfs", "/tmp", *mapping, *options, image)
    url = f"http://127.0.0.1:{ports['8000']}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return name, {inner: f"127.0.0.1:{outer}" for inner, outer in ports.items()}
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    logs = docker("logs", name, check=False).stderr[-2000:]
    docker("rm", "-f", name, check=False)
    pytest.fail("container never became healthy: " + logs)


@contextlib.contextmanager
def serving(image: str, *options: str):
    """(name, url) of a healthy container of ``image``; removed afterwards."""
    name, addresses = run_container(image, options=options)
    try:
        yield name, "http://" + addresses["8000"]
    finally:
        docker("rm", "-f", name, check=False)


@pytest.fixture
def container(image):
    with serving(image) as running:
        yield running


def test_container_serves_predict_and_v2(container):
    name, url = container
    info = httpx.get(url + "/info").json()
    # The slim image has no OpenVINO and its baked bundle leaves out the OpenVINO graph it could not run.
    assert info["engine"]["engine"] == "onnxruntime"
    assert info["engine"]["reason"] == "auto: OpenVINO is not installed (requirements-openvino.txt)"
    assert info["reverification"]["passed"] is True
    assert docker("exec", name, "ls", "/models/default").stdout.split() == [
        "bundle.json",
        "model.onnx",
        "reference.json",
        "tokenizer.json",
    ]
    top = httpx.post(url + "/predict", json={"inputs": "connect me to a human agent", "top_k": 1}).json()
    assert [item["label"] for item in top] == ["connect_to_human"]
    body = {
        "inputs": [
            {"name": "text", "shape": [1], "datatype": "BYTES", "data": ["what is my checking account balance"]}
        ],
        "outputs": [{"name": "label"}],
    }
    out = httpx.post(url + "/v2/models/classifier/infer", json=body).json()
    assert out["outputs"] == [{"name": "label", "datatype": "BYTES", "shape": [1], "data": ["balance"]}]


def test_container_serves_the_docs_page_assets(container):
    """The image keeps only the Swagger UI files the page loads; those must all be there."""
    _, url = container
    page = httpx.get(url + "/docs").text
    loaded = re.findall(r'(?:src|href)="(docs/[^"]+)"', page)
    assert "docs/swagger-ui/swagger-ui-bundle.js" in loaded and "docs/init.js" in loaded
    for asset in loaded:
        assert httpx.get(f"{url}/{asset}").status_code == 200, asset
    assert httpx.get(url + "/docs/swagger-ui/swagger-ui.js.map").status_code == 404


def test_runs_as_non_root_and_sigterm_exits_cleanly(container):
    name, _ = container
    assert docker("exec", name, "id", "-u").stdout.strip() == "10001"
    docker("stop", "-t", "30", name)
    assert docker("inspect", name, "--format", "{{.State.ExitCode}}").stdout.strip() == "0"


@pytest.fixture
def limited_container(image):
    """The image under the memory limit docker-compose.yml and deploy/k8s set: 1 GiB, no swap."""
    with serving(image, "--memory", "1g", "--memory-swap", "1g") as running:
        yield running


def test_worst_valid_mix_stays_under_half_the_memory_limit(limited_container):
    """README "Memory": full queue of maximum requests, then bodies at MAX_BODY_BYTES; no OOM kill."""
    from bench.memory import worst_mix

    name, url = limited_container
    statuses = asyncio.run(worst_mix(url, rounds=1)) + asyncio.run(worst_mix(url, rounds=1, fill_body=True))
    state = json.loads(docker("inspect", name, "--format", "{{json .State}}").stdout)
    assert state["Running"] and not state["OOMKilled"], state
    assert set(statuses) <= {200, 429}, statuses
    status = docker("exec", name, "cat", "/proc/1/status").stdout
    peak_mib = int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1)) / 1024
    print(f"peak resident memory under the worst valid mix: {peak_mib:.0f} MiB")
    assert peak_mib < 512


def test_a_grpc_flood_stays_inside_the_memory_limit(grpc_image):
    """1,500 ModelInfer calls of bodies at MAX_BODY_BYTES at once, under the shipped 1 GiB: refused, not held."""
    from bench.memory import GRPC_REFUSALS, grpc_flood

    name, addresses = run_container(grpc_image, "8001", options=("--memory", "1g", "--memory-swap", "1g"))
    try:
        statuses = asyncio.run(grpc_flood("http://" + addresses["8000"], addresses["8001"], calls=1500))
        state = json.loads(docker("inspect", name, "--format", "{{json .State}}").stdout)
        status = docker("exec", name, "cat", "/proc/1/status").stdout
    finally:
        docker("rm", "-f", name, check=False)
    assert state["Running"] and not state["OOMKilled"], state
    assert set(statuses) <= GRPC_REFUSALS and statuses["OK"] >= 1 and statuses["RESOURCE_EXHAUSTED"] >= 1, statuses
    peak_mib = int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1)) / 1024
    print(f"peak resident memory under the gRPC flood: {peak_mib:.0f} MiB; {dict(statuses)}")
    assert peak_mib < 800


def test_image_has_no_heavy_packages(image):
    heavy = "('torch', 'transformers', 'optimum', 'sklearn', 'sentence_transformers')"
    code = f"import importlib.util as u; print([m for m in {heavy} if u.find_spec(m)])"
    assert docker("run", "--rm", "--entrypoint", "python", image, "-c", code).stdout.strip() == "[]"


def test_size_above_base(image):
    size = int(docker("image", "inspect", image, "--format", "{{.Size}}").stdout)
    base = int(docker("image", "inspect", BASE_IMAGE, "--format", "{{.Size}}").stdout)
    above_mb = (size - base) / 1e6
    print(f"image: {above_mb:.0f} MB above the base image")
    assert above_mb <= SIZE_BUDGET_MB, f"{above_mb:.0f} MB above the base image"


@pytest.fixture(scope="module")
def openvino_image(default_bundle):
    """WITH_OPENVINO=1: built only where the CPU has bf16 units, the only CPUs on which it serves with OpenVINO."""
    if not BF16_UNITS:
        pytest.skip(f"the CPU has no bf16 matrix units ({' or '.join(BF16_FLAGS)}): ENGINE=auto stays on ONNX Runtime")
    tag = IMAGE + "-openvino"
    yield build(tag, default_bundle, "--build-arg", "WITH_OPENVINO=1")
    docker("rmi", "-f", tag, check=False)


# What compiling an ONNX graph for the CPU loads of OpenVINO: every other library of the wheel was cut.
OPENVINO_LIBRARIES = [
    "_pyopenvino.cpython-311-x86_64-linux-gnu.so",
    "libhwloc.so.15",
    "libopenvino.so.2641",
    "libopenvino_intel_cpu_plugin.so",
    "libopenvino_onnx_frontend.so.2641",
    "libtbb.so.12",
    "libtbbbind_2_5.so.3",
    "libtbbmalloc.so.2",
]


def test_openvino_image_serves_with_openvino_in_bf16(openvino_image):
    """ENGINE=auto (the default) picks OpenVINO in bf16 on this CPU, the bundle's reference set proves it at
    load, and it answers; the process maps every OpenVINO library left in the image and no other."""
    with serving(openvino_image, "--memory", "1g", "--memory-swap", "1g") as (name, url):
        info = httpx.get(url + "/info").json()
        top = httpx.post(url + "/predict", json={"inputs": "connect me to a human agent", "top_k": 1}).json()
        body = {
            "inputs": [
                {"name": "text", "shape": [1], "datatype": "BYTES", "data": ["what is my checking account balance"]}
            ]
        }
        v2 = httpx.post(url + "/v2/models/classifier/infer", json=body).json()
        libraries = docker("exec", name, "ls", "/opt/venv/lib/python3.11/site-packages/openvino/libs").stdout.split()
        maps = docker("exec", name, "cat", "/proc/1/maps").stdout
        status = docker("exec", name, "cat", "/proc/1/status").stdout
    assert info["engine"] == {
        "engine": "openvino",
        "version": OPENVINO_VERSION,
        "precision": "bf16",
        "file": "openvino.onnx",
        "reason": f"auto: the CPU multiplies bf16 natively ({', '.join(BF16_UNITS)})",
        "fallback": None,
    }
    reverified = info["reverification"]
    assert (reverified["passed"], reverified["engine"], reverified["precision"]) == (True, "openvino", "bf16")
    assert reverified["failures"] == [] and reverified["inputs"] >= 200
    assert [item["label"] for item in top] == ["connect_to_human"] and 0.9 < top[0]["score"] <= 1
    assert [output["data"] for output in v2["outputs"] if output["name"] == "label"] == [["balance"]]
    mapped = sorted({line.rsplit("/", 1)[-1] for line in maps.splitlines() if "/site-packages/openvino/" in line})
    assert mapped == OPENVINO_LIBRARIES
    assert sorted([*libraries, "_pyopenvino.cpython-311-x86_64-linux-gnu.so"]) == OPENVINO_LIBRARIES
    peak = re.search(r"VmHWM:\s+(\d+) kB", status)
    assert peak, status
    peak_mib = int(peak.group(1)) / 1024
    print(f"OpenVINO image: peak resident memory after load and two requests: {peak_mib:.0f} MiB")
    assert peak_mib < 768


def test_openvino_image_size_above_base(openvino_image):
    size = int(docker("image", "inspect", openvino_image, "--format", "{{.Size}}").stdout)
    base = int(docker("image", "inspect", BASE_IMAGE, "--format", "{{.Size}}").stdout)
    above_mb = (size - base) / 1e6
    print(f"OpenVINO image: {above_mb:.0f} MB above the base image")
    assert above_mb <= OPENVINO_SIZE_BUDGET_MB, f"{above_mb:.0f} MB above the base image"


def test_real_clients_against_the_grpc_image(grpc_image, hf_client_online):
    """tritonclient (HTTP with binary tensors, and gRPC) and Hugging Face's InferenceClient, unchanged."""
    import numpy as np
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient
    from huggingface_hub import InferenceClient

    name, addresses = run_container(grpc_image, "8001")
    try:
        text = np.array(["connect me to a human agent"], dtype=object)
        http = httpclient.InferenceServerClient(addresses["8000"])
        tensor = httpclient.InferInput("text", [1], "BYTES")
        assert http.is_server_ready() and http.is_model_ready("classifier")
        assert [i["name"] for i in http.get_model_metadata("classifier")["inputs"]] == ["text"]
        for binary in (True, False):  # binary tensor data (the client's default) and JSON
            tensor.set_data_from_numpy(text, binary_data=binary)
            assert http.infer("classifier", [tensor]).as_numpy("label").tolist() == [b"connect_to_human"]
        grpc = grpcclient.InferenceServerClient(addresses["8001"])
        assert grpc.is_server_ready() and grpc.is_model_ready("classifier")
        assert [i.name for i in grpc.get_model_metadata("classifier").inputs] == ["text"]
        tensor = grpcclient.InferInput("text", [1], "BYTES")
        tensor.set_data_from_numpy(text)
        assert grpc.infer("classifier", [tensor]).as_numpy("label").tolist() == [b"connect_to_human"]
        top = InferenceClient(base_url="http://" + addresses["8000"]).text_classification(text[0], top_k=1)
        assert [r.label for r in top] == ["connect_to_human"]
    finally:
        docker("rm", "-f", name, check=False)


@pytest.fixture(scope="module")
def compose(image):
    """docker compose (Debian's docker-compose) on its own project, torn down afterwards."""
    assert shutil.which("docker-compose"), "docker-compose missing (.ci/docker-engine.sh installs it)"
    subprocess.run(["bash", "scripts/wheelhouse.sh", "--export"], cwd=ROOT, check=True, timeout=900)
    port = free_port()
    env = {**os.environ, "BASE_IMAGE": BASE_IMAGE, "API_PORT": str(port)}
    project = f"classifiertest{port}"

    def run(*args: str, timeout: float = 1200, **extra_env: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["docker-compose", "-p", project, *args],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**env, **extra_env},
        )

    try:
        yield run, f"http://127.0.0.1:{port}"
    finally:
        run("--profile", "export", "--profile", "loadtest", "down", "-v", "--remove-orphans")


def test_compose_export_then_serve_then_loadtest(compose):
    run, url = compose
    built = run("--profile", "export", "build", "export")
    assert built.returncode == 0, built.stderr[-3000:]
    exported = run(
        "--profile",
        "export",
        "run",
        "--rm",
        "export",
        "--variant",
        "fp32-optimized",
        "--out",
        "/bundles/default",
        "--quiet",
    )
    assert exported.returncode == 0, exported.stderr[-3000:]
    assert "bundle: /bundles/default (fp32-optimized, 157 labels, max_length 256)" in exported.stdout
    up = run("up", "-d", "--build", "api", BUNDLE="/bundles/default")
    assert up.returncode == 0, up.stderr[-3000:]
    container = run("ps", "-q", "api").stdout.strip()
    deadline = time.monotonic() + 120
    while docker("inspect", container, "--format", "{{.State.Health.Status}}").stdout.strip() != "healthy":
        assert time.monotonic() < deadline, docker("logs", container, check=False).stderr[-2000:]
        time.sleep(1)
    info = httpx.get(url + "/info").json()
    assert info["variant"] == "fp32-optimized"  # the bundle from the named volume, not the baked-in one
    top = httpx.post(url + "/predict", json={"inputs": "connect me to a human agent", "top_k": 1}).json()
    assert [item["label"] for item in top] == ["connect_to_human"]
    load = run(
        "--profile",
        "loadtest",
        "run",
        "--rm",
        "loadtest",
        "run",
        "--url",
        "http://api:8000",
        "--concurrency",
        "1,4",
        "--duration",
        "1",
        BUNDLE="/bundles/default",
    )
    assert load.returncode == 0, load.stdout[-2000:] + load.stderr[-2000:]
    assert load.stdout.splitlines()[0].split()[:4] == ["mode", "level", "requests", "req/s"]


def test_the_image_starts_and_serves_as_kserve_starts_it(grpc_image, default_bundle):
    """deploy/kserve/servingruntime.yaml's container as KServe runs it: the model mounted read-only at
    /mnt/models, {{.Name}} replaced by the InferenceService's name, Knative's environment (PORT and K_*),
    the runtime's own env; ready on its probe, answering v2 over HTTP on 8080 and gRPC on 8081, tracing
    to an OTLP receiver outside the container, and draining cleanly on SIGTERM."""
    import numpy as np
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient
    import yaml

    from tests.web.test_tracing import Receiver, http_receiver

    receiver = Receiver()
    endpoint, stop_receiver = http_receiver(receiver, host="0.0.0.0")

    runtime = yaml.safe_load((ROOT / "deploy" / "kserve" / "servingruntime.yaml").read_text())
    (spec,) = runtime["spec"]["containers"]
    args = [arg.replace("{{.Name}}", "intents") for arg in spec["args"]]
    env = {"PORT": "8080", "K_SERVICE": "intents-predictor", "K_REVISION": "intents-predictor-00001"}
    env |= {
        "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint.replace("0.0.0.0", "host.docker.internal"),
        "OTEL_BSP_SCHEDULE_DELAY": "50",
    }
    env.update({item["name"]: item["value"] for item in spec.get("env", [])})
    http_port, grpc_port = free_port(), free_port()
    name = f"kserve-test-{http_port}"
    docker(
        "run", "-d", "--name", name, "--read-only", "--tmpfs", "/tmp",
        "--add-host", "host.docker.internal:host-gateway",
        "-v", f"{default_bundle}:/mnt/models:ro",
        "-p", f"127.0.0.1:{http_port}:8080", "-p", f"127.0.0.1:{grpc_port}:8081",
        *(arg for key, value in env.items() for arg in ("-e", f"{key}={value}")),
        grpc_image, *args,
    )  # fmt: skip
    try:
        probe = f"http://127.0.0.1:{http_port}{spec['readinessProbe']['httpGet']['path']}"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(probe, timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        else:
            pytest.fail("never ready: " + docker("logs", name, check=False).stderr[-2000:])
        text = httpclient.InferInput("text", [1], "BYTES")
        text.set_data_from_numpy(np.array(["what is my checking account balance"], dtype=object))
        answer = httpclient.InferenceServerClient(f"127.0.0.1:{http_port}").infer("intents", [text])
        assert answer.as_numpy("label").tolist() == [b"balance"]
        text = grpcclient.InferInput("text", [1], "BYTES")
        text.set_data_from_numpy(np.array(["what is my checking account balance"], dtype=object))
        answer = grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}").infer("intents", [text])
        assert answer.as_numpy("label").tolist() == [b"balance"]
        spans = receiver.wait_for({"POST /v2/models/{model_name}/infer", "inference.GRPCInferenceService/ModelInfer"})
        assert {span["service"] for span in spans} == {"onnx-text-classifier"}
        docker("stop", "-t", "30", name)
        assert docker("inspect", name, "--format", "{{.State.ExitCode}}").stdout.strip() == "0"
    finally:
        docker("rm", "-f", name, check=False)
        stop_receiver()
