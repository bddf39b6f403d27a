"""The KServe and KEDA manifests against the projects' own CRD schemas, pinned in deploy/crds.

Each custom resource is checked against its CRD's ``openAPIV3Schema`` for the resource's
version, strictly: an unknown field anywhere is an error (as ``kubectl apply
--validate=strict`` makes it), so a misspelt field fails here and not in a cluster.
"""

from __future__ import annotations

import copy
import functools
import gzip
import hashlib
import re

import jsonschema
import pytest
import yaml

from tests.conftest import ROOT

CRDS = ROOT / "deploy" / "crds"
MANIFESTS = sorted([*(ROOT / "deploy" / "kserve").glob("*.yaml"), *(ROOT / "deploy" / "keda").glob("*.yaml")])


def crd_texts() -> dict[str, bytes]:
    return {path.name.removesuffix(".gz"): gzip.decompress(path.read_bytes()) for path in CRDS.glob("*.yaml.gz")}


@functools.cache
def schemas() -> dict[tuple[str, str], dict]:
    """(apiVersion, kind) -> the CRD's schema for that version."""
    found = {}
    for text in crd_texts().values():
        crd = yaml.safe_load(text)
        group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
        for version in crd["spec"]["versions"]:
            found[(f"{group}/{version['name']}", kind)] = version["schema"]["openAPIV3Schema"]
    return found


def strict(schema: dict) -> dict:
    """The schema with no field outside the declared ones, where Kubernetes would not keep unknown fields."""
    schema = copy.deepcopy(schema)

    def close(node: object) -> None:
        if isinstance(node, dict):
            open_ended = "additionalProperties" in node or node.get("x-kubernetes-preserve-unknown-fields")
            if "properties" in node and not open_ended:
                node["additionalProperties"] = False
            for value in node.values():
                close(value)
        elif isinstance(node, list):
            for value in node:
                close(value)

    close(schema)
    # metadata is ObjectMeta, which the CRD leaves open; the API server checks it.
    schema["properties"]["metadata"] = {"type": "object"}
    return schema


@functools.cache
def strict_validator(api_version: str, kind: str) -> jsonschema.Draft7Validator:
    return jsonschema.Draft7Validator(strict(schemas()[(api_version, kind)]))


def test_the_pinned_crds_are_the_releases_own():
    """The sha256 of each CRD as its release published it, as deploy/crds/README.md records it."""
    table = (CRDS / "README.md").read_text()
    recorded = dict(re.findall(r"\| `([\w.]+\.yaml)\.gz` \|[^|]+\| ([0-9a-f]{64}) \|", table))
    assert recorded == {name: hashlib.sha256(text).hexdigest() for name, text in crd_texts().items()}
    assert set(recorded) == {
        "serving.kserve.io_servingruntimes.yaml",
        "serving.kserve.io_inferenceservices.yaml",
        "keda.sh_scaledobjects.yaml",
    }


@pytest.mark.parametrize("manifest", MANIFESTS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_manifest_matches_its_crd(manifest):
    for document in yaml.safe_load_all(manifest.read_text()):
        validator = strict_validator(document["apiVersion"], document["kind"])
        errors = sorted(f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(document))
        assert errors == []


def test_a_misspelt_field_is_caught():
    """The check can fail: an unknown field in the predictor, and a wrong type."""
    document = yaml.safe_load((ROOT / "deploy" / "kserve" / "inferenceservice.yaml").read_text())
    document["spec"]["predictor"]["scaleTargets"] = 8
    document["spec"]["predictor"]["minReplicas"] = "one"
    validator = strict_validator(document["apiVersion"], document["kind"])
    messages = sorted(e.message for e in validator.iter_errors(document))
    assert messages == [
        "'one' is not of type 'integer'",
        "Additional properties are not allowed ('scaleTargets' was unexpected)",
    ]


def test_keda_through_kserve_sets_the_threshold_kserve_reads():
    """KServe's KEDA reconciler turns an External metric's ``target.value`` (and nothing else) into KEDA's
    threshold; an ``averageValue`` would pass the schema and leave the threshold at 0."""
    inference = yaml.safe_load((ROOT / "deploy" / "kserve" / "inferenceservice-keda.yaml").read_text())
    (metric,) = inference["spec"]["predictor"]["autoScaling"]["metrics"]
    assert metric["external"]["target"] == {"type": "Value", "value": "16"}
    assert inference["metadata"]["annotations"]["serving.kserve.io/autoscalerClass"] == "keda"


def runtime_container() -> dict:
    runtime = yaml.safe_load((ROOT / "deploy" / "kserve" / "servingruntime.yaml").read_text())
    (container,) = runtime["spec"]["containers"]
    return container


def test_the_runtime_starts_the_service_the_way_the_image_test_does():
    """The runtime's arguments are the service's own flags, and the probe is a route the service serves."""
    from service.settings import load_settings

    container = runtime_container()
    args = [arg.replace("{{.Name}}", "intents") for arg in container["args"]]
    settings = load_settings(args, environ={})
    assert (settings.model_dir, settings.model_name) == ("/mnt/models", "intents")
    assert (settings.port, settings.grpc_port, settings.host) == (8080, 8081, "0.0.0.0")
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    inference = yaml.safe_load((ROOT / "deploy" / "kserve" / "inferenceservice.yaml").read_text())
    assert inference["spec"]["predictor"]["model"]["runtime"] == "onnx-text-classifier"
