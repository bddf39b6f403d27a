"""A model repository behind a real server: versions replaced, models added and removed under
load without a failed request; corrupt and half-copied versions refused while the old one
answers; Triton's repository API with and without a key; one model's overload is its own."""

from __future__ import annotations

import asyncio
import json
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from tests.conftest import needs_export
from tests.helpers import ServerProcess, metric_value, require_serve_env, until, wait_for

pytestmark = needs_export
POLL = 0.5
V1 = {"label_0", "label_1", "label_2"}
V2 = {"v2_a", "v2_b", "v2_c"}
KEY = "repository-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
TEI = {"inputs": "what is my balance"}
V2_BODY = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["what is my balance"]}]}


@pytest.fixture(scope="module")
def second_checkpoint(tmp_path_factory):
    """A tiny checkpoint whose labels tell its answers apart from the first version's."""
    from tests import tiny_models

    return tiny_models.build("bert", tmp_path_factory.mktemp("second"), labels=sorted(V2), seed=1)


def export(checkpoint: Path, out: Path) -> Path:
    from export.pipeline import export_bundle

    export_bundle(out=out, model=str(checkpoint), variant="fp32")
    return out


@pytest.fixture(scope="module")
def second_bundle(second_checkpoint, tmp_path_factory):
    return export(second_checkpoint, tmp_path_factory.mktemp("second-bundle") / "bundle")


