"""The layout draws the architecture: a core that knows no protocol, protocols that know not each other,
one table per transport for every failure, and benchmarks whose imports point one way."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from service.core.failures import all_failures
from service.protocols.oip import grpc_service
from service.web import errors as http_errors
from tests.conftest import ROOT

SERVICE = ROOT / "service"
BENCH = ROOT / "bench"


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


def module_graph(package: Path) -> dict[str, set[str]]:
    """module -> the modules of the same package it imports, deferred imports inside functions included."""
    by_name = {
        path.removesuffix(".py").removesuffix("/__init__").replace("/", "."): names
        for path, names in imports(package).items()
    }
    return {module: {name for name in names if name in by_name} - {module} for module, names in by_name.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str]:
    """One import cycle, as the modules around it (the first repeated at the end); [] when there is none."""
    done: set[str] = set()
    path: list[str] = []

    def visit(module: str) -> list[str]:
        if module in path:
            return path[path.index(module) :] + [module]
        if module in done:
            return []
        path.append(module)
        for imported in sorted(graph[module]):
            if found := visit(imported):
                return found
        path.pop()
        done.add(module)
        return []

    return next((found for module in sorted(graph) if (found := visit(module))), [])


def test_the_benchmarks_import_one_way():
    """A cycle dodged by an import inside a function is still a cycle: it counts here."""
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    graph = module_graph(BENCH)
    assert "bench.report" in graph["bench.plot"]  # the graph holds the benchmarks' own imports
    assert find_cycle(graph) == []


def popen_calls(path: Path) -> set[str]:
    """The functions of a module that call ``subprocess.Popen`` (``<module>`` for a call outside any)."""
    found: set[str] = set()

    def visit(node: ast.AST, function: str) -> None:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            function = node.name
        if isinstance(node, ast.Call):
            called = node.func
            if (isinstance(called, ast.Attribute) and called.attr == "Popen") or (
                isinstance(called, ast.Name) and called.id == "Popen"
            ):
                found.add(function)
        for child in ast.iter_child_nodes(node):
            visit(child, function)

    visit(ast.parse(path.read_text()), "<module>")
    return found


# Children of the benchmarks that are not servers: the bulk command, timed until it exits.
NOT_SERVERS = {("bench/bulk.py", "_timed_child")}


def test_servers_are_started_by_bench_process_only():
    """One way to start a server and to stop it (SIGTERM, then a kill after a timeout), not one per benchmark."""
    calls = {(str(path.relative_to(ROOT)), function) for path in BENCH.glob("*.py") for function in popen_calls(path)}
    assert sorted(calls - NOT_SERVERS - {("bench/process.py", "start")}) == []
    assert ("bench/process.py", "start") in calls


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
