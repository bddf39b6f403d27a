"""The project installs as a package: its dependencies and extras are the requirements files' pins, and
``pip install .`` gives commands that work from any directory, with the service's data files."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sysconfig
import tomllib
from pathlib import Path

import pytest

from tests.conftest import ROOT, needs_export
from tests.helpers import SERVE_PYTHON, require_serve_env

PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
COMMANDS = {
    "textclf-export": "export.cli:main",
    "textclf-serve": "service.cli:main",
    "textclf-bulk": "service.bulk.cli:main",
}


def pins(name: str) -> list[str]:
    """A requirements file's requirement lines (its -r includes left out)."""
    lines = (ROOT / name).read_text().splitlines()
    return [line.split("#")[0].strip() for line in lines if line.strip() and not line.startswith(("#", "-r"))]


def test_the_dependencies_are_the_serving_requirements():
    assert PROJECT["dependencies"] == pins("requirements-serve.txt")


@pytest.mark.parametrize(
    "extra, files",
    [
        pytest.param("grpc", ["requirements-grpc.txt"], id="grpc"),
        pytest.param("bulk", ["requirements-bulk.txt"], id="bulk"),
        pytest.param("otel", ["requirements-otel.txt"], id="otel"),
        pytest.param("ray", ["requirements-ray.txt", "requirements-bulk.txt"], id="ray"),
        pytest.param("export", ["requirements-export.txt"], id="export"),
        pytest.param("signing", ["requirements-signing.txt"], id="signing"),
    ],
)
def test_each_extra_is_its_requirements_file(extra, files):
    assert PROJECT["optional-dependencies"][extra] == [pin for name in files for pin in pins(name)]


def test_the_openvino_extra_admits_only_a_release_that_answers_right():
    # 2025.4 answered wrongly in bf16 on the default model; 2026.4 is correct (docs/performance.md).
    assert PROJECT["optional-dependencies"]["openvino"] == ["openvino>=2026.4"]


def test_the_commands_name_the_clis():
    assert PROJECT["scripts"] == COMMANDS


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A fresh virtual environment (no system site-packages) with the project installed from a wheel built from
    a copy of what packaging reads, so nothing of the checkout can stand in for the package.

    Its third-party packages are .venv-serve's, named by a .pth file, so the test needs no network; that pip
    resolves the pins is the registry's business (the pins themselves are checked above)."""
    require_serve_env()
    root = tmp_path_factory.mktemp("install")
    source = root / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    for package in ("service", "export"):
        shutil.copytree(ROOT / package, source / package, ignore=shutil.ignore_patterns("__pycache__"))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PIP_FIND_LINKS")}
    pip = [str(SERVE_PYTHON), "-m", "pip", "--disable-pip-version-check", "-q"]
    wheels = root / "wheels"
    run = lambda *args: subprocess.run(args, env=env, check=True, capture_output=True, timeout=600)  # noqa: E731
    # The build backend from .venv (setuptools 70.1 or later builds wheels alone), offline.
    build = [str(ROOT / ".venv" / "bin" / "python"), *pip[1:]]
    run(*build, "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", str(wheels), str(source))
    venv = root / "venv"
    run(str(SERVE_PYTHON), "-m", "venv", "--without-pip", str(venv))
    (wheel,) = wheels.glob("onnx_text_classifier_service-*.whl")
    run(*pip, "--python", str(venv / "bin" / "python"), "install", "--no-deps", "--no-index", str(wheel))
    shared = subprocess.run(
        [str(SERVE_PYTHON), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    purelib = Path(sysconfig.get_path("purelib", vars={"base": str(venv), "platbase": str(venv)}))
    (purelib / "shared-serving-packages.pth").write_text(shared + "\n")
    return venv


def command(venv: Path, name: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "BUNDLE")}
    return subprocess.run(
        [str(venv / "bin" / name), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


@pytest.mark.slow
def test_the_installed_package_holds_its_data_files_and_not_the_checkout(installed, tmp_path):
    probe = (
        "import json, service, service.web.docs as docs, service.protocols.oip.proto as proto, pathlib;"
        "print(json.dumps([service.__file__, sorted(p.name for p in docs.STATIC.iterdir()),"
        " sorted(p.name for p in pathlib.Path(proto.__file__).parent.glob('*.proto'))]))"
    )
    done = command(installed, "python", "-c", probe, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    where, static, protos = json.loads(done.stdout)
    assert Path(where).is_relative_to(installed)
    assert static == ["docs.html", "init.js"]
    assert protos == ["grpc_predict_v2.proto"]


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_each_command_answers_help_from_any_directory(installed, tmp_path, name):
    done = command(installed, name, "--help", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: ")


@pytest.mark.slow
@needs_export
def test_the_bulk_command_scores_a_file_outside_the_repository(installed, tiny_bundle, tmp_path):
    bundle = tiny_bundle("bert")
    (tmp_path / "in.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in ("hello", "what is my balance")))
    done = command(installed, "textclf-bulk", "in.jsonl", "-o", "out.jsonl", "--bundle", str(bundle), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    # The same answers as the checkout's command gives.
    from service.bulk.cli import main

    assert main([str(tmp_path / "in.jsonl"), "-o", str(tmp_path / "here.jsonl"), "--bundle", str(bundle)]) == 0
    assert (tmp_path / "out.jsonl").read_text() == (tmp_path / "here.jsonl").read_text()
    assert [json.loads(line)["text"] for line in (tmp_path / "out.jsonl").read_text().splitlines()] == [
        "hello",
        "what is my balance",
    ]
    refused = command(installed, "textclf-bulk", "in.jsonl", "-o", "again.jsonl", cwd=tmp_path)
    assert refused.returncode == 2
    assert refused.stderr.splitlines()[-1].endswith("the following arguments are required: --bundle")


@pytest.mark.slow
def test_the_export_command_without_its_extra_says_what_is_missing(installed, tmp_path):
    done = command(installed, "textclf-export", "verify", str(tmp_path), cwd=tmp_path)
    assert done.returncode == 1
    assert done.stderr.splitlines() == [
        "error: the export stage needs onnx, which is not installed here: "
        "pip install 'onnx-text-classifier-service[export]' (or -r requirements-export.txt)"
    ]
