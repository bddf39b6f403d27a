"""``python -m service.bulk`` end to end: real files in every format, the real default bundle, the real
service to compare with, and a run killed half way and resumed."""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bench.workload import DOCUMENTS, SHORT_TEXTS
from service.bulk.cli import main
from tests.conftest import ROOT, needs_export
from tests.helpers import SERVE_PYTHON, ServerProcess, require_serve_env

pytestmark = needs_export

# Short queries, texts of every length up to the model's 256 tokens, one just over, and two documents far
# longer: the last three are cut.
TEXTS = [
    *SHORT_TEXTS[:24],
    *(" ".join(SHORT_TEXTS[i : i + n]) for i, n in enumerate((3, 6, 12, 24, 40))),
    DOCUMENTS[0],
    DOCUMENTS[3],
]


def write_rows(path: Path, rows: list[dict]) -> Path:
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    elif path.suffix == ".csv":
        with path.open("w", newline="") as file:
            writer = csv.DictWriter(file, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    else:
        pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def read_rows(path: Path) -> list[dict]:
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in path.read_text().splitlines()]
    if path.suffix == ".csv":
        with path.open(newline="") as file:
            return list(csv.DictReader(file))
    return pq.read_table(path).to_pylist()


def bulk(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess:
    """The command in the serving environment: it needs nothing of the export stage."""
    require_serve_env()
    return subprocess.run(
        [str(SERVE_PYTHON), "-m", "service.bulk", *args],
        cwd=ROOT,
        input=stdin,
        capture_output=True,
        timeout=600,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


@pytest.fixture(scope="module")
def served(default_bundle):
    """The service's answer to each text sent alone, as a client of /predict sees it."""
    server = ServerProcess(default_bundle)
    try:
        server.wait_ready()
        with httpx.Client(base_url=server.url, timeout=30) as client:
            return [client.post("/predict", json={"inputs": text, "truncate": True}).json()[0] for text in TEXTS]
    finally:
        server.stop()


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".parquet"])
def test_every_format_gets_the_services_answers_row_for_row(default_bundle, served, suffix, tmp_path):
    """One input per batch, as the service runs a lone request: the very same floats. (The default bundle is
    int8 with dynamic quantization, whose scale is taken over a whole batch: batched, an answer may move
    within the bundle's gate, as the next test shows.)"""
    rows = [{"id": str(i), "text": text} for i, text in enumerate(TEXTS)]
    source = write_rows(tmp_path / f"in{suffix}", rows)
    out = tmp_path / f"out{suffix}"
    done = bulk(str(source), "-o", str(out), "--bundle", str(default_bundle), "--max-batch-size", "1", "--details")
    assert done.returncode == 0, done.stderr.decode()
    assert done.stderr.decode().splitlines()[-1].startswith(f"scored {len(TEXTS)} of {len(TEXTS)} rows in ")
    scored = read_rows(out)
    assert [(row["id"], row["text"]) for row in scored] == [(row["id"], row["text"]) for row in rows]
    assert [row["predicted_label"] for row in scored] == [answer["label"] for answer in served]
    assert [float(row["predicted_score"]) for row in scored] == [answer["score"] for answer in served]
    truncated = [str(row["predicted_truncated"]).lower() for row in scored]
    assert truncated == ["false"] * (len(TEXTS) - 3) + ["true"] * 3
    assert not (tmp_path / f"out{suffix}.parts").exists()


def test_batched_answers_stay_within_the_bundles_gate(default_bundle, served, tmp_path):
    source = write_rows(tmp_path / "in.jsonl", [{"text": text} for text in TEXTS])
    out = tmp_path / "out.jsonl"
    assert main([str(source), "-o", str(out), "--bundle", str(default_bundle), "--progress", "off"]) == 0
    manifest = json.loads((default_bundle / "bundle.json").read_text())
    tolerance = manifest["verification"]["thresholds"]["int8_max_prob_diff"]
    for row, answer in zip(read_rows(out), served):
        assert row["predicted_label"] == answer["label"]
        assert abs(row["predicted_score"] - answer["score"]) <= tolerance


