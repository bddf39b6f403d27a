"""Short smoke runs of every benchmark and of the load tool, proving they work.
The full runs (bench/run-benchmarks.sh, bench/run-loadtest.sh) stay manual."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter

import httpx
import pytest

from bench import loadtest
from bench.compare import auto_engine
from bench.workload import DOCUMENTS, SHORT_TEXTS, Mix
from tests.conftest import ROOT, _has, needs_export, require
from tests.helpers import ServerProcess, free_port, require_serve_env, wait_ready

pytestmark = needs_export


def run_bench(args: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    """``python -m`` a benchmark from the repository root; it must succeed (its stderr's tail says why not)."""
    proc = subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_in_process_benchmarks_run_and_save_json(tiny_checkpoint, tmp_path):
    results = tmp_path / "bench.json"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "bench",
            "-q",
            "-p",
            "no:cacheprovider",
            "--no-cov",
            "--benchmark-enable",
            "--benchmark-min-rounds=1",
            "--benchmark-max-time=0.001",
            "--benchmark-warmup=off",
            f"--benchmark-json={results}",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "BENCH_MODEL": str(tiny_checkpoint("bert")), "BENCH_DIR": str(tmp_path / "cache")},
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    groups = {b["group"] for b in json.loads(results.read_text())["benchmarks"]}
    assert {"tokenize batch=1", "session short batch=32", "session long batch=1", "predict short batch=32"} <= groups
    names = {b["name"] for b in json.loads(results.read_text())["benchmarks"]}
    assert "test_session_run[int8-selective-long-32]" in names and "test_torch_original[medium-1]" in names
    previous = tmp_path / "previous.json"
    previous.write_bytes(results.read_bytes())
    compare = subprocess.run(
        [str(ROOT / ".venv/bin/pytest-benchmark"), "compare", str(previous), str(results)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert compare.returncode == 0 and "test_tokenize" in compare.stdout
    from bench.summarize import summarize

    table = summarize(json.loads(results.read_text())).splitlines()
    assert table[0] == "| median ms | short ×1 | medium ×1 | long ×1 | short ×32 | medium ×32 | long ×32 |"
    assert [line.split("|")[1].strip() for line in table[2:7]] == [
        "fp32",
        "fp32-optimized",
        "int8",
        "int8-selective",
        "PyTorch original",
    ]


@pytest.fixture
def tiny_server(tiny_bundle):
    require_serve_env()
    server = ServerProcess(tiny_bundle("bert"), "--api-keys", "k")
    server.wait_ready()
    yield server
    server.stop()


def test_load_tool_closed_and_open_loop(tiny_server, tmp_path, capsys):
    out = tmp_path / "load.json"
    args = [
        "run",
        "--url",
        tiny_server.url,
        "--api-key",
        "k",
        "--duration",
        "1",
        "--concurrency",
        "1,8",
        "--long-fraction",
        "0.2",
        "--batch-fraction",
        "0.2",
        "--server-pid",
        str(tiny_server.proc.pid),
        "--json",
        str(out),
    ]
    assert loadtest.main(args) == 0
    results = json.loads(out.read_text())
    assert [(r["mode"], r["level"]) for r in results] == [("closed", 1), ("closed", 8)]
    for r in results:
        assert r["errors"] == 0 and r["statuses"] == {"200": r["requests"]} and r["requests"] > 0
        assert r["p50_ms"] <= r["p95_ms"] <= r["p99_ms"]
        assert r["short_p50_ms"] <= r["short_p99_ms"]
        assert r["peak_rss_mb"] > 10 and r["cpu_percent"] > 0
        assert r["mean_batch_size"] >= 1 and r["cache_hit_rate"] is None
    assert "short p99" in capsys.readouterr().out
    assert loadtest.main(["run", "--url", tiny_server.url, "--api-key", "k", "--rate", "50", "--duration", "1"]) == 0
    table = capsys.readouterr().out.splitlines()
    # Only short queries and no server PID: no short-only columns, no CPU or RSS columns.
    assert table[0].split() == [
        "mode",
        "level",
        "requests",
        "req/s",
        "p50",
        "ms",
        "p95",
        "ms",
        "p99",
        "ms",
        "errors",
        "mean",
        "batch",
    ]
    assert table[-1].split()[0] == "open"


def test_workload_tags_kinds_and_repeats_a_small_set():
    mix = Mix(long_fraction=0.25, batch_fraction=0.25, distinct=3)
    draws = [mix.draw() for _ in range(400)]
    kinds = Counter(kind for kind, _ in draws)
    assert set(kinds) == {"short", "long", "batch"} and 150 < kinds["short"] < 250
    documents = Mix(document_fraction=0.5)
    drawn = [documents.payload() for _ in range(200)]
    assert 70 < sum(kind == "document" for kind, _ in drawn) < 130
    assert all(
        payload["windows"] is True and payload["inputs"] in DOCUMENTS for kind, payload in drawn if kind == "document"
    )
    assert all("windows" not in payload for kind, payload in drawn if kind == "short")
    assert {inputs for kind, inputs in draws if kind == "short"} == set(SHORT_TEXTS[:3])
    assert all(len(inputs) == 3 and set(inputs) <= set(SHORT_TEXTS[:3]) for kind, inputs in draws if kind == "batch")
    # Seeded: every server in a comparison, and the in-process floor, get the same texts in the same order.
    first, second = Mix(), Mix()
    assert [first.draw() for _ in range(50)] == [second.draw() for _ in range(50)]


def test_load_tool_fails_when_any_request_fails(tiny_server, capsys):
    # No API key: every request gets 401, so the run must fail.
    assert loadtest.main(["run", "--url", tiny_server.url, "--duration", "0.5", "--concurrency", "2"]) == 1
    assert "FAILED:" in capsys.readouterr().err


@pytest.mark.parametrize("url", ["http://8.8.8.8:80", "http://1.1.1.1"])
def test_load_tool_refuses_public_targets(url):
    with pytest.raises(SystemExit, match="only loopback or private networks"):
        loadtest.check_target(url)


@pytest.fixture
def naive_server(tiny_bundle):
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.naive_server", "--bundle", str(tiny_bundle("bert")), "--port", str(port)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30)
    try:
        wait_ready(proc, f"http://127.0.0.1:{port}", name="naive server", timeout=60)
    except SystemExit as exc:
        raise AssertionError(str(exc)) from None
    yield client
    client.close()
    proc.terminate()
    proc.wait(timeout=30)


def test_naive_server_answers_the_top_label_like_ours(tiny_server, naive_server):
    texts = ["what is my checking account balance", "book a table for two at eight tonight", ""]
    ours = httpx.post(
        tiny_server.url + "/predict", json={"inputs": texts, "top_k": 1}, headers={"authorization": "Bearer k"}
    ).json()
    naive = naive_server.post("/predict", json={"inputs": texts}).json()
    assert [[entry["label"] for entry in row] for row in naive] == [[entry["label"] for entry in row] for row in ours]
    for mine, theirs in zip(naive, ours):
        assert mine[0]["score"] == pytest.approx(theirs[0]["score"], rel=1e-4)
    single = naive_server.post("/predict", json={"inputs": texts[1]}).json()
    assert [list(entry) for entry in single] == [["label", "score"]]
    assert single[0]["label"] == naive[1][0]["label"]
    assert naive_server.get("/health").json() == {"status": "ok"}


def _compare(bundle, out, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.loadtest",
            "compare",
            "--bundle",
            str(bundle),
            "--out",
            str(out),
            "--duration",
            "0.5",
            *extra,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_compare_report_sections_with_the_naive_server(tiny_bundle, tmp_path):
    require_serve_env()
    out = tmp_path / "report"
    proc = _compare(
        tiny_bundle("bert"),
        out,
        "--servers",
        "ours,naive",
        "--concurrency",
        "1,4",
        "--mixed-concurrency",
        "4",
        "--cache-concurrency",
        "2",
        "--distinct",
        "8",
        "--shadow-concurrency",
        "1",
        "--document-concurrency",
        "2",
        "--rounds",
        "2",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    # All servers stay up and take turns: every level is measured in both rounds.
    assert "round 1 of 2" in proc.stderr and "round 2 of 2" in proc.stderr
    data = json.loads((out / "report.json").read_text())
    assert data["settings"]["rounds"] == 2
    servers = data["servers"]
    assert {name: set(server["workloads"]) for name, server in servers.items()} == {
        "ours": {"short", "long-mix", "repeat", "document-mix", "documents"},
        "naive": {"short", "long-mix"},
        "ours-cache": {"repeat"},
        "ours-shadow": {"short"},
    }
    levels = [level for server in servers.values() for run in server["workloads"].values() for level in run]
    assert all(level["errors"] == 0 for level in levels)
    mixed = servers["naive"]["workloads"]["long-mix"]
    assert [level["level"] for level in mixed] == [4] and mixed[0]["short_p50_ms"] <= mixed[0]["short_p99_ms"]
    # Eight distinct texts: after the first request for each, the cache answers.
    assert servers["ours-cache"]["workloads"]["repeat"][0]["cache_hit_rate"] > 0.5
    assert servers["ours"]["workloads"]["repeat"][0]["cache_hit_rate"] is None
    # A tenth of the inputs served was picked for the shadow version: run, or skipped when the queue was busy.
    shadowed = servers["ours-shadow"]["workloads"]["short"][0]
    assert shadowed["shadow_share"] + shadowed["shadow_skipped_share"] == pytest.approx(0.1, abs=0.01)
    assert shadowed["shadow_share"] > 0.05
    assert servers["ours"]["workloads"]["short"][0]["shadow_share"] is None
    # Documents are read in windows, which the server counts; the floor runs the same documents' windows.
    documents = servers["ours"]["workloads"]["documents"][0]
    assert documents["windows_per_s"] > documents["throughput"] > 0
    assert documents["document_p50_ms"] <= documents["document_p99_ms"] and documents["short_p99_ms"] is None
    mixed_documents = servers["ours"]["workloads"]["document-mix"][0]
    assert mixed_documents["short_p50_ms"] <= mixed_documents["short_p99_ms"] and mixed_documents["windows_per_s"] > 0
    assert data["floor"]["windows_per_s"] > 0 and data["floor"]["window_batch"] == 4
    floor, figures = data["floor"], data["figures"]
    assert floor["batch_size"] == 32 and floor["single_p50_ms"] > 0 and floor["batch_texts_per_s"] > 0
    ours_c1 = servers["ours"]["workloads"]["short"][0]
    assert figures["overhead_ms"] == pytest.approx(ours_c1["p50_ms"] - floor["single_p50_ms"], abs=0.01)
    # The bare round trip to a server that answers at once is measured and taken off.
    assert 0 < floor["wire_p50_ms"] < ours_c1["p50_ms"]
    assert figures["added_ms"] == pytest.approx(figures["overhead_ms"] - floor["wire_p50_ms"], abs=0.01)
    assert {name: set(ratios) for name, ratios in figures["ratios"].items()} == {"naive": {"1", "4"}}
    assert {"target": "no failed request from ours, any level or workload", "measured": "0", "met": True} in figures[
        "targets"
    ]
    report = (out / "report.md").read_text()
    assert [line for line in report.splitlines() if line.startswith("## ")] == [
        "## Short queries, closed loop",
        "## Against the in-process floor",
        "## Long texts among short queries (concurrency 4)",
        "## Whole documents read in windows (concurrency 4)",
        "## Response cache: a repeating workload (labelled, not the main figures)",
        "## A shadow version beside the serving one",
        "## Cold start and memory",
        "## Targets (issue #8)",
        "## Per server and workload",
    ]
    assert "| concurrency | ours req/s | naive req/s | ours p50 / p99 ms | naive p50 / p99 ms |" in report
    assert (out / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_compare_refuses_what_it_cannot_compare(tiny_bundle, tmp_path, capsys):
    with pytest.raises(SystemExit, match="the PyTorch baseline serves the built-in default model only"):
        loadtest.main(["compare", "--bundle", str(tiny_bundle("bert")), "--out", str(tmp_path)])
    with pytest.raises(SystemExit):
        loadtest.main(["compare", "--servers", "naive,pytorch"])
    assert "--servers: invalid" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_compare_all_three_servers_on_the_default_bundle(default_bundle, tmp_path):
    require_serve_env()
    out = tmp_path / "report"
    proc = _compare(
        default_bundle,
        out,
        "--concurrency",
        "1",
        "--long-fraction",
        "0",
        "--cache-size",
        "0",
        "--shadow-fraction",
        "0",
        "--document-fraction",
        "0",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads((out / "report.json").read_text())
    # Where ENGINE=auto picks OpenVINO, ours on ONNX Runtime runs beside it.
    beside = auto_engine(default_bundle) != "onnxruntime"
    assert set(data["servers"]) == {"ours", "naive", "pytorch"} | ({"ours-onnxruntime"} if beside else set())
    assert set(data["figures"]["ratios"]) == {"naive", "pytorch"}
    report = (out / "report.md").read_text()
    assert "| concurrency | ours req/s | naive req/s | PyTorch req/s |" in report
    assert ("## Engines" in report) == beside
    assert "## Long texts" not in report and "## Response cache" not in report and "## Whole documents" not in report
    if beside:
        figures = data["engines"]["figures"]
        assert [row["figure"] for row in figures][:3] == [
            "HTTP req/s at concurrency 1",
            "p50 at concurrency 1 (ONNX Runtime ÷ auto)",
            "in-process texts/s in batches of 32",
        ]
        assert all(row["advantage"] > 0 for row in figures)
        assert data["engines"]["info"]["ours"]["engine"]["engine"] == "openvino"
        assert data["engines"]["info"]["ours-onnxruntime"]["engine"]["engine"] == "onnxruntime"


def test_engines_benchmark_runs_both_engines(default_bundle, tmp_path):
    run_bench(
        ["bench.engines", "--bundle", str(default_bundle), "--rounds", "1", "--seconds", "0.2"]
        + ["--out", str(tmp_path)],
        timeout=600,
    )
    result = json.loads((tmp_path / "engines.json").read_text())
    assert set(result["engines"]) == {"onnxruntime", "openvino"}
    for row in result["engines"].values():
        assert row["batch1_p50_ms"] > 0 and row["batch32_texts_per_s"] > 0 and row["texts"] == 239
        assert row["agreement"] >= 0.99 and row["max_prob_diff"] <= 0.05
    assert result["engines"]["openvino"]["two_in_flight_texts_per_s"] > 0
    assert "| openvino | openvino.onnx |" in (tmp_path / "engines.md").read_text()


def test_int8_options_study_runs(tiny_checkpoint):
    proc = run_bench(
        ["bench.int8_options", "--model", str(tiny_checkpoint("bert"))],
        timeout=600,
    )
    lines = proc.stdout.splitlines()
    assert len(lines) == 8 + 1 + 8  # 8 settings, embeddings only, 8 matrix products of a 2-layer BERT
    assert lines[0].startswith("per_channel=True reduce_range=True QInt8")
    assert all(line.rstrip().endswith(("passes", "fails")) for line in lines)


def test_bulk_benchmark_runs_every_path_on_the_default_bundle(default_bundle, tmp_path):
    """A small run of bench/bulk.py: every path scores every text it was given, the report says so."""
    require_serve_env()
    out = tmp_path / "bulk"
    run_bench(
        ["bench.bulk", "--bundle", str(default_bundle), "--out", str(out)]
        + ["--rows", "300", "--service-rows", "100", "--torch-rows", "50", "--ray-rows", "100"],
        timeout=900,
    )
    data = json.loads((out.with_suffix(".json")).read_text())
    texts = {name: result["texts"] for name, result in data["results"].items()}
    assert texts == {"floor": 300, "bulk": 300, "service": 100, "pytorch": 50, "ray": 100}
    assert all(result["texts_per_s"] > 0 for result in data["results"].values())
    assert data["memory"]["tenth_mb"] > 0 and data["bulk_of_floor"] > 0
    assert "| bulk | 300 |" in out.with_suffix(".md").read_text()


def test_priorities_benchmark_runs_its_three_phases(tiny_bundle, tmp_path):
    require_serve_env()
    out = tmp_path / "priorities.json"
    run_bench(
        ["bench.priorities", "--bundle", str(tiny_bundle("bert")), "--out", str(out)]
        + ["--duration", "1.5", "--probe-rate", "10", "--flood-clients", "4"],
        timeout=300,
    )
    data = json.loads(out.read_text())
    assert list(data["phases"]) == ["alone", "flood, same priority", "flood, low priority"]
    assert [phase["probe_requests"] for phase in data["phases"].values()] == [15, 15, 15]
    assert data["phases"]["alone"]["flood_inputs_per_s"] == 0
    assert data["phases"]["flood, low priority"]["flood_inputs_per_s"] > 0
    assert data["p99_vs_alone"]["alone"] == 1.0


def test_tracing_cost_benchmark_runs_both_servers(tiny_bundle, tmp_path):
    require_serve_env()
    out = tmp_path / "tracing.json"
    run_bench(
        ["bench.tracing_cost", "--bundle", str(tiny_bundle("bert")), "--out", str(out)]
        + ["--duration", "0.5", "--rounds", "1"],
        timeout=300,
    )
    data = json.loads(out.read_text())
    assert set(data["figures"]) == {"off", "on"} and set(data["figures"]["on"]) == {"1", "32"}
    assert data["exported_bytes"] > 0  # the traced server's spans reached the sink


def test_openvino_weights_benchmark_measures_every_candidate(tmp_path):
    """A tiny Qwen2 classifier: ONNX Runtime's variants present and OpenVINO's compressed IRs, each measured."""
    require(_has("openvino"), "OpenVINO (requirements-openvino.txt)")
    require(_has("nncf"), "nncf (requirements-export.txt)")
    from export import weight_only
    from export.convert import export_onnx
    from export.pipeline import export_bundle
    from export.sources import load_source
    from tests import tiny_models

    decoder = tiny_models.fine_tune(tiny_models.build_decoder("qwen2", tmp_path / "model", tie_word_embeddings=True))
    bundle, variants = tmp_path / "bundle", tmp_path / "variants"
    export_bundle(out=bundle, model=str(decoder), variant="int8-weights", keep_variants=variants)
    # The export keeps the variants it built; the others come from the same checkpoint (no int8: absent ones are
    # left out of the comparison).
    fp32 = export_onnx(load_source(str(decoder)), variants / "fp32.onnx")
    weight_only.quantize(fp32, variants / "int4-weights.onnx", "int4-weights")
    out = tmp_path / "results.json"
    proc = run_bench(
        ["bench.openvino_weights", "--variants", str(variants), "--bundle", str(bundle)]
        + ["--out", str(out), "--texts", "40", "--rounds", "1", "--group-size", "32", "--work", str(tmp_path / "irs")],
        timeout=600,
    )
    data = json.loads(out.read_text())
    rows = {row["candidate"]: row for row in data["candidates"]}
    assert list(rows) == ["fp32", "int8-weights", "int4-weights", "ov-fp32", "ov-int8-asym", "ov-int4-sym-32"]
    assert data["failed_builds"] == {} and data["variant_served"] == "int8-weights"
    for name, row in rows.items():
        assert "error" not in row and row["rounds"] == 1, name
        assert row["size"] > 0 and row["rss_loaded"] > 0 and 0 < row["rss_after"] <= row["rss_peak"], name
        assert row["load_s"] > 0 and row["batch1_ms"] > 0 and row["batch8_texts_per_s"] > 0, name
        assert 0 <= row["agreement"] <= 1 and 0 <= row["max_prob_diff"] <= 1 and row["texts"] == 40, name
        engine = "openvino" if name.startswith("ov-") else "onnxruntime"
        assert row["engine"] == row["described"]["engine"] == engine, name
    assert {rows[name]["precision"] for name in rows if name.startswith("ov-")} <= {"bf16", "fp32"}
    assert rows["int8-weights"]["precision"] == "int8"
    # The reference against itself.
    assert rows["fp32"]["agreement"] == 1.0 and rows["fp32"]["max_prob_diff"] == 0.0
    # Compressed weights take less room than fp32 ones, on either engine.
    assert rows["int4-weights"]["size"] < rows["fp32"]["size"]
    assert rows["ov-int8-asym"]["size"] < rows["ov-fp32"]["size"]
    assert rows["ov-int4-sym-32"]["size"] < rows["ov-fp32"]["size"]
    assert rows["ov-int4-sym-32"]["build_s"] > 0 and rows["ov-int4-sym-32"]["build_peak"] > 0
    assert "| ov-int4-sym-32 | openvino |" in proc.stdout and "CPU flags" in proc.stdout
