"""Dockerfile lint and Kubernetes manifests validated against the real schemas."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT

BIN = Path(sys.executable).parent
MANIFESTS = sorted((ROOT / "deploy" / "k8s").glob("*.yaml"))


def test_dockerfile_passes_hadolint():
    proc = subprocess.run([str(BIN / "hadolint"), "Dockerfile.slim"], cwd=ROOT, capture_output=True, text=True)
    assert (proc.returncode, proc.stdout) == (0, "")


@pytest.mark.parametrize("manifest", MANIFESTS, ids=lambda p: p.name)
def test_manifest_matches_kubernetes_schema(manifest):
    proc = subprocess.run(
        [str(BIN / "kubernetes-validate"), "--strict", "-k", "1.33.0", str(manifest)], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "passed" in proc.stdout + proc.stderr


def load(name: str) -> dict:
    return yaml.safe_load((ROOT / "deploy" / "k8s" / name).read_text())


def test_deployment_is_wired_to_the_service():
    pod = load("deployment.yaml")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/health"
    assert container["livenessProbe"]["httpGet"]["path"] == "/live"
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] == 10001
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert {"cpu", "memory"} <= set(container["resources"]["requests"]) & set(container["resources"]["limits"])
    drain = float(load("configmap.yaml")["data"]["DRAIN_TIMEOUT"])
    pause = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert pod["terminationGracePeriodSeconds"] >= pause + drain
    assert {"secretRef": {"name": load("secret.yaml")["metadata"]["name"]}} in container["envFrom"]
    hpa = load("hpa.yaml")["spec"]
    assert hpa["scaleTargetRef"]["name"] == load("deployment.yaml")["metadata"]["name"]
    assert hpa["metrics"][0]["resource"]["name"] == "cpu"


def test_pods_poll_the_repository_volume_the_export_job_writes():
    config = load("configmap.yaml")["data"]
    assert (config["MODEL_CONTROL"], config["REPOSITORY"]) == ("poll", "/repository")
    claim = load("repository-pvc.yaml")["metadata"]["name"]
    pod = load("deployment.yaml")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert {"name": "repository", "persistentVolumeClaim": {"claimName": claim, "readOnly": True}} in pod["volumes"]
    assert {"name": "repository", "mountPath": "/repository", "readOnly": True} in container["volumeMounts"]
    job = load("export-job.yaml")["spec"]["template"]["spec"]
    assert {"name": "repository", "persistentVolumeClaim": {"claimName": claim}} in job["volumes"]
    (export,) = job["containers"]
    assert export["args"][export["args"].index("--out") + 1].startswith("/repository/" + config["DEFAULT_MODEL"] + "/")