def test_pairs_windows_and_every_score_reach_the_columns(tiny_bundle, tmp_path):
    from service.bulk.scorer import Answering, Scorer
    from service.core.windows import Windowing

    bundle = tiny_bundle("bert")
    texts = ["good", "bad " * 30, "fine"]
    source = write_rows(tmp_path / "in.csv", [{"body": text} for text in texts])
    out = tmp_path / "out.parquet"
    argv = [str(source), "-o", str(out), "--bundle", str(bundle), "--text-column", "body", "--all-scores"]
    assert main([*argv, "--windows", "--aggregation", "max", "--column-prefix", "m_", "--details"]) == 0
    scorer = Scorer.from_bundle(
        bundle, windowing=Windowing(True, 32, 32, "max"), answering=Answering(True, False, True, "m_")
    )
    assert read_rows(out) == [{"body": text, **answer} for text, answer in zip(texts, scorer.classify(texts))]
    assert read_rows(out)[1]["m_windows"] > 1


def test_a_pair_model_reads_two_columns(tiny_bundle, tmp_path):
    from export.pipeline import export_bundle
    from tests import tiny_models

    checkpoint = tiny_models.build("bert", tmp_path / "ckpt", num_labels=1)
    bundle = tmp_path / "reranker"
    export_bundle(out=bundle, model=str(checkpoint), variant="fp32", task="pair")
    rows = [{"query": "cheap flights", "passage": p} for p in ("flights for less", "a cake recipe")]
    source = write_rows(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out.jsonl"
    base = [str(source), "-o", str(out), "--bundle", str(bundle), "--text-column", "query"]
    assert main(base) == 2  # a pair model needs its second column
    assert main([*base, "--pair-column", "passage"]) == 0
    scored = read_rows(out)
    assert [row["passage"] for row in scored] == ["flights for less", "a cake recipe"]
    assert all(0 < row["predicted_score"] < 1 for row in scored)  # one logit: a sigmoid, as /rerank scores


def test_bad_rows_are_named_and_skipped_or_fail_the_run(tiny_bundle, tmp_path, capsys):
    bundle = tiny_bundle("bert")
    source = tmp_path / "in.jsonl"
    source.write_text(
        '{"text": "fine"}\n{"text": ""}\n\n{"text": 7}\n[1, 2]\n{"other": "x"}\n{"text": null}\nnot json\n'
        '{"text": "also fine", "predicted_label": "taken"}\n{"text": "last"}\n'
    )
    out = tmp_path / "out.jsonl"
    assert main([str(source), "-o", str(out), "--bundle", str(bundle), "--progress", "off"]) == 5
    err = capsys.readouterr().err
    where = str(source)
    assert err.splitlines()[:8] == [
        f"bad row: {where} row 2: 'text' is empty",
        f"bad row: {where} row 3: empty row",
        f"bad row: {where} row 4: 'text' is not text but int",
        f"bad row: {where} row 5: not a JSON object but list",
        f"bad row: {where} row 6: no column 'text'",
        f"bad row: {where} row 7: 'text' is null",
        f"bad row: {where} row 8: not JSON (Expecting value: line 1 column 1 (char 0))",
        f"bad row: {where} row 9: already has a column 'predicted_label'; choose another --column-prefix",
    ]
    assert err.splitlines()[-1] == (
        "error: 8 bad rows (named above) in rows 1 to 10; fix them, or pass --on-bad-row skip to leave them out"
    )
    assert not out.exists() and not (tmp_path / "out.jsonl.parts").exists()
    assert main([str(source), "-o", str(out), "--bundle", str(bundle), "--on-bad-row", "skip"]) == 0
    assert [row["text"] for row in read_rows(out)] == ["fine", "last"]
    assert "scored 2 of 10 rows" in capsys.readouterr().err


def test_too_long_without_truncation_is_a_bad_row(tiny_bundle, tmp_path, capsys):
    source = write_rows(tmp_path / "in.csv", [{"text": "fine"}, {"text": "word " * 40}])
    out = tmp_path / "out.csv"
    argv = [str(source), "-o", str(out), "--bundle", str(tiny_bundle("bert")), "--no-truncate"]
    assert main([*argv, "--on-bad-row", "skip", "--progress", "off"]) == 0
    assert f"bad row: {source} row 2: has 82 tokens, more than the model's limit of 24" in capsys.readouterr().err
    assert [row["text"] for row in read_rows(out)] == ["fine"]
    assert main([*argv, "--overwrite", "--windows", "--max-windows", "2", "--on-bad-row", "skip"]) == 0
    assert "row 2: needs 7 windows, more than the limit of 2 per input (MAX_WINDOWS)" in capsys.readouterr().err


def test_standard_input_directories_and_globs(tiny_bundle, tmp_path):
    bundle = str(tiny_bundle("bert"))
    lines = b'{"text": "one"}\n{"text": "two"}\n'
    done = bulk("-", "--format", "jsonl", "-o", str(tmp_path / "out.csv"), "--bundle", bundle, stdin=lines)
    assert done.returncode == 0, done.stderr.decode()
    assert [row["text"] for row in read_rows(tmp_path / "out.csv")] == ["one", "two"]
    assert "2 rows, " in done.stderr.decode()  # no total to count against on standard input
    folder = tmp_path / "in"
    folder.mkdir()
    write_rows(folder / "b.csv", [{"text": "three"}])
    write_rows(folder / "a.jsonl", [{"text": "one"}, {"text": "two"}])
    (folder / "notes.txt").write_text("not an input")
    assert main([str(folder), "-o", str(tmp_path / "all.jsonl"), "--bundle", bundle]) == 0
    assert [row["text"] for row in read_rows(tmp_path / "all.jsonl")] == ["one", "two", "three"]
    assert main([str(folder / "*.csv"), "-o", str(tmp_path / "glob.jsonl"), "--bundle", bundle]) == 0
    assert [row["text"] for row in read_rows(tmp_path / "glob.jsonl")] == ["three"]


@pytest.mark.parametrize(
    "args, code, message",
    [
        pytest.param(["missing.jsonl"], 2, "missing.jsonl: no such file or directory", id="missing"),
        pytest.param(["{data}/in.txt"], 2, "cannot tell its format from its name", id="unknown-format"),
        pytest.param(["-"], 2, "reading standard input needs --format (jsonl or csv)", id="stdin-format"),
        pytest.param(["{data}/*.nothing"], 2, "no file matches", id="glob"),
        pytest.param(["{data}/in.jsonl", "--bundle", "{data}"], 3, "bundle.json", id="bad-bundle"),
        pytest.param(["{data}/in.jsonl", "--pair-column", "x"], 2, "--pair-column is for text-pair", id="pair"),
        pytest.param(["{data}/in.jsonl", "--resume"], 4, "nothing to resume", id="nothing-to-resume"),
        pytest.param(["{data}/in.csv", "--format", "parquet"], 4, "not a Parquet file", id="not-parquet"),
        pytest.param(["{data}/in.csv", "--column-prefix", ""], 2, "already has a column 'label'", id="clash"),
    ],
)
def test_refusals_are_one_clear_line(tiny_bundle, tmp_path, capsys, args, code, message):
    (tmp_path / "in.txt").write_text("x")
    write_rows(tmp_path / "in.jsonl", [{"text": "one"}])
    write_rows(tmp_path / "in.csv", [{"text": "one", "label": "a"}])
    argv = [arg.format(data=tmp_path) for arg in args]
    if "--bundle" not in argv:
        argv += ["--bundle", str(tiny_bundle("bert"))]
    assert main([*argv, "-o", str(tmp_path / "out.csv")]) == code
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and "Traceback" not in err
    assert not (tmp_path / "out.csv").exists()


def test_an_existing_output_is_kept_unless_overwritten(tiny_bundle, tmp_path, capsys):
    source = write_rows(tmp_path / "in.jsonl", [{"text": "one"}])
    out = tmp_path / "out.jsonl"
    out.write_text("precious\n")
    argv = [str(source), "-o", str(out), "--bundle", str(tiny_bundle("bert"))]
    assert main(argv) == 4
    assert f"error: {out} exists; pass --overwrite to replace it" in capsys.readouterr().err
    assert out.read_text() == "precious\n"
    assert main([*argv, "--overwrite"]) == 0
    assert read_rows(out)[0]["text"] == "one"


def test_a_killed_run_resumes_with_nothing_lost_or_repeated(default_bundle, tmp_path):
    rows = [{"id": i, "text": SHORT_TEXTS[i % len(SHORT_TEXTS)] + f" {i}"} for i in range(3000)]
    source = write_rows(tmp_path / "in.jsonl", rows)
    args = ["--bundle", str(default_bundle), "--chunk-rows", "100", "--progress", "lines"]
    whole = bulk(str(source), "-o", str(tmp_path / "whole.jsonl"), *args)
    assert whole.returncode == 0, whole.stderr.decode()

    out = tmp_path / "out.jsonl"
    parts = tmp_path / "out.jsonl.parts"
    require_serve_env()
    run = subprocess.Popen(
        [str(SERVE_PYTHON), "-m", "service.bulk", str(source), "-o", str(out), *args],
        cwd=ROOT,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    deadline = time.monotonic() + 120
    while not (parts / "part-000003.json").exists() and time.monotonic() < deadline:
        time.sleep(0.005)
    run.send_signal(signal.SIGKILL)  # no chance to tidy up: what is on disk is all there is
    run.wait()
    committed = len(list(parts.glob("part-*.json")))
    assert 4 <= committed < 30 and not out.exists()

    again = bulk(str(source), "-o", str(out), *args)
    assert again.returncode == 4 and b"pass --resume to continue it" in again.stderr
    changed = bulk(str(source), "-o", str(out), *args, "--all-scores", "--resume")
    assert changed.returncode == 4 and b"differs from the interrupted one in answering" in changed.stderr
    resumed = bulk(str(source), "-o", str(out), *args, "--resume")
    assert resumed.returncode == 0, resumed.stderr.decode()
    assert f"resuming after {committed} committed chunks ({committed * 100:,} rows)" in resumed.stderr.decode()
    assert out.read_bytes() == (tmp_path / "whole.jsonl").read_bytes()
    assert [row["id"] for row in read_rows(out)] == list(range(3000))
    assert not parts.exists()


def test_sigterm_stops_cleanly_and_says_how_to_go_on(default_bundle, tmp_path):
    rows = [{"text": SHORT_TEXTS[i % len(SHORT_TEXTS)]} for i in range(20000)]
    source = write_rows(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out.jsonl"
    require_serve_env()
    run = subprocess.Popen(
        [str(SERVE_PYTHON), "-m", "service.bulk", str(source), "-o", str(out), "--bundle", str(default_bundle)],
        cwd=ROOT,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    deadline = time.monotonic() + 120
    while not (tmp_path / "out.jsonl.parts" / "part-000000.json").exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    run.terminate()
    _, err = run.communicate(timeout=60)
    assert run.returncode == 130
    assert err.decode().splitlines()[-1] == (
        "error: interrupted; the committed rows are kept: run again with --resume to go on"
    )
    assert not out.exists()


def test_progress_lines_without_a_terminal(tiny_bundle, tmp_path):
    source = write_rows(tmp_path / "in.jsonl", [{"text": f"text {i}"} for i in range(10)])
    done = bulk(
        str(source), "-o", str(tmp_path / "out.jsonl"), "--bundle", str(tiny_bundle("bert")), "--chunk-rows", "4"
    )
    lines = done.stderr.decode().splitlines()
    assert done.returncode == 0
    assert lines[0].startswith("10 of 10 rows (100%), ") and lines[0].endswith(" rows/s")
    assert "\r" not in done.stderr.decode()


def test_progress_bar_on_request(tiny_bundle, tmp_path):
    source = write_rows(tmp_path / "in.jsonl", [{"text": f"text {i}"} for i in range(10)])
    args = ["--bundle", str(tiny_bundle("bert")), "--chunk-rows", "4", "--progress", "bar"]
    done = bulk(str(source), "-o", str(tmp_path / "out.jsonl"), *args)
    assert done.returncode == 0
    assert "100%" in done.stderr.decode() and "10/10" in done.stderr.decode() and "\r" in done.stderr.decode()


# Started from a small interpreter of its own: a child forked from this test process would count this
# process's pages, shared until it execs, in its own peak.
_PEAK_PROBE = """
import os, subprocess, sys
run = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
err = run.stderr.read()
_, status, usage = os.wait4(run.pid, 0)
sys.stderr.buffer.write(err)
print(usage.ru_maxrss)
sys.exit(os.waitstatus_to_exitcode(status))
"""


def peak_rss_mib(*args: str) -> tuple[subprocess.CompletedProcess, float]:
    """Run the command and return how it ended and the most memory it held (the kernel's own count)."""
    require_serve_env()
    done = subprocess.run(
        [str(SERVE_PYTHON), "-c", _PEAK_PROBE, str(SERVE_PYTHON), "-m", "service.bulk", *args],
        cwd=ROOT,
        capture_output=True,
        timeout=600,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    return done, int(done.stdout) / 1024


def test_a_huge_row_is_cut_before_it_is_tokenized(tiny_bundle, tmp_path):
    bundle = str(tiny_bundle("bert"))
    small = write_rows(tmp_path / "small.jsonl", [{"text": "hi"}])
    huge = write_rows(tmp_path / "huge.jsonl", [{"text": "hi"}, {"text": "word " * 1_600_000}])  # 8 MB
    args = ["--bundle", bundle, "--progress", "off", "--details"]
    base, base_peak = peak_rss_mib(str(small), "-o", str(tmp_path / "small-out.jsonl"), *args)
    assert base.returncode == 0, base.stderr.decode()
    done, peak = peak_rss_mib(str(huge), "-o", str(tmp_path / "out.jsonl"), *args)
    assert done.returncode == 0, done.stderr.decode()
    # The row itself is held a few times over (its line, its parsed text, the row written out): some 50 MiB.
    # Tokenizing all 1.6 million words took over 2 GiB.
    assert base_peak > 30 and peak - base_peak < 300, (base_peak, peak)
    scored = read_rows(tmp_path / "out.jsonl")
    assert scored[1]["text"] == "word " * 1_600_000  # the row is written whole; only its reading is cut
    assert (scored[1]["predicted_truncated"], scored[1]["predicted_windows"]) == (True, 1)
    strict = main([str(huge), "-o", str(tmp_path / "strict.jsonl"), *args, "--no-truncate", "--on-bad-row", "skip"])
    assert strict == 0 and len(read_rows(tmp_path / "strict.jsonl")) == 1


def test_what_gave_tracebacks_is_a_bad_row_or_one_line(tiny_bundle, tmp_path, capsys):
    bundle = str(tiny_bundle("bert"))
    big = tmp_path / "big.csv"  # a field over the csv module's own limit, past the first rows
    big.write_text("text\n" + "fine\n" * 100 + '"' + "long " * 40_000 + '"\n')
    broken = tmp_path / "broken.csv"  # not UTF-8 past the first 8 KB
    broken.write_bytes(b"text\n" + b"fine text\n" * 1000 + b"\xff\xfe bad\nafter\n")
    lone = tmp_path / "lone.jsonl"
    lone.write_text('{"text": "ok"}\n{"text": "x\\ud800y"}\n')
    expected = {
        big: (0, None),
        broken: (5, f"bad row: {broken} row 1001: not UTF-8 text (line 1002)"),
        lone: (5, f"bad row: {lone} row 2: holds a lone UTF-16 surrogate (such as \\ud800): not valid Unicode"),
    }
    for source, (code, line) in expected.items():
        out = tmp_path / f"out-{source.name}.jsonl"
        assert main([str(source), "-o", str(out), "--bundle", bundle, "--progress", "off"]) == code
        err = capsys.readouterr().err
        assert "Traceback" not in err and (line is None or err.splitlines()[0] == line)
        assert not (tmp_path / f"{out.name}.parts").exists()
    assert read_rows(tmp_path / "out-big.csv.jsonl")[-1]["text"] == "long " * 40_000
    out = tmp_path / "limited.jsonl"
    assert main([str(big), "-o", str(out), "--bundle", bundle, "--max-row-bytes", "1000"]) == 4
    assert capsys.readouterr().err == f"error: {big}: line 102 is longer than 1,000 bytes (--max-row-bytes)\n"
    assert not out.exists() and not (tmp_path / "limited.jsonl.parts").exists()


def test_a_stray_quote_fails_the_run_instead_of_merging_records(tiny_bundle, tmp_path, capsys):
    source = tmp_path / "in.csv"
    source.write_text('id,text\n1,"oops\n2,two\n3,"three"\n4,four\n')
    out = tmp_path / "out.jsonl"
    assert main([str(source), "-o", str(out), "--bundle", str(tiny_bundle("bert")), "--progress", "off"]) == 5
    assert capsys.readouterr().err.splitlines()[0] == (
        f"bad row: {source} row 1: not valid CSV (lines 2 to 4): ',' expected after '\"'"
    )


def test_an_output_that_cannot_be_written_is_refused_before_the_bundle_is_read(tmp_path, capsys):
    source = write_rows(tmp_path / "in.jsonl", [{"text": "one"}])
    (tmp_path / "taken").mkdir()
    (tmp_path / "file").write_text("x")
    cases = {
        "taken": f"{tmp_path / 'taken'} is a directory; name the file to write",
        "file/out.jsonl": f"{tmp_path / 'file' / 'out.jsonl'}: {tmp_path / 'file'} is not a directory",
    }
    for name, message in cases.items():
        argv = [str(source), "-o", str(tmp_path / name), "--output-format", "jsonl", "--overwrite"]
        assert main([*argv, "--bundle", str(tmp_path / "no-bundle")]) == 4  # no bundle: nothing was scored
        assert capsys.readouterr().err == f"error: {message}\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "in.jsonl", "taken"]
    assert not any((tmp_path / "taken").iterdir())


def test_a_live_run_holds_its_output(tiny_bundle, tmp_path):
    """Run A reads standard input and waits for more; run B on the same output is refused whatever its flags,
    and A goes on to write its own rows."""
    bundle = str(tiny_bundle("bert"))
    out = tmp_path / "out.jsonl"
    parts = tmp_path / "out.jsonl.parts"
    require_serve_env()
    first = subprocess.Popen(
        [str(SERVE_PYTHON), "-m", "service.bulk", "-", "--format", "jsonl", "-o", str(out), "--bundle", bundle],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert first.stdin is not None
    first.stdin.write(b'{"text": "mine 1"}\n')
    first.stdin.flush()
    deadline = time.monotonic() + 120
    while not (parts / "run.json").exists() and time.monotonic() < deadline:  # A has its parts: locked
        time.sleep(0.01)
    other = write_rows(tmp_path / "other.jsonl", [{"text": "theirs"}])
    for flags in ([], ["--overwrite"], ["--resume"]):
        refused = bulk(str(other), "-o", str(out), "--bundle", bundle, *flags)
        assert refused.returncode == 4
        assert refused.stderr.decode() == (
            f"error: another run is writing {out} (it holds {parts} locked); let it finish or stop it first\n"
        )
    assert (parts / "run.json").exists()
    _, err = first.communicate(b'{"text": "mine 2"}\n', timeout=120)
    assert first.returncode == 0, err.decode()
    assert [row["text"] for row in read_rows(out)] == ["mine 1", "mine 2"]
    assert not parts.exists()
    again = bulk(str(other), "-o", str(out), "--bundle", bundle, "--overwrite")  # nobody holds it now
    assert again.returncode == 0 and [row["text"] for row in read_rows(out)] == ["theirs"]


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_a_missing_text_column_is_named_at_once(tiny_bundle, tmp_path, capsys, suffix):
    source = write_rows(tmp_path / f"in{suffix}", [{"id": "1", "body": "x"}] * 3)
    out = tmp_path / "out.jsonl"
    assert main([str(source), "-o", str(out), "--bundle", str(tiny_bundle("bert")), "--on-bad-row", "skip"]) == 2
    assert capsys.readouterr().err == (
        f"error: {source} has no column 'text', only 'id', 'body'; name the text's column with --text-column\n"
    )
    assert not out.exists() and not (tmp_path / "out.jsonl.parts").exists()


def test_an_unknown_output_suffix_names_the_output_flag(tiny_bundle, tmp_path, capsys):
    source = write_rows(tmp_path / "in.jsonl", [{"text": "one"}])
    assert main([str(source), "-o", str(tmp_path / "out.txt"), "--bundle", str(tiny_bundle("bert"))]) == 2
    assert capsys.readouterr().err == (
        f"error: {tmp_path / 'out.txt'}: cannot tell its format from its name; name it *.jsonl, *.csv or *.parquet "
        "or pass --output-format\n"
    )


def test_a_resumed_run_reports_its_own_rows_and_the_total(tiny_bundle, tmp_path):
    bundle = str(tiny_bundle("bert"))
    lines = b"".join(b'{"text": "text %d"}\n' % i for i in range(10))
    out = tmp_path / "out.jsonl"
    parts = tmp_path / "out.jsonl.parts"
    args = ["-", "--format", "jsonl", "-o", str(out), "--bundle", bundle, "--chunk-rows", "2"]
    require_serve_env()
    first = subprocess.Popen(
        [str(SERVE_PYTHON), "-m", "service.bulk", *args],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert first.stdin is not None
    first.stdin.write(lines[: lines.index(b'{"text": "text 4"}')])  # two chunks, then it waits for more
    first.stdin.flush()
    deadline = time.monotonic() + 120
    while not (parts / "part-000001.json").exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    first.kill()
    first.wait()
    resumed = bulk(*args, "--resume", "--progress", "off", stdin=lines)
    assert resumed.returncode == 0, resumed.stderr.decode()
    summary = resumed.stderr.decode().splitlines()[-1]
    assert re.fullmatch(
        r"scored 6 of 6 rows in 0:00:\d\d \([\d,]+ rows/s\) after resuming at row 5; in all 10 of 10 rows; "
        rf"0 bad rows skipped; 0 truncated; wrote {re.escape(str(out))}",
        summary,
    ), summary
    assert [row["text"] for row in read_rows(out)] == [f"text {i}" for i in range(10)]


def test_the_bundle_is_named_by_the_flag_or_by_BUNDLE(tiny_bundle, tmp_path, capsys, monkeypatch):
    """No default path: one relative to a directory would name a bundle only from there."""
    write_rows(tmp_path / "in.jsonl", [{"text": "one"}])
    argv = [str(tmp_path / "in.jsonl"), "-o", str(tmp_path / "out.jsonl")]
    monkeypatch.delenv("BUNDLE", raising=False)
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1].endswith("error: the following arguments are required: --bundle")
    monkeypatch.setenv("BUNDLE", str(tiny_bundle("bert")))
    assert main(argv) == 0
    assert [row["text"] for row in read_rows(tmp_path / "out.jsonl")] == ["one"]
