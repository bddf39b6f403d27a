"""The layout draws the architecture: a core that knows no protocol, protocols that know not each other,
an HTTP edge that knows no protocol, imports that never come back round (in the service and the benchmarks),
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


def module_graph(package: Path) -> dict[str, set[str]]:
    """module -> the modules of ``package`` it imports, wherever the import stands: at the top, under
    ``if TYPE_CHECKING:`` or inside a function. A name imported from a package counts as its module
    when it is one (``from service.web import docs``), and as the package otherwise."""
    modules = {}
    for path in sorted(package.rglob("*.py")):
        parts = path.relative_to(package.parent).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph = {}
    for module, path in modules.items():
        here = module if path.name == "__init__.py" else module.rpartition(".")[0]
        named = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                named.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: from the package this module is in, up level - 1
                    up = here.split(".")[: len(here.split(".")) - node.level + 1]
                    base = ".".join([*up, base] if base else up)
                named.add(base)
                named.update(f"{base}.{alias.name}" for alias in node.names)
        graph[module] = {name for name in named if name in modules and name != module}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The groups of nodes that reach each other (Tarjan's strongly connected components of more than one)."""
    order: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found = []

    def visit(node: str) -> None:
        order[node] = low[node] = len(order)
        stack.append(node)
        for other in sorted(graph.get(node, ())):
            if other not in order:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in stack:
                low[node] = min(low[node], order[other])
        if low[node] == order[node]:
            group = []
            while True:
                member = stack.pop()
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for node in sorted(graph):
        if node not in order:
            visit(node)
    return sorted(found)


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


def test_the_inference_call_knows_no_transport():
    """One data plane for HTTP and gRPC: it holds, checks room, decodes and classifies, and speaks neither."""
    transports = ("starlette", "uvicorn", "grpc", "service.web", "service.protocols.oip.proto")
    assert offending(SERVICE / "protocols" / "oip" / "dataplane.py", transports) == {}


def test_the_web_edge_knows_no_protocol():
    """The protocols build on the HTTP edge's plumbing; only the app above both gathers their routes."""
    assert offending(SERVICE / "web", ("service.protocols", "service.app", "service.cli")) == {}


def test_no_module_imports_its_importers():
    """Not even for a type, nor late inside a function: an import that comes back round is a cycle all the same."""
    assert cycles(module_graph(SERVICE)) == []


def test_the_layers_import_one_way():
    """The same at the size of the layers: the core, the protocols, the web edge, bulk, the app and each module
    beside them."""
    graph: dict[str, set[str]] = {}
    for module, names in module_graph(SERVICE).items():
        layer = ".".join(module.split(".")[:2])
        graph.setdefault(layer, set()).update(".".join(name.split(".")[:2]) for name in names)
    assert cycles({layer: names - {layer} for layer, names in graph.items()}) == []


def test_the_cycle_finder_sees_type_checking_and_late_imports(tmp_path):
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.b import B\n")
    (package / "b.py").write_text("def f():\n    from pkg import c\n")
    (package / "c.py").write_text("from .a import A\n")
    (package / "d.py").write_text("import pkg.a\n")
    assert cycles(module_graph(package)) == [["pkg.a", "pkg.b", "pkg.c"]]


def test_bulk_scoring_stands_on_the_core_alone():
    """The bulk command needs no web server and no protocol, and nothing else needs it."""
    forbidden = ("starlette", "uvicorn", "grpc", "service.web", "service.protocols", "ray")
    assert offending(SERVICE / "bulk", forbidden) == {}
    others = {path: names for path, names in imports(SERVICE).items() if "/bulk/" not in path}
    assert {path for path, names in others.items() if any(n.startswith("service.bulk") for n in names)} == set()


def test_the_service_never_imports_the_export_stage():
    heavy = ("torch", "transformers", "optimum", "sentence_transformers", "sklearn", "export")
    assert offending(SERVICE, heavy) == {}


def test_the_benchmarks_import_one_way():
    """A cycle dodged by an import inside a function is still a cycle: it counts here."""
    graph = module_graph(BENCH)
    assert "bench.report" in graph["bench.plot"]  # the graph holds the benchmarks' own imports
    assert cycles(graph) == []


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


# Children of the benchmarks that are not servers: the bulk and export commands, timed until they exit.
NOT_SERVERS = {("bench/bulk.py", "_timed_child"), ("bench/llm_shape.py", "timed_export")}


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
