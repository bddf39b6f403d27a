"""Short smoke runs of every benchmark and of the load tool, proving they work.
The full runs (bench/run-benchmarks.sh, bench/run-loadtest.sh) stay manual."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from bench import loadtest
from tests.conftest import ROOT, needs_export
from tests.service_helpers import ServerProcess, require_serve_env

pytestmark = needs_export


def test_in_process_benchmarks_run_and_save_json(tiny_checkpoint, tmp_path):
    results = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "bench", "-q", "-p", "no:cacheprovider", "--no-cov", "--benchmark-enable",
         "--benchmark-min-rounds=1", "--benchmark-max-time=0.001", "--benchmark-warmup=off",
         f"--benchmark-json={results}"],
        cwd=ROOT, capture_output=True, text=True, timeout=900,
        env={**os.environ, "BENCH_MODEL": str(tiny_checkpoint("bert")), "BENCH_DIR": str(tmp_path / "cache")},
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    groups = {b["group"] for b in json.loads(results.read_text())["benchmarks"]}
    assert {"tokenize batch=1", "session short batch=32", "session long batch=1", "predict short batch=32"} <= groups
    names = {b["name"] for b in json.loads(results.read_text())["benchmarks"]}
    assert "test_session_run[int8-selective-long-32]" in names and "test_torch_original[medium-1]" in names
    previous = tmp_path / "previous.json"
    previous.write_bytes(results.read_bytes())
    compare = subprocess.run([str(ROOT / ".venv/bin/pytest-benchmark"), "compare", str(previous), str(results)],
                             capture_output=True, text=True, timeout=120)
    assert compare.returncode == 0 and "test_tokenize" in compare.stdout
    from bench.summarize import summarize

    table = summarize(json.loads(results.read_text())).splitlines()
    assert table[0] == "| median ms | short ×1 | medium ×1 | long ×1 | short ×32 | medium ×32 | long ×32 |"
    assert [line.split("|")[1].strip() for line in table[2:7]] == [
        "fp32", "fp32-optimized", "int8", "int8-selective", "PyTorch original"]


@pytest.fixture
def tiny_server(tiny_bundle):
    require_serve_env()
    server = ServerProcess(tiny_bundle("bert"), "--api-keys", "k")
    server.wait_ready()
    yield server
    server.stop()


def test_load_tool_closed_and_open_loop(tiny_server, tmp_path, capsys):
    out = tmp_path / "load.json"
    args = ["run", "--url", tiny_server.url, "--api-key", "k", "--duration", "1", "--concurrency", "1,8",
            "--long-fraction", "0.2", "--batch-fraction", "0.2", "--server-pid", str(tiny_server.proc.pid),
            "--json", str(out)]
    assert loadtest.main(args) == 0
    results = json.loads(out.read_text())
    assert [(r["mode"], r["level"]) for r in results] == [("closed", 1), ("closed", 8)]
    for r in results:
        assert r["errors"] == 0 and r["statuses"] == {"200": r["requests"]} and r["requests"] > 0
        assert r["p50_ms"] <= r["p95_ms"] <= r["p99_ms"]
        assert r["peak_rss_mb"] > 10 and r["cpu_percent"] > 0
        assert r["mean_batch_size"] >= 1
    assert loadtest.main(["run", "--url", tiny_server.url, "--api-key", "k", "--rate", "50", "--duration", "1"]) == 0
    table = capsys.readouterr().out
    assert table.splitlines()[0].split()[:4] == ["mode", "level", "requests", "req/s"]
    assert table.splitlines()[-1].split()[0] == "open"


def test_load_tool_fails_when_any_request_fails(tiny_server, capsys):
    # No API key: every request gets 401, so the run must fail.
    assert loadtest.main(["run", "--url", tiny_server.url, "--duration", "0.5", "--concurrency", "2"]) == 1
    assert "FAILED:" in capsys.readouterr().err


@pytest.mark.parametrize("url", ["http://8.8.8.8:80", "http://1.1.1.1"])
def test_load_tool_refuses_public_targets(url):
    with pytest.raises(SystemExit, match="only loopback or private networks"):
        loadtest.check_target(url)


def test_compare_against_the_torch_baseline(default_bundle, tmp_path):
    require_serve_env()
    out = tmp_path / "report"
    proc = subprocess.run(
        [sys.executable, "-m", "bench.loadtest", "compare", "--bundle", str(default_bundle), "--duration", "1",
         "--concurrency", "1,4", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = (out / "report.md").read_text()
    assert "## Ratios (ours vs baseline, same run)" in report and "| cold start" in report
    data = json.loads((out / "report.json").read_text())
    assert set(data) == {"ours", "baseline"}
    assert (out / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_int8_options_study_runs(tiny_checkpoint):
    proc = subprocess.run([sys.executable, "-m", "bench.int8_options", "--model", str(tiny_checkpoint("bert"))],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert len(lines) == 8 + 1 + 8  # 8 settings, embeddings only, 8 matrix products of a 2-layer BERT
    assert lines[0].startswith("per_channel=True reduce_range=True QInt8")
    assert all(line.rstrip().endswith(("passes", "fails")) for line in lines)
