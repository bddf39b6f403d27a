from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


# Under CI a missing export stage is a failure (the tests then error on import), never a skip.
needs_export = pytest.mark.skipif(
    not _has("torch") and not os.environ.get("CI"),
    reason="export stage not installed: run scripts/setup.sh (requirements-export.txt)",
)


def require(available: bool, what: str) -> None:
    """Skip on a developer machine that lacks ``what``; fail under CI, which must have it."""
    if available:
        return
    if os.environ.get("CI"):
        pytest.fail(f"{what} is required in CI")
    pytest.skip(f"{what} is not available")


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """family -> directory of a tiny random *ForSequenceClassification checkpoint."""
    from tests import tiny_models

    built: dict[tuple[str, bool], Path] = {}

    def make(family: str, multi_label: bool = False) -> Path:
        key = (family, multi_label)
        if key not in built:
            name = f"{family}-multi" if multi_label else family
            built[key] = tiny_models.build(family, tmp_path_factory.mktemp(name), multi_label=multi_label)
        return built[key]

    return make


@pytest.fixture(scope="session")
def tiny_bundle(tiny_checkpoint, tmp_path_factory):
    """family -> fp32 bundle exported from that family's tiny checkpoint."""
    from export.pipeline import export_bundle

    built: dict[tuple[str, bool], Path] = {}

    def make(family: str, multi_label: bool = False) -> Path:
        key = (family, multi_label)
        if key not in built:
            out = tmp_path_factory.mktemp("bundles") / f"{family}{'-multi' if multi_label else ''}"
            export_bundle(out=out, model=str(tiny_checkpoint(family, multi_label)), variant="fp32")
            built[key] = out
        return built[key]

    return make


@pytest.fixture(scope="session")
def default_bundle(tmp_path_factory):
    """The built-in default model, exported once per run through the real CLI; or a copy of the bundle that
    TEST_DEFAULT_BUNDLE names, checked first (CI's run under a CPU hog reuses one export made before the hog)."""
    from export.cli import main

    out = tmp_path_factory.mktemp("default") / "bundle"
    given = os.environ.get("TEST_DEFAULT_BUNDLE")
    if given:
        import shutil

        assert main(["verify", given]) == 0
        shutil.copytree(given, out)
        return out
    assert main(["--out", str(out), "--quiet"]) == 0
    return out


@pytest.fixture
def tiny_server(tiny_bundle):
    """Start ``python -m service`` on the tiny BERT bundle with extra flags; stopped after the test."""
    from tests.helpers import ServerProcess, require_serve_env

    require_serve_env()
    servers = []

    def start(*args: str):
        process = ServerProcess(tiny_bundle("bert"), *args)
        servers.append(process)
        process.wait_ready()
        return process

    yield start
    for process in servers:
        process.stop()


@pytest.fixture
def hf_client_online(monkeypatch):
    """Let huggingface_hub's InferenceClient reach our own server.

    The suite runs with HF_HUB_OFFLINE=1 (no hub is reachable here); a client given a
    ``base_url`` talks only to the server under test. huggingface_hub caches one HTTP
    session per thread, built offline by whichever test came first: reset it both ways.
    """
    import huggingface_hub.constants
    from huggingface_hub.utils import reset_sessions

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    reset_sessions()
    yield
    monkeypatch.undo()
    reset_sessions()
