"""The layout draws the architecture: a core that knows no protocol, protocols that know not each other,
and one table per transport for every failure."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from service.core.failures import all_failures
from service.protocols.oip import grpc_service
from service.web import errors as http_errors
from tests.conftest import ROOT

SERVICE = ROOT / "service"


def imports(package: Path) -> dict[str, set[str]]:
    """module file -> every module it imports (absolute names), at any depth of the file."""
    found = {}
    for path in sorted(package.rglob("*.py")):
        if "proto" in path.parts:
            continue
        names = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module:
                names.add(node.module)
                names.update(f"{node.module}.{alias.name}" for alias in node.names)
        found[str(path.relative_to(ROOT))] = names
    return found


def offending(package: Path, forbidden: tuple[str, ...]) -> dict[str, list[str]]:
    return {
        module: sorted(name for name in names if name.split(".")[0] in forbidden or name.startswith(forbidden))
        for module, names in imports(package).items()
        if any(name.split(".")[0] in forbidden or name.startswith(forbidden) for name in names)
    }


def test_the_core_knows_no_protocol():
    forbidden = ("starlette", "uvicorn", "httptools", "grpc", "pydantic", "service.web", "service.protocols")
    assert offending(SERVICE / "core", forbidden) == {}


@pytest.mark.parametrize(
    "package, others",
    [
        pytest.param("tei", ("service.protocols.oip",), id="tei"),
        pytest.param("oip", ("service.protocols.tei",), id="oip"),
    ],
)
def test_a_protocol_does_not_import_another(package, others):
    assert offending(SERVICE / "protocols" / package, others) == {}


def test_grpc_does_not_import_the_web_edge():
    assert offending(SERVICE / "protocols" / "oip" / "grpc_service.py", ("starlette", "uvicorn", "service.web")) == {}


def test_bulk_scoring_stands_on_the_core_alone():
    """The bulk command needs no web server and no protocol, and nothing else needs it."""
    forbidden = ("starlette", "uvicorn", "grpc", "service.web", "service.protocols", "ray")
    assert offending(SERVICE / "bulk", forbidden) == {}
    others = {path: names for path, names in imports(SERVICE).items() if "/bulk/" not in path}
    assert {path for path, names in others.items() if any(n.startswith("service.bulk") for n in names)} == set()


def test_the_service_never_imports_the_export_stage():
    heavy = ("torch", "transformers", "optimum", "sentence_transformers", "sklearn", "export")
    assert offending(SERVICE, heavy) == {}


def test_every_failure_has_an_http_answer():
    assert set(http_errors.FAILURES) == set(all_failures())
    for failure, error in http_errors.FAILURES.items():
        assert 400 <= error.status < 600, failure


@pytest.mark.parametrize(
    "failure, status, error_type, grpc_code",
    [
        pytest.param("QueueFull", 429, "overloaded", "RESOURCE_EXHAUSTED", id="queue-full"),
        pytest.param("ShuttingDown", 503, "unavailable", "UNAVAILABLE", id="shutting-down"),
        pytest.param("NotReady", 503, "unhealthy", "UNAVAILABLE", id="not-ready"),
        pytest.param("InvalidInput", 422, "validation", "INVALID_ARGUMENT", id="bad-input"),
        pytest.param("BadRequest", 400, "bad_request", "INVALID_ARGUMENT", id="bad-request"),
        pytest.param("MalformedBody", 400, "malformed_json", "INVALID_ARGUMENT", id="malformed"),
        pytest.param("ModelNotFound", 404, "not_found", "NOT_FOUND", id="unknown-model"),
        pytest.param("Unauthenticated", 401, "unauthorized", "UNAUTHENTICATED", id="bad-key"),
    ],
)
def test_the_tables_agree_on_the_documented_cases(failure, status, error_type, grpc_code):
    cls = next(cls for cls in all_failures() if cls.__name__ == failure)
    assert (http_errors.FAILURES[cls].status, http_errors.FAILURES[cls].error_type) == (status, error_type)
    assert grpc_service.STATUS[cls].name == grpc_code