def place(bundle: Path, target: Path) -> None:
    """Copy a bundle in as a deployment should: under a hidden name beside it, then one rename."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.parent / f".{target.name}.copying"
    shutil.copytree(bundle, staging)
    staging.rename(target)


def serve(repository: Path, *args: str, env: dict[str, str] | None = None, ready: str = "/health") -> ServerProcess:
    require_serve_env()
    process = ServerProcess(None, "--repository", str(repository), *args, env=env)
    process.wait_ready(path=ready)
    return process


def labels(response: httpx.Response) -> set[str]:
    return {entry["label"] for entry in response.json()}


def index(server: ServerProcess) -> list[dict]:
    return httpx.get(server.url + "/v2/models").json()


def log_events(server: ServerProcess, message: str) -> list[dict]:
    lines = [json.loads(line) for line in server.log.read_text().splitlines() if line.startswith("{")]
    return [line for line in lines if line["msg"] == message]


@dataclass
class Answer:
    target: str
    sent: float
    status: int | None  # None: no HTTP answer at all
    body: object


class Load:
    """Requests in a loop, one thread per target, every answer kept in the order it came."""

    def __init__(self, url: str, headers: dict[str, str] | None = None) -> None:
        self.url = url
        self.headers = headers or {}
        self.answers: list[Answer] = []
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def add(self, target: str, path: str, body: dict) -> None:
        thread = threading.Thread(target=self._run, args=(target, path, body), daemon=True)
        self._threads.append(thread)
        thread.start()

    def _run(self, target: str, path: str, body: dict) -> None:
        with httpx.Client(base_url=self.url, headers=self.headers, timeout=30) as client:
            while not self._stop.is_set():
                sent = time.monotonic()
                try:
                    response = client.post(path, json=body)
                    self.answers.append(Answer(target, sent, response.status_code, response.json()))
                except httpx.HTTPError as exc:
                    self.answers.append(Answer(target, sent, None, repr(exc)))
                time.sleep(0.005)  # leave the two cores some room for the server

    def count(self, target: str) -> int:
        return sum(answer.target == target for answer in self.answers)

    def more(self, target: str, n: int = 20) -> None:
        """Wait for ``n`` more answers for ``target``."""
        start = self.count(target)
        wait_for(lambda: self.count(target) >= start + n, f"{n} more answers from {target}")

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=60)


def test_versions_replaced_models_added_and_removed_under_load_without_a_failed_request(
    tmp_path, tiny_bundle, second_checkpoint
):
    repository = tmp_path / "repository"
    place(tiny_bundle("bert"), repository / "alpha" / "1")
    place(tiny_bundle("roberta"), repository / "beta")  # a bundle right in the model's directory: version 1
    # A batching window keeps every request queued for a while, so a swap always finds some in flight.
    server = serve(
        repository,
        "--model-control",
        "poll",
        "--poll-interval",
        str(POLL),
        "--default-model",
        "alpha",
        "--max-wait-ms",
        "40",
    )
    load = Load(server.url)
    try:
        assert index(server) == [
            {"name": "alpha", "version": "1", "state": "READY", "reason": ""},
            {"name": "beta", "version": "1", "state": "READY", "reason": ""},
        ]
        load.add("alpha", "/predict", TEI)  # the default model's TEI route
        load.add("alpha-v2", "/v2/models/alpha/infer", V2_BODY)
        load.add("beta", "/models/beta/predict", TEI)
        load.more("alpha")

        # A new version of alpha, written by the export stage straight into the repository layout.
        export(second_checkpoint, repository / "alpha" / "2")
        # Picked up by a later scan, without a restart: how soon depends on the machine, so only that it happens.
        wait_for(
            lambda: any(
                a.target == "alpha" and a.status == 200 and {e["label"] for e in a.body} == V2 for a in load.answers
            ),
            "alpha's second version answering",
        )
        load.more("alpha-v2")

        # A new model, exported into a repository directory that does not exist yet.
        export(second_checkpoint, repository / "gamma" / "1")
        wait_for(
            lambda: {"name": "gamma", "version": "1", "state": "READY", "reason": ""} in index(server), "gamma ready"
        )
        load.add("gamma", "/models/gamma/predict", TEI)
        load.more("gamma")

        # A model removed while its requests run.
        load.more("beta")
        removing = time.monotonic()
        shutil.rmtree(repository / "beta")
        wait_for(lambda: all(row["name"] != "beta" for row in index(server)), "beta gone from the index")
        for target in ("alpha", "alpha-v2", "gamma"):
            load.more(target)
    finally:
        load.stop()
        server.stop()

    # Zero failures: every answer is 200, except that beta's route is 404 once beta has gone.
    failed = [
        a
        for a in load.answers
        if a.status != 200
        and not (
            a.target == "beta"
            and a.sent >= removing
            and a.status == 404
            and a.body
            == {
                "error": "model 'beta' is not served here; this server serves 'alpha', 'gamma'",
                "error_type": "not_found",
            }
        )
    ]
    assert failed == []
    assert [a.status for a in load.answers if a.target == "beta" and a.sent < removing] == [200] * sum(
        a.target == "beta" and a.sent < removing for a in load.answers
    )
    # Each client saw the old version, then the new one, never the old one again: the switch is atomic.
    seen = [frozenset(e["label"] for e in a.body) for a in load.answers if a.target == "alpha"]
    first_new = seen.index(frozenset(V2))
    assert set(seen[:first_new]) == {frozenset(V1)} and set(seen[first_new:]) == {frozenset(V2)}
    versions = [a.body["model_version"] for a in load.answers if a.target == "alpha-v2"]
    assert versions == sorted(versions) and set(versions) == {"1", "2"}
    assert all(
        labels_of == V2 for labels_of in ({e["label"] for e in a.body} for a in load.answers if a.target == "gamma")
    )
    # The replaced and the removed versions were stopped once their requests were out.
    unloaded = [(e["model"], e["version"]) for e in log_events(server, "model version unloaded")]
    assert unloaded[:2] == [("alpha", "1"), ("beta", "1")]  # the rest at shutdown
    assert sorted(unloaded[2:]) == [("alpha", "2"), ("gamma", "1")]
    # The access log names the model and version that answered.
    access = [e for e in log_events(server, "request") if e["path"] == "/models/gamma/predict"]
    assert access and all((e["model"], e["model_version"], e["status"]) == ("gamma", "1", 200) for e in access)


def test_corrupt_and_half_copied_versions_are_refused_while_the_old_one_answers(tmp_path, tiny_bundle, second_bundle):
    repository = tmp_path / "repository"
    place(tiny_bundle("bert"), repository / "alpha" / "1")
    server = serve(repository, "--model-control", "poll", "--poll-interval", str(POLL))
    try:
        predict = lambda: httpx.post(server.url + "/predict", json=TEI)  # noqa: E731
        assert labels(predict()) == V1

        # A version whose model does not match its manifest's hash.
        corrupt = tmp_path / "corrupt"
        shutil.copytree(second_bundle, corrupt)
        graph = bytearray((corrupt / "model.onnx").read_bytes())
        graph[-1] ^= 0xFF
        (corrupt / "model.onnx").write_bytes(bytes(graph))
        place(corrupt, repository / "alpha" / "2")
        wait_for(lambda: index(server)[0]["version"] == "2", "version 2 in the index")
        refused, serving = index(server)
        assert refused["state"] == "UNAVAILABLE"
        assert refused["reason"].startswith(
            f"bundle {repository / 'alpha' / '2'} failed its integrity check: model.onnx: sha256 "
        )
        assert "does not match manifest" in refused["reason"]
        assert serving == {"name": "alpha", "version": "1", "state": "READY", "reason": ""}
        assert labels(predict()) == V1

        # A version whose files arrive one by one, the manifest last.
        half = repository / "alpha" / "3"
        half.mkdir()
        shutil.copyfile(second_bundle / "model.onnx", half / "model.onnx")
        wait_for(lambda: index(server)[0]["version"] == "3", "version 3 in the index")
        assert index(server)[0] == {
            "name": "alpha",
            "version": "3",
            "state": "UNAVAILABLE",
            "reason": f"{half / 'bundle.json'} is missing: not a bundle",
        }
        time.sleep(3 * POLL)
        assert labels(predict()) == V1
        assert httpx.get(server.url + "/health").status_code == 200
        shutil.copyfile(second_bundle / "tokenizer.json", half / "tokenizer.json")
        shutil.copyfile(second_bundle / "reference.json", half / "reference.json")
        shutil.copyfile(second_bundle / "bundle.json", half / "bundle.json")
        wait_for(lambda: labels(predict()) == V2, "version 3 answering")
        assert index(server) == [{"name": "alpha", "version": "3", "state": "READY", "reason": ""}, refused]

        # The repository API stays off in poll mode.
        response = httpx.post(server.url + "/v2/repository/models/alpha/unload")
        assert (response.status_code, response.json()) == (
            403,
            {
                "error": "the repository API is off: this server runs with MODEL_CONTROL=poll; start it with "
                "MODEL_CONTROL=explicit to load and unload models through it",
                "error_type": "forbidden",
            },
        )
    finally:
        server.stop()
    # Each refusal is logged once, not at every scan; an unchanged refused version is not read again.
    refusals = [(e["version"], e["still_serving"]) for e in log_events(server, "model version refused")]
    assert refusals == [("2", ["1"]), ("3", ["1"])]


def test_the_repository_api_needs_explicit_mode_and_a_key(tmp_path, tiny_bundle, second_bundle, hf_client_online):
    repository = tmp_path / "repository"
    place(tiny_bundle("bert"), repository / "alpha" / "1")
    place(tiny_bundle("roberta"), repository / "beta")
    server = serve(repository, "--model-control", "explicit", "--default-model", "alpha", env={"API_KEYS": KEY})
    try:
        client = httpclient.InferenceServerClient(server.url.removeprefix("http://"))
        with pytest.raises(InferenceServerException) as raised:
            client.get_model_repository_index()
        assert (raised.value.status(), raised.value.message()) == (
            "401",
            "missing or invalid API key; send 'Authorization: Bearer KEY'",
        )
        with pytest.raises(InferenceServerException) as raised:
            client.load_model("alpha", headers={"Authorization": "Bearer wrong"})
        assert raised.value.status() == "401"
        assert client.get_model_repository_index(headers=AUTH) == [
            {"name": "alpha", "version": "1", "state": "READY", "reason": ""},
            {"name": "beta", "version": "1", "state": "READY", "reason": ""},
        ]

        predict = lambda: httpx.post(server.url + "/predict", json=TEI, headers=AUTH)  # noqa: E731
        place(second_bundle, repository / "alpha" / "2")
        place(tiny_bundle("bert"), repository / "delta")
        time.sleep(1)  # nothing scans the repository in explicit mode
        assert labels(predict()) == V1
        assert client.get_model_repository_index(headers=AUTH)[-1] == {
            "name": "delta",
            "version": "",
            "state": "UNAVAILABLE",
            "reason": "not loaded",
        }
        client.load_model("alpha", headers=AUTH)
        assert labels(predict()) == V2
        assert client.get_model_metadata("alpha", headers=AUTH)["versions"] == ["2"]
        half = repository / "alpha" / "3"
        half.mkdir()
        shutil.copyfile(second_bundle / "model.onnx", half / "model.onnx")
        with pytest.raises(InferenceServerException) as raised:
            client.load_model("alpha", headers=AUTH)
        assert (raised.value.status(), raised.value.message()) == (
            "400",
            f"failed to load 'alpha' version '3': {half / 'bundle.json'} is missing: not a bundle; "
            "version '2' keeps serving",
        )
        assert labels(predict()) == V2

        client.unload_model("beta", headers=AUTH)
        assert not client.is_model_ready("beta", headers=AUTH)
        response = httpx.post(server.url + "/models/beta/predict", json=TEI, headers=AUTH)
        assert (response.status_code, response.json()) == (
            503,
            {"error": "model 'beta' is unloaded", "error_type": "unhealthy"},
        )
        assert {"name": "beta", "version": "", "state": "UNAVAILABLE", "reason": "model 'beta' is unloaded"} in (
            client.get_model_repository_index(headers=AUTH)
        )
        assert httpx.get(server.url + "/health").status_code == 200  # alpha still serves
        client.load_model("beta", headers=AUTH)
        client.load_model("delta", headers=AUTH)
        assert client.is_model_ready("beta", headers=AUTH) and client.is_model_ready("delta", headers=AUTH)
        # Hugging Face's client addresses a named model by its URL, as on its inference API.
        from huggingface_hub import InferenceClient

        answer = InferenceClient(model=server.url + "/models/beta", api_key=KEY).text_classification("hi")
        assert {item.label for item in answer} == V1

        with pytest.raises(InferenceServerException) as raised:
            client.load_model("nothing", headers=AUTH)
        assert (raised.value.status(), raised.value.message()) == (
            "404",
            "model 'nothing' is not in the repository: its directory holds no bundle",
        )
        broken = repository / "broken" / "1"
        broken.mkdir(parents=True)
        (broken / "model.onnx").write_bytes(b"x")
        with pytest.raises(InferenceServerException) as raised:
            client.load_model("broken", headers=AUTH)
        assert (raised.value.status(), raised.value.message()) == (
            "400",
            f"failed to load 'broken': {broken / 'bundle.json'} is missing: not a bundle",
        )
    finally:
        server.stop()


def test_the_repository_api_refuses_everyone_without_api_keys(tmp_path, tiny_bundle):
    repository = tmp_path / "repository"
    place(tiny_bundle("bert"), repository / "alpha")
    server = serve(repository, "--model-control", "explicit")
    try:
        for path in ("/v2/repository/index", "/v2/repository/models/alpha/load", "/v2/repository/models/alpha/unload"):
            response = httpx.post(server.url + path)
            assert (response.status_code, response.json()) == (
                403,
                {
                    "error": "the repository API needs API_KEYS: loading and unloading models is never open to "
                    "unauthenticated callers",
                    "error_type": "forbidden",
                },
            )
        rows = httpx.get(server.url + "/v2/models", headers=AUTH).json()
        assert rows == [{"name": "alpha", "version": "1", "state": "READY", "reason": ""}]
    finally:
        server.stop()
    assert "MODEL_CONTROL=explicit without API_KEYS" in server.log.read_text()


def test_one_models_overload_is_429_for_that_model_only(tmp_path, tiny_bundle):
    repository = tmp_path / "repository"
    place(tiny_bundle("bert"), repository / "alpha")
    place(tiny_bundle("bert"), repository / "beta")
    # A batching window keeps alpha's admitted inputs waiting, so its queue stays full for five seconds: the test
    # waits until it is full, then asks at once.
    server = serve(repository, "--max-queue-size", "4", "--max-inputs", "4", "--max-wait-ms", "5000")

    async def scenario() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=server.url, timeout=120) as client:
            fill = asyncio.ensure_future(client.post("/models/alpha/predict", json={"inputs": ["a", "b", "c", "d"]}))
            await until(
                lambda: metric_value(server.url, "classifier_admitted_inputs", '{model="alpha"}') == 4,
                "alpha's queue full",
            )
            more, other = await asyncio.gather(
                client.post("/models/alpha/predict", json={"inputs": "e"}),
                client.post("/models/beta/predict", json={"inputs": "e"}),
            )
            return [await fill, more, other]

    try:
        fill, more, other = asyncio.run(scenario())
        assert [fill.status_code, more.status_code, other.status_code] == [200, 429, 200]
        assert more.json() == {
            "error": "inference queue is full (4 inputs queued or running, 1 more asked for, limit 4)",
            "error_type": "Overloaded",
        }
        metrics = httpx.get(server.url + "/metrics").text
    finally:
        server.stop()
    for series in (
        'classifier_admitted_inputs_peak{model="alpha"} 4.0',
        'classifier_admitted_inputs_peak{model="beta"} 1.0',
        'classifier_admitted_inputs{model="alpha"} 0.0',
        'classifier_batch_size_count{model="alpha"} 1.0',
        'classifier_batch_size_count{model="beta"} 1.0',
        'classifier_inputs_total{model="alpha"} 4.0',
        'classifier_inputs_total{model="beta"} 1.0',
        'classifier_requests_total{endpoint="/models/{model_name}/predict",model="alpha",'
        'protocol="http",status="429"} 1.0',
        'classifier_requests_total{endpoint="/models/{model_name}/predict",model="alpha",'
        'protocol="http",status="200"} 1.0',
        'classifier_requests_total{endpoint="/models/{model_name}/predict",model="beta",'
        'protocol="http",status="200"} 1.0',
    ):
        assert series in metrics.splitlines()


def test_readiness_waits_for_a_first_model(tmp_path, tiny_bundle):
    repository = tmp_path / "repository"
    repository.mkdir()
    server = serve(repository, "--model-control", "poll", "--poll-interval", str(POLL), ready="/live")
    try:
        for path in ("/health", "/v2/health/ready", "/predict"):
            response = httpx.request("POST" if path == "/predict" else "GET", server.url + path, json=TEI)
            assert response.status_code == 503
            assert response.json()["error"] == "the repository holds no model"
        place(tiny_bundle("bert"), repository / "alpha")
        wait_for(lambda: httpx.get(server.url + "/health").status_code == 200, "/health 200")
        assert labels(httpx.post(server.url + "/predict", json=TEI)) == V1  # the only model is the default
    finally:
        server.stop()


def test_every_version_over_http_and_grpc_with_the_all_policy(tmp_path, tiny_bundle, second_bundle):
    import numpy as np
    import tritonclient.grpc as grpcclient

    from tests.helpers import free_port

    repository = tmp_path / "repository"
    place(tiny_bundle("bert"), repository / "alpha" / "1")
    place(second_bundle, repository / "alpha" / "2")
    place(tiny_bundle("roberta"), repository / "beta")
    grpc_port = free_port()
    server = serve(repository, "--version-policy", "all", "--default-model", "alpha", "--grpc-port", str(grpc_port))
    try:
        assert index(server) == [
            {"name": "alpha", "version": "2", "state": "READY", "reason": ""},
            {"name": "alpha", "version": "1", "state": "READY", "reason": ""},
            {"name": "beta", "version": "1", "state": "READY", "reason": ""},
        ]
        http = httpclient.InferenceServerClient(server.url.removeprefix("http://"))
        grpc = grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}")
        assert http.get_model_metadata("alpha")["versions"] == ["1", "2"]
        assert list(grpc.get_model_metadata("alpha").versions) == ["1", "2"]
        for client, module in ((http, httpclient), (grpc, grpcclient)):
            text = module.InferInput("text", [1], "BYTES")
            text.set_data_from_numpy(np.array(["what is my balance"], dtype=object))
            for version, names in (("1", V1), ("2", V2), ("", V2)):  # no version: the newest
                result = client.infer("alpha", [text], model_version=version)
                assert result.as_numpy("label")[0].decode() in names
            assert client.infer("beta", [text]).as_numpy("label")[0].decode() in V1
            with pytest.raises(InferenceServerException) as raised:
                client.infer("alpha", [text], model_version="3")
            assert raised.value.message().endswith("model 'alpha' has no version '3'; it has versions '1', '2'")
            with pytest.raises(InferenceServerException) as raised:
                client.infer("gamma", [text])
            assert raised.value.message().endswith(
                "model 'gamma' is not served here; this server serves 'alpha', 'beta'"
            )
        assert grpc.is_model_ready("beta") and grpc.is_server_ready()
        assert labels(httpx.post(server.url + "/predict", json=TEI)) == V2
        metrics = httpx.get(server.url + "/metrics").text.splitlines()
    finally:
        server.stop()
    assert (
        'classifier_requests_total{endpoint="/inference.GRPCInferenceService/ModelInfer",model="alpha",'
        'protocol="grpc",status="200"} 3.0'
    ) in metrics
    assert 'classifier_inputs_total{model="beta"} 2.0' in metrics
    # Both versions of alpha are loaded: their batchers' gauges add up under one label.
    assert 'classifier_admitted_inputs{model="alpha"} 0.0' in metrics
    infers = [
        e
        for e in log_events(server, "request")
        if e["path"] == "/inference.GRPCInferenceService/ModelInfer" and e.get("model") == "alpha"
    ]
    assert [(e["protocol"], e["status"], e.get("model_version")) for e in infers] == [
        ("grpc", 200, "1"),
        ("grpc", 200, "2"),
        ("grpc", 200, "2"),
        ("grpc", 404, None),
    ]


def test_a_repository_that_is_not_a_directory_exits_2(tmp_path):
    import subprocess

    from tests.conftest import ROOT
    from tests.helpers import SERVE_PYTHON

    require_serve_env()
    missing = tmp_path / "missing"
    proc = subprocess.run(
        [str(SERVE_PYTHON), "-m", "service", "--repository", str(missing)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (proc.returncode, proc.stderr) == (2, f"error: --repository {missing} is not a directory\n")


def test_links_out_of_the_repository_and_odd_names_are_refused_every_way_in(tmp_path, tiny_bundle):
    """The start-up scan and the index skip them; an explicit load says why, naming the model, no paths."""
    repository, elsewhere = tmp_path / "repository", tmp_path / "elsewhere"
    place(tiny_bundle("bert"), repository / "alpha")
    place(tiny_bundle("bert"), elsewhere / "bundle")
    (repository / "outside").symlink_to(elsewhere / "bundle")
    (repository / "version").mkdir()
    (repository / "version" / "1").symlink_to(elsewhere / "bundle")
    shutil.copytree(tiny_bundle("bert"), repository / "manifest", ignore=shutil.ignore_patterns("bundle.json"))
    (repository / "manifest" / "bundle.json").symlink_to(elsewhere / "bundle" / "bundle.json")
    place(tiny_bundle("bert"), repository / "nl\n")
    place(tiny_bundle("bert"), repository / "inside" / "1")
    (repository / "alias").symlink_to(repository / "inside")  # a link that stays inside is followed
    server = serve(repository, "--model-control", "explicit", "--api-keys", KEY)
    try:
        rows = httpx.post(server.url + "/v2/repository/index", headers=AUTH).json()
        assert sorted({row["name"] for row in rows}) == ["alias", "alpha", "inside"]
        for name, leads_out in [
            ("outside", "its directory"),
            ("version", "version '1'"),
            ("manifest", "bundle.json"),
        ]:
            response = httpx.post(f"{server.url}/v2/repository/models/{name}/load", headers=AUTH)
            assert (response.status_code, response.json()) == (
                400,
                {
                    "error": f"model {name!r} is not loaded: {leads_out} leads out of the repository through a link; "
                    "links must stay inside it",
                    "error_type": "bad_request",
                },
            )
        response = httpx.post(f"{server.url}/v2/repository/models/nl%0A/load", headers=AUTH)
        assert (response.status_code, response.json()) == (
            404,
            {"error": "model 'nl\\n' is not in the repository: that is not a model name", "error_type": "not_found"},
        )
        assert httpx.post(server.url + "/models/alias/predict", json=TEI, headers=AUTH).status_code == 200
        assert httpx.post(server.url + "/models/outside/predict", json=TEI, headers=AUTH).status_code == 404
    finally:
        server.stop()


def test_health_names_models_and_states_not_server_paths(tmp_path, tiny_bundle):
    repository = tmp_path / "repository"
    broken = repository / "broken" / "1"
    shutil.copytree(tiny_bundle("bert"), broken)
    (broken / "model.onnx").write_bytes(b"garbage")
    place(tiny_bundle("bert"), repository / "unloaded")
    server = serve(repository, "--model-control", "explicit", "--api-keys", KEY)
    try:
        httpx.post(server.url + "/v2/repository/models/unloaded/unload", headers=AUTH).raise_for_status()
        wait_for(lambda: httpx.get(server.url + "/health").status_code == 503, "/health 503")
        for path in ("/health", "/v2/health/ready"):
            response = httpx.get(server.url + path)
            assert (response.status_code, response.json()) == (
                503,
                {"error": "no model is loaded: broken: failed to load; unloaded: unloaded", "error_type": "unhealthy"},
            )
        rows = httpx.post(server.url + "/v2/repository/index", headers=AUTH).json()
        broken_row = next(row for row in rows if row["name"] == "broken")
        assert broken_row["reason"].startswith(f"bundle {broken} failed its integrity check: model.onnx: sha256 ")
    finally:
        server.stop()


@pytest.mark.parametrize(
    "serving, reason",
    [
        pytest.param(
            "{",
            "serving.json is not valid JSON: Expecting property name enclosed in double quotes: line 1 "
            "column 2 (char 1)",
            id="json",
        ),
        pytest.param("[]", "serving.json must hold a JSON object of settings", id="not-an-object"),
        pytest.param(
            '{"port": 1, "windows": true}',
            "serving.json sets port; a model may set only windows, window_overlap, max_windows, aggregation",
            id="not-per-model",
        ),
        pytest.param('{"max_windows": true}', "serving.json: max_windows must be a whole number, got true", id="type"),
        pytest.param('{"max_windows": 0}', "--max-windows must be at least 1, got 0", id="range"),
        pytest.param('{"aggregation": "median"}', "--aggregation must be auto, mean or max, got 'median'", id="choice"),
    ],
)
def test_a_models_serving_json_is_checked_before_its_versions_load(tmp_path, tiny_bundle, serving, reason):
    repository = tmp_path / "repository"
    place(tiny_bundle("bert"), repository / "good" / "1")
    place(tiny_bundle("bert"), repository / "odd" / "1")
    (repository / "odd" / "serving.json").write_text(serving)
    server = serve(repository, "--model-control", "explicit", "--api-keys", KEY)
    try:
        rows = httpx.post(server.url + "/v2/repository/index", headers=AUTH).json()
        assert {row["name"]: (row["state"], row["reason"]) for row in rows} == {
            "good": ("READY", ""),
            "odd": ("UNAVAILABLE", reason),
        }
    finally:
        server.stop()


def test_a_models_serving_json_sets_its_own_long_text_settings(tmp_path, tiny_bundle):
    repository = tmp_path / "repository"
    place(tiny_bundle("bert"), repository / "whole" / "1")
    place(tiny_bundle("bert"), repository / "first" / "1")
    (repository / "whole" / "serving.json").write_text('{"windows": true, "max_windows": 3, "window_overlap": 2}')
    server = serve(repository)
    try:
        text = " ".join(["what is my balance"] * 30)
        whole = httpx.post(server.url + "/models/whole/predict", json={"inputs": text, "details": True}).json()
        first = httpx.post(server.url + "/models/first/predict", json={"inputs": text, "details": True}).json()
        assert whole["details"] == [{"truncated": True, "windows": 3, "tokens": 72}]
        assert first["details"] == [{"truncated": True, "windows": 1, "tokens": 24}]
    finally:
        server.stop()


def test_a_malformed_manifest_is_a_bad_bundle_at_start_and_through_the_api(tmp_path, tiny_bundle):
    """``files`` a list instead of an object: refused with one line naming the file and the field, at start
    and when the repository API loads it (400, not 500), while the other model serves."""
    repository = tmp_path / "repository"
    place(tiny_bundle("bert"), repository / "good" / "1")
    odd = repository / "odd" / "1"
    place(tiny_bundle("bert"), odd)
    manifest = json.loads((odd / "bundle.json").read_text())
    (odd / "bundle.json").write_text(json.dumps({**manifest, "files": sorted(manifest["files"])}))
    reason = (
        "bundle.json is malformed: field 'files' must be an object mapping file names to sha256 digests, "
        'got ["model.onnx", "reference.json", "tokeni…'  # the value, cut short
    )
    server = serve(repository, "--model-control", "explicit", "--api-keys", KEY)
    try:
        assert httpx.get(server.url + "/health").status_code == 200
        rows = httpx.post(server.url + "/v2/repository/index", headers=AUTH).json()
        assert {row["name"]: (row["state"], row["reason"]) for row in rows} == {
            "good": ("READY", ""),
            "odd": ("UNAVAILABLE", reason),
        }
        response = httpx.post(server.url + "/v2/repository/models/odd/load", headers=AUTH)
        assert (response.status_code, response.json()) == (
            400,
            {"error": f"failed to load 'odd': {reason}", "error_type": "bad_request"},
        )
        assert httpx.post(server.url + "/models/good/predict", json=TEI, headers=AUTH).status_code == 200
        refused = log_events(server, "model version refused")
        assert [event["reason"] for event in refused] == [reason]  # refused once: unchanged since, not retried
        assert "Traceback" not in server.log.read_text()
    finally:
        server.stop()


def test_a_refused_shadow_load_changes_nothing(tmp_path, tiny_bundle):
    """Naming the only version as the shadow is refused (400) before anything changes: the model answers on."""
    repository = tmp_path / "repository"
    place(tiny_bundle("bert"), repository / "alpha" / "1")
    server = serve(repository, "--model-control", "explicit", "--api-keys", KEY)
    try:
        body = {"parameters": {"shadow_version": "1"}}
        response = httpx.post(server.url + "/v2/repository/models/alpha/load", json=body, headers=AUTH)
        assert (response.status_code, response.json()) == (
            400,
            {
                "error": "model 'alpha' version '1' is its only version: a shadow needs another version to serve "
                "beside it; nothing was changed",
                "error_type": "bad_request",
            },
        )
        assert httpx.post(server.url + "/predict", json=TEI, headers=AUTH).status_code == 200
        rows = httpx.get(server.url + "/v2/models", headers=AUTH).json()
        assert rows == [{"name": "alpha", "version": "1", "state": "READY", "reason": ""}]
        # And a later load (without a shadow) finds the model as it was.
        assert httpx.post(server.url + "/v2/repository/models/alpha/load", headers=AUTH).status_code == 200
        assert httpx.post(server.url + "/predict", json=TEI, headers=AUTH).status_code == 200
    finally:
        server.stop()


FRACTION = "parameters.shadow_fraction"


@pytest.mark.parametrize(
    "parameters, message",
    [
        pytest.param(
            {"shadow_fraction": True}, "parameters.shadow_fraction: Input should be a valid number", id="true"
        ),
        pytest.param(
            {"shadow_fraction": "0.5"}, "parameters.shadow_fraction: Input should be a valid number", id="text"
        ),
        pytest.param({"shadow_version": 2}, "parameters.shadow_version: Input should be a valid string", id="number"),
    ],
)
def test_load_parameters_are_validated_strictly(tmp_path, tiny_bundle, parameters, message):
    from service.core.failures import BadRequest
    from service.protocols.oip.repository import LoadRequest
    from service.protocols.validation import parse

    with pytest.raises(BadRequest) as raised:
        parse(LoadRequest, json.dumps({"parameters": parameters}).encode(), invalid=BadRequest)
    assert raised.value.message == message
    assert (
        parse(LoadRequest, b'{"parameters": {"shadow_fraction": 1}}', invalid=BadRequest).parameters.shadow_fraction
        == 1.0
    )


def test_a_slow_load_keeps_only_its_own_model_waiting(tmp_path, tiny_bundle, monkeypatch):
    """While one model's new version runs its reference set (held here by an event), the repository API
    unloads and loads another model at once."""
    import service.core.loading as loading_module
    from service.core.metrics import Metrics
    from service.core.registry import ModelRegistry
    from service.settings import Settings

    repository = tmp_path / "repository"
    place(tiny_bundle("bert"), repository / "slow" / "1")
    place(tiny_bundle("bert"), repository / "other" / "1")
    entered, held = threading.Event(), threading.Event()
    real = loading_module.reverify

    def reverify(classifier, directory, *args, **kwargs):
        if directory == repository / "slow" / "2":
            entered.set()
            held.wait(120)
        return real(classifier, directory, *args, **kwargs)

    monkeypatch.setattr(loading_module, "reverify", reverify)
    settings = Settings(repository=str(repository), model_control="explicit", api_keys=(KEY,))

    async def scenario() -> tuple[bool, list[dict]]:
        registry = ModelRegistry(settings, Metrics())
        await registry.start()
        try:
            place(tiny_bundle("bert"), repository / "slow" / "2")
            loading = asyncio.create_task(registry.load("slow"))
            await asyncio.to_thread(entered.wait, 120)
            try:
                await asyncio.wait_for(registry.unload("other"), 60)
                await asyncio.wait_for(registry.load("other"), 60)
                waited = loading.done()
            finally:
                held.set()
            await loading
            return waited, registry.index()
        finally:
            await registry.stop()

    waited, rows = asyncio.run(scenario())
    assert not waited
    assert [(row["name"], row["version"], row["state"]) for row in rows] == [
        ("other", "1", "READY"),
        ("slow", "2", "READY"),
    ]
