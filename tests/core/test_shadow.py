"""Shadow versions: a candidate version sees its share of live inputs, is compared rightly with the
serving version, gives way when the server is busy, and is promoted under load without a failed request."""

from __future__ import annotations

import asyncio
import dataclasses
import re
import threading

import httpx
import numpy as np
import pytest

from service.core.classifier import OnnxClassifier
from service.core.engine import Engine
from service.core.manifest import Manifest, load_verified
from service.core.metrics import Metrics
from service.core.shadow import CpuBudget, Sampler, Shadow, compare
from service.settings import Settings
from tests.conftest import needs_export
from tests.core.test_registry import AUTH, KEY, Load, place, serve
from tests.helpers import wait_for

pytestmark = needs_export
WORDS = [
    "balance",
    "card",
    "transfer",
    "weather",
    "paris",
    "loan",
    "rate",
    "fee",
    "travel",
    "account",
    "open",
    "close",
    "lost",
    "stolen",
    "pin",
]


def lively_bundle(tmp_path_factory, seed: int):
    """A tiny BERT with weights large enough that its label changes with the text (the usual tiny
    models answer one label for every text); seeds give two versions with the same labels."""
    from export.pipeline import export_bundle
    from tests import tiny_models

    checkpoint = tiny_models.build("bert", tmp_path_factory.mktemp(f"lively{seed}"), seed=seed, initializer_range=0.3)
    out = tmp_path_factory.mktemp(f"lively-bundle{seed}") / "bundle"
    export_bundle(out=out, model=str(checkpoint), variant="fp32")
    return out


@pytest.fixture(scope="module")
def serving_bundle(tmp_path_factory):
    return lively_bundle(tmp_path_factory, 0)


@pytest.fixture(scope="module")
def retrained_bundle(tmp_path_factory):
    """The serving model retrained: the same labels, other weights."""
    return lively_bundle(tmp_path_factory, 1)


def top_labels(bundle, texts: list[str]) -> list[str]:
    manifest = load_verified(bundle)
    classifier = OnnxClassifier(bundle / "model.onnx", bundle / "tokenizer.json", manifest)
    logits = classifier.run(classifier.encode(texts))
    return [manifest.labels[i] for i in logits.argmax(axis=1)]


def known_texts(first, second, agreeing: int, differing: int) -> tuple[list[str], list[str]]:
    """Texts on which the two bundles predict the same label, and texts on which they differ."""
    rng = np.random.default_rng(7)
    candidates = [" ".join(rng.choice(WORDS, size=int(rng.integers(2, 9)))) for _ in range(400)]
    candidates = list(dict.fromkeys(candidates))
    same = [a == b for a, b in zip(top_labels(first, candidates), top_labels(second, candidates))]
    agree = [text for text, equal in zip(candidates, same) if equal][:agreeing]
    differ = [text for text, equal in zip(candidates, same) if not equal][:differing]
    assert (len(agree), len(differ)) == (agreeing, differing), "the two tiny models should differ on some texts"
    return agree, differ


def metric_value(url: str, name: str, labels: str) -> float | None:
    text = httpx.get(url + "/metrics").text
    match = re.search(rf"^{re.escape(name)}{re.escape(labels)} (\S+)$", text, re.MULTILINE)
    return None if match is None else float(match.group(1))


# The parts, alone ---------------------------------------------------------------------------------


def test_the_sampler_picks_the_exact_share_spread_evenly():
    sampler = Sampler(0.25)
    picked = [sampler.pick(3) for _ in range(8)]  # 24 inputs in calls of three: every fourth input
    assert picked == [[], [0], [1], [2], [], [0], [1], [2]]
    assert Sampler(1.0).pick(5) == [0, 1, 2, 3, 4]
    assert Sampler(0.5).pick(6) == [1, 3, 5]


def test_the_cpu_budget_refills_at_its_share_and_caps_the_burst():
    now = [0.0]
    budget = CpuBudget(0.2, clock=lambda: now[0])
    assert budget.available()
    budget.spend(1.0)  # the whole burst: 0.2 x 5 s
    assert not budget.available()
    now[0] = 2.5  # 0.5 s refilled
    assert budget.available()
    budget.spend(1.5)  # a long batch overdraws: -1.0 s
    now[0] = 5.0
    assert not budget.available()  # -0.5 s
    now[0] = 10.0
    assert budget.available()  # +0.5 s
    now[0] = 4000.0  # an idle hour refills one burst, no more
    budget.spend(1.0)
    assert not budget.available()


