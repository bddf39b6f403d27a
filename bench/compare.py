"""Ours against two baselines, back to back on this machine: the load report.

    bash bench/run-loadtest.sh        # everything, into docs/benchmarks/report.{md,json,png}

Every server is started first and stays up; then each level is measured in
``--rounds`` slices, and every round gives each server (and the in-process floor,
bench/floor.py) one slice in turn, in a rotating order. A drift of this shared
machine's speed over the minutes of a run then falls on all of them alike,
rather than on whichever server happened to run during it. The servers:

- ``ours``: ``python -m service`` with its default settings, response cache off;
- ``naive``: bench/naive_server.py, FastAPI and one ``session.run`` per request;
- ``pytorch``: bench/torch_server.py, the original model (the default model only);
- ``ours-cache``: ours with ``CACHE_SIZE``, for the repeating workload only;
- ``ours-shadow``: ours serving a repository whose model has a shadow version
  (``SHADOW_FRACTION`` of ``--shadow-fraction``; the shadow is a copy of the same
  bundle, so it costs what a retrained candidate of the same architecture would),
  on the short workload at ``--shadow-concurrency``;
- ``ours-onnxruntime``: ours with ``ENGINE=onnxruntime``, on the short workload, when ours runs
  another engine (``ENGINE=auto`` picked OpenVINO): the engines side by side, with an in-process
  floor for each;
- ``wire``: bench/wire_floor.py, which answers at once: the bare round trip, at concurrency 1.

Workloads, each a fresh seeded mix, so every server gets the same texts:

- ``short``: single short queries at each ``--concurrency`` (the main figures);
- ``long-mix``: ``--long-fraction`` of texts cut at the max length, the rest
  short, at ``--mixed-concurrency``; the short queries' p50/p99 kept apart;
- ``repeat``: short queries drawn from ``--distinct`` texts at
  ``--cache-concurrency``, against ours without and with the cache;
- ``document-mix``: ``--document-fraction`` of whole documents (1,000 to 5,000
  tokens, ``windows: true``), the rest short, at ``--mixed-concurrency``, ours
  only (no baseline reads a document whole); its short queries' p99 against the
  ``short`` workload's at the same concurrency;
- ``documents``: whole documents only at ``--document-concurrency``: windows per
  second, against the in-process floor's for the same documents.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from bench.floor import summarize as summarize_floor
from bench.load import LevelResult, Samples, collect, exit_code, levels_arg, summarize
from bench.plot import plot
from bench.process import free_port, start, stop
from bench.report import COMMAND, Report, ServerRun, machine, markdown, to_json
from bench.workload import Mix

ROOT = Path(__file__).resolve().parents[1]
# A pause before each slice: threads of the server measured last (PyTorch's OpenMP pool,
# ONNX Runtime's) may still spin for a moment and would take the cores from the next one.
SETTLE_SECONDS = 0.5
# ONNX Runtime's usage telemetry is off in ours (service/__init__.py) and read when onnxruntime
# is imported; the naive server gets the same, so its uploader thread is not part of the comparison.
BASELINE_ENV = {"naive": {"ORT_DISABLE_TELEMETRY": "1"}}
SERVE_PYTHON = ROOT / ".venv-serve" / "bin" / "python"
SERVERS = ("ours", "naive", "pytorch")
SHADOWED = "classifier"  # the model name in the shadow run's repository


@dataclass(frozen=True)
class Workload:
    name: str
    concurrency: list[int]
    long_fraction: float = 0.0
    distinct: int = 0
    document_fraction: float = 0.0

    def mix(self) -> Mix:
        return Mix(long_fraction=self.long_fraction, distinct=self.distinct, document_fraction=self.document_fraction)


def server_names(text: str) -> list[str]:
    names = [part.strip() for part in text.split(",") if part.strip()]
    unknown = sorted(set(names) - set(SERVERS))
    if unknown or "ours" not in names:
        raise ValueError(text)
    return names


def add_arguments(parser) -> None:
    parser.add_argument("--bundle", default="bundles/default")
    parser.add_argument("--out", default="docs/benchmarks", help="directory for report.md, report.json and report.png")
    parser.add_argument(
        "--servers",
        type=server_names,
        default=list(SERVERS),
        help="comma-separated, ours always included: ours,naive,pytorch",
    )
    parser.add_argument(
        "--concurrency", type=levels_arg, default=[1, 8, 32, 128], help="closed-loop levels, e.g. 1,8,32"
    )
    parser.add_argument(
        "--long-fraction", type=float, default=0.1, help="share of long texts in the long-mix level; 0 skips it"
    )
    parser.add_argument("--mixed-concurrency", type=int, default=32, help="concurrency of the long-mix level")
    parser.add_argument("--cache-size", type=int, default=1024, help="CACHE_SIZE of the labelled cache run; 0 skips it")
    parser.add_argument("--distinct", type=int, default=32, help="distinct texts in the repeating workload")
    parser.add_argument(
        "--cache-concurrency", type=levels_arg, default=[1, 32], help="levels of the repeating workload"
    )
    parser.add_argument(
        "--shadow-fraction", type=float, default=0.1, help="SHADOW_FRACTION of the shadow-version run; 0 skips it"
    )
    parser.add_argument(
        "--shadow-concurrency", type=levels_arg, default=[1, 32], help="levels of the shadow-version run"
    )
    parser.add_argument(
        "--document-fraction",
        type=float,
        default=0.1,
        help="share of whole documents in the document-mix level; 0 skips the document runs",
    )
    parser.add_argument("--document-concurrency", type=int, default=4, help="concurrency of the documents-only level")
    parser.add_argument(
        "--rounds", type=int, default=5, help="slices each level's --duration is cut into, the servers taking turns"
    )
    parser.add_argument("--report-command", default=COMMAND, help="the command the report names as its source")
    parser.add_argument(
        "--no-engines",
        dest="engines",
        action="store_false",
        help="leave out ours on ONNX Runtime beside ours on the engine ENGINE=auto picks",
    )


def plan(args) -> list[tuple[str, str, dict[str, str], list[Workload]]]:
    """(name, which server, extra environment, workloads), in the order they start."""
    common = [Workload("short", args.concurrency)]
    if args.long_fraction:
        common.append(Workload("long-mix", [args.mixed_concurrency], long_fraction=args.long_fraction))
    repeat = [Workload("repeat", args.cache_concurrency, distinct=args.distinct)] if args.cache_size else []
    documents = []
    if args.document_fraction:
        documents = [
            Workload("document-mix", [args.mixed_concurrency], document_fraction=args.document_fraction),
            Workload("documents", [args.document_concurrency], document_fraction=1.0),
        ]
    runs = [
        ("wire", "wire", {}, [Workload("short", [1])]),
        ("ours", "ours", {"CACHE_SIZE": "0"}, common + repeat + documents),
    ]
    runs += [(name, name, BASELINE_ENV.get(name, {}), common) for name in SERVERS[1:] if name in args.servers]
    if repeat:
        runs.append(("ours-cache", "ours", {"CACHE_SIZE": str(args.cache_size)}, repeat))
    if args.engines and auto_engine(Path(args.bundle)) != "onnxruntime":
        ort = {"CACHE_SIZE": "0", "ENGINE": "onnxruntime"}
        runs.insert(2, ("ours-onnxruntime", "ours", ort, [Workload("short", args.concurrency)]))
    if args.shadow_fraction:
        shadowed = {"CACHE_SIZE": "0", "SHADOW": f"{SHADOWED}:2", "SHADOW_FRACTION": str(args.shadow_fraction)}
        runs.append(("ours-shadow", "ours-shadow", shadowed, [Workload("short", args.shadow_concurrency)]))
    return runs


def auto_engine(bundle: Path) -> str:
    """The engine ENGINE=auto runs the bundle on, here (the rule alone, no load)."""
    from service.core.backends.choice import choose, installed_openvino
    from service.core.cpu import cpu_flags
    from service.core.manifest import read_manifest

    return choose("auto", read_manifest(bundle), cpu_flags(), installed_openvino()).engine


def shadow_repository(bundle: Path) -> Path:
    """A repository whose model serves ``bundle`` as version 1 and holds a copy of it as version 2."""
    root = Path(tempfile.mkdtemp(prefix="shadow-repository-"))
    for version in ("1", "2"):
        shutil.copytree(bundle, root / SHADOWED / version)
    return root


def _serve_python() -> str:
    return str(SERVE_PYTHON if SERVE_PYTHON.exists() else sys.executable)


def command(server: str, bundle: Path, port: int, repository: Path | None = None) -> list[str]:
    return {
        "ours": [_serve_python(), "-m", "service", "--bundle", str(bundle)],
        "ours-shadow": [_serve_python(), "-m", "service", "--repository", str(repository)],
        "naive": [sys.executable, "-m", "bench.naive_server", "--bundle", str(bundle)],
        "pytorch": [sys.executable, "-m", "bench.torch_server"],
        "wire": [_serve_python(), "-m", "bench.wire_floor"],
    }[server] + ["--port", str(port)]


def _rss_mb(pid: int) -> float:
    import psutil

    process = psutil.Process(pid)
    return sum(p.memory_info().rss for p in [process, *process.children(recursive=True)]) / 1e6


def _env(extra: dict[str, str]) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), **extra}


@dataclass
class Started:
    name: str
    proc: subprocess.Popen
    url: str
    cold_start_s: float
    idle_rss_mb: float
    workloads: list[Workload]
    info: dict | None = None  # ours' /info: the engine and its re-verification


def start_server(name: str, server: str, extra_env: dict[str, str], workloads: list[Workload], args) -> Started:
    port = free_port()
    started = time.perf_counter()
    running = start(
        command(server, Path(args.bundle), port, args.shadow_repository), port, env=extra_env, name=f"{name} server"
    )
    cold = time.perf_counter() - started
    time.sleep(1.0)
    idle = _rss_mb(running.process.pid)
    print(f"{name}: ready in {cold:.2f} s, idle RSS {idle:.0f} MB", file=sys.stderr, flush=True)
    info = httpx.get(running.url + "/info", timeout=30).json() if server == "ours" else None
    return Started(name, running.process, running.url, round(cold, 2), round(idle, 1), workloads, info)


def interleave(servers: list[Started], args) -> tuple[dict[str, list[dict]], dict[str, dict[str, dict[int, Samples]]]]:
    """Every level of every workload, in ``args.rounds`` rounds of one slice per server (and one floor slice
    per engine: ``auto``, and ``onnxruntime`` when ours-onnxruntime runs)."""
    levels = list(dict.fromkeys((w.name, c) for s in servers for w in s.workloads for c in w.concurrency))
    samples = {s.name: {w.name: {c: Samples() for c in w.concurrency} for w in s.workloads} for s in servers}
    mixes = {(s.name, w.name): w.mix() for s in servers for w in s.workloads}  # each server: the same texts
    slice_seconds = args.duration / args.rounds
    engines = ["auto"] + (["onnxruntime"] if any(s.name == "ours-onnxruntime" for s in servers) else [])
    floor: dict[str, list[dict]] = {engine: [] for engine in engines}
    for index in range(args.rounds):
        print(f"round {index + 1} of {args.rounds}", file=sys.stderr, flush=True)
        for engine in engines[index % len(engines) :] + engines[: index % len(engines)]:
            time.sleep(SETTLE_SECONDS)
            floor[engine].append(measure_floor(Path(args.bundle), slice_seconds, engine))
        for workload, concurrency in levels:
            taking_part = [s for s in servers if concurrency in samples[s.name].get(workload, {})]
            shift = index % len(taking_part)
            for server in taking_part[shift:] + taking_part[:shift]:
                time.sleep(SETTLE_SECONDS)
                samples[server.name][workload][concurrency].add(
                    collect(
                        server.url,
                        concurrency=concurrency,
                        duration=slice_seconds,
                        max_requests=args.max_requests,
                        mix=mixes[server.name, workload],
                        pid=server.proc.pid,
                    )
                )
    return floor, samples


def _results(levels: dict[str, dict[int, Samples]]) -> dict[str, list[LevelResult]]:
    results = {}
    for workload, by_level in levels.items():
        results[workload] = [summarize(samples, concurrency=c) for c, samples in by_level.items()]
        for result in results[workload]:
            print(
                f"  {workload} concurrency {result.level:g}: {result.throughput:.1f} req/s, "
                f"p50 {result.p50_ms:.2f} ms, errors {result.errors}",
                file=sys.stderr,
                flush=True,
            )
    return results


def measure_floor(bundle: Path, duration: float, engine: str = "auto") -> dict:
    """One slice of the in-process floor (raw samples) on ``engine``, in a process of its own."""
    proc = subprocess.run(
        [
            _serve_python(),
            "-m",
            "bench.floor",
            "--bundle",
            str(bundle),
            "--duration",
            str(duration),
            "--engine",
            engine,
            "--raw",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=_env({}),
    )
    if proc.returncode:
        raise SystemExit(f"error: the in-process floor failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout)


def _check_pytorch_model(args, manifest: dict) -> None:
    from export.default_model import MODEL_ID

    if "pytorch" in args.servers and manifest["model_id"] != MODEL_ID:
        raise SystemExit(
            f"error: the PyTorch baseline serves the built-in default model only, and {args.bundle} "
            f"holds {manifest['model_id']}; pass --servers ours,naive"
        )


def compare(args) -> int:
    bundle = Path(args.bundle)
    if not (bundle / "bundle.json").is_file():
        raise SystemExit(f"error: no bundle at {bundle}; run 'python -m export' first")
    manifest = json.loads((bundle / "bundle.json").read_text())
    _check_pytorch_model(args, manifest)
    servers: list[Started] = []
    args.shadow_repository = shadow_repository(bundle) if args.shadow_fraction else None
    try:
        for name, kind, env, workloads in plan(args):
            servers.append(start_server(name, kind, env, workloads, args))
        floor_slices, samples = interleave(servers, args)
        infos = {server.name: server.info for server in servers if server.info is not None}
    finally:
        stop(*(server.proc for server in servers))
        if args.shadow_repository is not None:
            shutil.rmtree(args.shadow_repository, ignore_errors=True)
    floor = summarize_floor(floor_slices["auto"])
    engines = {}
    if "onnxruntime" in floor_slices:
        engines = {
            "floors": {"auto": floor, "onnxruntime": summarize_floor(floor_slices["onnxruntime"])},
            "info": {
                name: {"engine": info["engine"], "reverification": info["reverification"]}
                for name, info in infos.items()
            },
        }
    print(
        f"in-process: p50 {floor['single_p50_ms']} ms, {floor['batch_texts_per_s']} texts/s in batches",
        file=sys.stderr,
        flush=True,
    )
    runs = {}
    for server in servers:
        print(f"{server.name}:", file=sys.stderr, flush=True)
        runs[server.name] = ServerRun(
            server.name, server.cold_start_s, server.idle_rss_mb, _results(samples[server.name])
        )
    floor["wire_p50_ms"] = runs.pop("wire").levels[0].p50_ms
    report = Report(
        machine=machine(), manifest=manifest, settings=_settings(args), floor=floor, runs=runs, engines=engines
    )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    text = markdown(report)
    (out / "report.md").write_text(text, encoding="utf-8")
    (out / "report.json").write_text(json.dumps(to_json(report), indent=2) + "\n", encoding="utf-8")
    plot(report, out / "report.png")
    print(text)
    return exit_code([level for run in runs.values() for level in run.levels])


def _settings(args) -> dict:
    names = (
        "duration",
        "rounds",
        "concurrency",
        "long_fraction",
        "mixed_concurrency",
        "cache_size",
        "distinct",
        "cache_concurrency",
        "shadow_fraction",
        "shadow_concurrency",
        "document_fraction",
        "document_concurrency",
        "servers",
        "report_command",
    )
    return {name: getattr(args, name) for name in names}
