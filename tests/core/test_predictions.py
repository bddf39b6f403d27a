"""What the model predicts, as metrics, and the drift gauges moving when the input mix shifts."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from starlette.testclient import TestClient

from service.app import create_app
from service.core.predictions import psi
from service.settings import Settings
from tests.conftest import needs_export
from tests.helpers import wait_app_ready

pytestmark = needs_export


@pytest.mark.parametrize(
    "observed, expected, low, high",
    [
        pytest.param([10, 20, 30], [1, 2, 3], 0.0, 1e-9, id="same-shares"),
        pytest.param([30, 20, 10], [10, 20, 30], 0.7, 0.8, id="reversed"),
        pytest.param([60, 0, 0], [20, 20, 20], 5.0, 10.0, id="one-label-only"),
    ],
)
def test_population_stability_index(observed, expected, low, high):
    assert low <= psi(np.array(observed, float), np.array(expected, float)) <= high


def gauge(text: str, name: str) -> float:
    return float(re.search(rf'^{name}{{model="classifier"}} (\S+)$', text, re.M).group(1))


def test_a_shift_in_the_input_mix_moves_the_drift_gauges(default_bundle):
    """The built-in model (a tiny random one predicts one label at one score for everything)."""
    bundle = default_bundle
    reference = json.loads((bundle / "reference.json").read_text())["inputs"]
    settings = Settings(bundle=str(bundle), drift_window=len(reference), max_inputs=64, low_confidence=0.999)
    with TestClient(create_app(settings)) as client:
        wait_app_ready(client)
        for start in range(0, len(reference), 64):  # the reference set itself: no shift
            response = client.post("/predict", json={"inputs": reference[start : start + 64], "top_k": 1})
            assert response.status_code == 200
        same = client.get("/metrics").text
        text = "connect me to a human agent"
        top = client.post("/predict", json={"inputs": text, "top_k": 1}).json()[0]["label"]
        for _ in range(len(reference) // 64 + 1):  # one text over and over: every prediction the same label
            assert client.post("/predict", json={"inputs": [text] * 64}).status_code == 200
        shifted = client.get("/metrics").text
    assert gauge(same, "classifier_drift_label_psi") < 0.1  # under 0.1: no shift, by the usual reading
    assert gauge(same, "classifier_drift_top_score_psi") < 0.1
    assert gauge(shifted, "classifier_drift_label_psi") > 0.5
    assert gauge(shifted, "classifier_drift_top_score_psi") > 0.5
    counted = {
        label: float(value)
        for label, value in re.findall(
            r'^classifier_predictions_total{label="(\w+)",model="classifier"} (\S+)$', shifted, re.M
        )
    }
    assert sum(counted.values()) == len(reference) + 1 + 64 * (len(reference) // 64 + 1)
    assert counted[top] >= 1 + 64 * (len(reference) // 64 + 1)
    inputs = gauge(shifted.replace("_total{", "{"), "classifier_inputs")
    assert gauge(shifted.replace("_count{", "{"), "classifier_top_score") == inputs
    assert gauge(shifted.replace("_total{", "{"), "classifier_low_confidence_inputs") <= inputs
    assert gauge(shifted.replace("_total{", "{"), "classifier_truncated_inputs") >= 1  # the long reference texts


def test_a_multi_label_models_drift_counts_each_decided_label_and_inputs_with_none(tiny_bundle, tmp_path):
    """The monitor itself, on crafted logits: a sigmoid model's label distribution has a bin for 'no label'."""
    import dataclasses

    from service.core.manifest import load_verified
    from service.core.metrics import Metrics
    from service.core.predictions import PredictionMonitor

    manifest = dataclasses.replace(
        load_verified(tiny_bundle("bert")), problem_type="multi_label_classification", reference_set="reference.json"
    )
    yes, no = 3.0, -3.0  # sigmoid 0.95 and 0.05
    # Reference: a quarter of the inputs have label 0, a quarter labels 0 and 1, half have none.
    reference = [[yes, no, no]] * 25 + [[yes, yes, no]] * 25 + [[no, no, no]] * 50
    (tmp_path / "reference.json").write_text(json.dumps({"logits": reference}))
    metrics = Metrics()
    monitor = PredictionMonitor(manifest, tmp_path, metrics.for_model("m"), window=100, low_confidence=0.5)
    assert monitor.expected_labels is not None and monitor.expected_labels.tolist() == [50, 25, 0, 50]
    monitor.observe(np.array(reference, dtype=np.float32))
    assert monitor.label_drift() < 1e-9
    monitor.observe(np.array([[no, no, yes]] * 100, dtype=np.float32))  # only label 2, never seen before
    assert monitor.label_drift() > 5.0
    counted = {
        sample.labels["label"]: sample.value
        for family in metrics.registry.collect()
        if family.name == "classifier_predictions"
        for sample in family.samples
        if sample.name.endswith("_total")
    }
    assert counted == {"label_0": 50.0, "label_1": 25.0, "label_2": 100.0}