@pytest.fixture
def manifest(tiny_bundle):
    """The tiny bundle's manifest with other labels and another problem type."""
    base = load_verified(tiny_bundle("bert"))

    def make(labels: list[str], problem_type: str = "single_label_classification") -> Manifest:
        return dataclasses.replace(base, id2label=dict(enumerate(labels)), problem_type=problem_type)

    return make


def test_compare_matches_labels_by_name_whatever_their_order(manifest):
    served_by = manifest(["neg", "pos"])
    shadowed_by = manifest(["pos", "neg", "new"])
    served = np.log(np.array([[0.8, 0.2], [0.3, 0.7]]))
    # softmax of these logits: [0.7, 0.2, 0.1] -> pos; [0.6, 0.3, 0.1] -> pos
    shadowed = np.log(np.array([[0.7, 0.2, 0.1], [0.6, 0.3, 0.1]]))
    agreed, deviation = compare(served, served_by, shadowed, shadowed_by)
    assert agreed is not None and agreed.tolist() == [False, True]
    np.testing.assert_allclose(deviation, [0.6, 0.1])


def test_compare_decides_sigmoid_labels_at_the_threshold_and_regression_has_no_label(manifest):
    served_by = manifest(["a", "b"], "multi_label_classification")
    shadowed_by = manifest(["b", "a"], "multi_label_classification")
    logit = lambda p: np.log(p / (1 - p))  # noqa: E731
    served = logit(np.array([[0.9, 0.6], [0.9, 0.1]]))
    shadowed = logit(np.array([[0.7, 0.8], [0.6, 0.8]]))  # columns b, a
    agreed, deviation = compare(served, served_by, shadowed, shadowed_by)
    assert agreed is not None and agreed.tolist() == [True, False]
    np.testing.assert_allclose(deviation, [0.1, 0.5])
    values = manifest(["score"], "regression")
    agreed, deviation = compare(np.array([[1.0]]), values, np.array([[1.25]]), values)
    assert agreed is None
    np.testing.assert_allclose(deviation, [0.25])


# Real engines in one process ------------------------------------------------------------------------


class _Held:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.in_flight = 0

    def acquire(self) -> None:
        self.in_flight += 1

    def release(self) -> None:
        self.in_flight -= 1


class _Gate:
    """Wraps a batcher's run function: every batch waits until the test lets it through, so which inputs
    are still queued when an answer is offered to the shadow is set by the test, not by the scheduler."""

    def __init__(self, run) -> None:
        self._run = run
        self.entered = threading.Semaphore(0)  # one release per batch that reached the gate
        self._passes = threading.Semaphore(0)
        self._open = threading.Event()

    def __call__(self, encoded):
        self.entered.release()
        while not self._open.is_set() and not self._passes.acquire(timeout=0.05):
            pass
        return self._run(encoded)

    def let_one_through(self) -> None:
        self._passes.release()

    def open(self) -> None:
        self._open.set()


def test_a_busy_serving_queue_skips_shadow_work_and_every_picked_input_is_counted(serving_bundle, retrained_bundle):
    async def scenario() -> tuple[dict[str, float], int, Shadow, int]:
        metrics = Metrics()
        settings = Settings(max_batch_size=8)
        serving = Engine(
            dataclasses.replace(settings, bundle=str(serving_bundle)),
            metrics.for_model("m"),
            load_verified(serving_bundle),
        )
        candidate = Engine(
            dataclasses.replace(settings, bundle=str(retrained_bundle), intra_op_threads=1),
            Metrics().for_model("m"),
            load_verified(retrained_bundle),
        )
        await serving.start()
        await candidate.start()
        assert serving.batcher is not None
        gate = _Gate(serving.batcher._run_batch)
        serving.batcher._run_batch = gate
        held = _Held(candidate)
        shadow = Shadow(serving, held, fraction=1.0, cpu_budget=1.0, metrics=metrics.for_shadow("m", "2"))
        serving.shadow = shadow
        texts = [f"text number {i}" for i in range(64)]
        calls = [asyncio.create_task(serving.classify([text], truncate=True)) for text in texts]
        while serving.batcher.admitted < len(texts):  # every call admitted and queued (short texts tokenize inline)
            await asyncio.sleep(0)
        await asyncio.to_thread(gate.entered.acquire)  # the first batch is at the gate; the rest are queued
        first = len(texts) - serving.batcher.queue_depth  # the first batch: the first inputs, in arrival order
        gate.let_one_through()
        # The first batch's callers are answered while inputs wait in the queue (the next batch is held at the
        # gate): their inputs are skipped as busy. Then every batch goes, and the last callers find the queue
        # empty, and nothing mirrored yet: their inputs run.
        await asyncio.gather(*calls[:first])
        gate.open()
        await asyncio.gather(*calls)
        await shadow.settle()
        samples = {
            sample.labels.get("reason", "ran"): sample.value
            for family in metrics.registry.collect()
            if family.name in ("classifier_shadow_skipped_inputs", "classifier_shadow_inputs")
            for sample in family.samples
            if sample.name.endswith("_total")
        }
        await serving.stop()
        await candidate.stop()
        return samples, held.in_flight, shadow, first

    counted, in_flight, shadow, first_batch = asyncio.run(scenario())
    assert 1 <= first_batch <= 8
    assert counted.get("busy", 0) >= first_batch, counted
    assert counted.get("ran", 0) > 0, counted
    assert sum(counted.values()) == 64
    assert in_flight == 0 and shadow.backlog == 0


# A real server ------------------------------------------------------------------------------------


def test_a_shadow_sees_its_share_is_compared_rightly_and_is_promoted_under_load(
    tmp_path, serving_bundle, retrained_bundle
):
    agree, differ = known_texts(serving_bundle, retrained_bundle, agreeing=6, differing=4)
    repository = tmp_path / "repository"
    place(serving_bundle, repository / "alpha" / "1")
    place(retrained_bundle, repository / "alpha" / "2")
    server = serve(
        repository,
        "--model-control",
        "explicit",
        "--shadow",
        "alpha:2",
        "--shadow-fraction",
        "0.5",
        env={"API_KEYS": KEY},
    )
    load = None
    try:
        rows = [
            {
                "name": "alpha",
                "version": "2",
                "state": "READY",
                "reason": "shadow: sees 0.5 of the inputs served, never answers",
            },
            {"name": "alpha", "version": "1", "state": "READY", "reason": ""},
        ]
        assert httpx.get(server.url + "/v2/models", headers=AUTH).json() == rows
        assert httpx.post(server.url + "/v2/repository/index", headers=AUTH).json() == rows
        asked = httpx.post(
            server.url + "/v2/models/alpha/versions/2/infer",
            headers=AUTH,
            json={"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["hi"]}]},
        )
        assert (asked.status_code, asked.json()) == (
            404,
            {
                "error": "model 'alpha' version '2' is a shadow: it sees a share of the inputs but never answers; "
                "clear the shadow to promote it",
                "error_type": "not_found",
            },
        )
        # Twenty calls, one at a time: with a share of 0.5 every second input is mirrored, which are the
        # ten known ones here, so the expected agreement is known exactly: 6 of 10.
        filler = [f"filler {i}" for i in range(10)]
        mirrored = agree + differ
        for first, second in zip(filler, mirrored):
            for text in (first, second):
                response = httpx.post(server.url + "/predict", json={"inputs": text}, headers=AUTH)
                assert response.status_code == 200
                assert [entry["label"] for entry in response.json()][0] == top_labels(serving_bundle, [text])[0]
        labels = '{model="alpha",version="2"}'
        wait_for(lambda: metric_value(server.url, "classifier_shadow_inputs_total", labels) == 10, "10 shadow inputs")
        assert metric_value(server.url, "classifier_shadow_agreements_total", labels) == 6
        assert metric_value(server.url, "classifier_shadow_agreement", labels) == 0.6
        assert metric_value(server.url, "classifier_shadow_score_deviation_count", labels) == 10
        assert metric_value(server.url, "classifier_shadow_seconds_count", labels) == 10
        # The shadow's own engine metrics are not the model's: 20 inputs served, not 30.
        assert metric_value(server.url, "classifier_inputs_total", '{model="alpha"}') == 20

        # Promotion: clearing the shadow loads version 2 as a serving version beside version 1, then swaps.
        load = Load(server.url, AUTH)
        body = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["what is my balance"]}]}
        load.add("v2", "/v2/models/alpha/infer", body)
        load.add("tei", "/predict", {"inputs": "what is my balance"})
        load.more("v2")
        promoted = httpx.post(
            server.url + "/v2/repository/models/alpha/load", headers=AUTH, json={"parameters": {"shadow_version": ""}}
        )
        assert promoted.status_code == 200
        assert promoted.json() == [{"name": "alpha", "version": "2", "state": "READY", "reason": ""}]
        load.more("v2")
        load.more("tei")
    finally:
        if load is not None:
            load.stop()
        server.stop()
    assert load is not None
    assert [a for a in load.answers if a.status != 200] == []
    versions = [a.body["model_version"] for a in load.answers if a.target == "v2"]
    assert versions == sorted(versions) and set(versions) == {"1", "2"}
