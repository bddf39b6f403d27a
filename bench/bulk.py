"""Bulk scoring benchmark: one file of mixed-length texts scored five ways, in one run.

- ``floor``: the same bundle in process, every text tokenized (in parallel), all of them sorted
  by length and run in the bulk command's token-budget batches: the best batching we know,
  with no file to read or write;
- ``bulk``: ``python -m service.bulk`` on the JSON Lines file, writing JSON Lines; its peak
  memory is measured on the whole file and on a tenth of it, to show it does not grow with rows;
- ``service``: the first ``--service-rows`` texts posted to our own service (``/predict``, 32
  texts a request, 8 requests in flight), as a user without the bulk command would;
- ``pytorch``: the original model as a user would run it (sentence-transformers ``encode`` with
  batches of 32, then the scikit-learn head), on the first ``--torch-rows`` texts;
- ``ray``: ``service.bulk.ray_data.BundleScorer`` over a Ray Dataset on a local Ray instance
  (Parquet in, Parquet out), on the first ``--ray-rows`` texts, start-up included.

Every figure is texts per second of wall-clock time. Run with ``bash bench/run-bulk.sh``, which
writes docs/benchmarks/bulk.json and bulk.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SERVE_PYTHON = ROOT / ".venv-serve" / "bin" / "python"
SEED = 7
REQUEST_TEXTS = 32
CONCURRENCY = 8


def texts(rows: int, seed: int = SEED) -> list[str]:
    """``rows`` distinct texts: 60% short queries, 30% of 2 to 8 queries, 10% of 20 to 60 (over the
    default model's 256 tokens, cut). Each ends in its number, so no two are the same."""
    from bench.workload import SHORT_TEXTS

    draw = random.Random(seed)
    found = []
    for number in range(rows):
        kind = draw.random()
        count = 1 if kind < 0.6 else draw.randint(2, 8) if kind < 0.9 else draw.randint(20, 60)
        found.append(" ".join(draw.choice(SHORT_TEXTS) for _ in range(count)) + f" ({number})")
    return found


def write_inputs(directory: Path, rows: int) -> tuple[Path, Path]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    all_texts = texts(rows)
    jsonl = directory / "texts.jsonl"
    with jsonl.open("w") as file:
        for number, text in enumerate(all_texts):
            file.write(json.dumps({"id": number, "text": text}) + "\n")
    parquet = directory / "texts.parquet"
    pq.write_table(pa.Table.from_pylist([{"id": i, "text": t} for i, t in enumerate(all_texts)]), parquet)
    return jsonl, parquet


def _read_texts(path: Path, rows: int | None = None) -> list[str]:
    with path.open() as file:
        return [json.loads(line)["text"] for line, _ in zip(file, range(rows or sys.maxsize))]


def floor(bundle: str, path: Path) -> dict:
    """In process (run in the serving environment): tokenize every text, sort, run in token-budget batches."""
    from service.bulk.scorer import batches
    from service.core.classifier import OnnxClassifier
    from service.settings import Settings

    settings = Settings()
    classifier = OnnxClassifier.from_bundle(bundle)
    classifier.run(classifier.encode(["warm up"]))
    all_texts = _read_texts(path)
    started = time.perf_counter()
    encoded = []
    for start in range(0, len(all_texts), 4096):
        encoded += classifier.encode(all_texts[start : start + 4096], off_loop=True)
    order = sorted(range(len(encoded)), key=lambda k: encoded[k].length)
    lengths = [encoded[k].length for k in order]
    for part in batches(lengths, settings.max_batch_tokens, settings.max_batch_size):
        classifier.run([encoded[k] for k in order[part]])
    return {"texts": len(all_texts), "seconds": time.perf_counter() - started}


def _timed_child(command: Sequence[str]) -> dict:
    """Wall-clock seconds and peak resident memory of one child process."""
    started = time.perf_counter()
    child = subprocess.Popen(command, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(child.pid, 0)
    seconds = time.perf_counter() - started
    error = child.stderr.read().decode() if child.stderr else ""
    if status:
        raise SystemExit(f"error: {' '.join(command[:4])} failed: {error[-2000:]}")
    return {"seconds": seconds, "peak_rss_mb": usage.ru_maxrss / 1024, "log": error.strip().splitlines()[-1:]}


def bulk(bundle: str, path: Path, out: Path, rows: int | None = None) -> dict:
    if rows is not None:  # the first ``rows`` rows only, in a file of their own
        part = path.with_name(f"first-{rows}.jsonl")
        with path.open() as source, part.open("w") as target:
            target.writelines(line for line, _ in zip(source, range(rows)))
        path = part
    command = [str(SERVE_PYTHON), "-m", "service.bulk", str(path), "-o", str(out), "--bundle", bundle]
    result = _timed_child([*command, "--progress", "off", "--overwrite"])
    return {"texts": sum(1 for _ in out.open()), **result}


async def _post_all(url: str, all_texts: list[str]) -> None:
    import httpx

    requests = [all_texts[i : i + REQUEST_TEXTS] for i in range(0, len(all_texts), REQUEST_TEXTS)]
    pending = iter(requests)

    async def client_loop(client: httpx.AsyncClient) -> None:
        for batch in pending:
            response = await client.post("/predict", json={"inputs": batch, "truncate": True})
            response.raise_for_status()

    async with httpx.AsyncClient(base_url=url, timeout=120) as client:
        await asyncio.gather(*(client_loop(client) for _ in range(CONCURRENCY)))


def service(bundle: str, path: Path, rows: int) -> dict:
    from bench.process import free_port, serving

    port = free_port()
    command = [str(SERVE_PYTHON), "-m", "service", "--bundle", bundle, "--port", str(port)]
    with serving(command, port, name="service") as server:
        all_texts = _read_texts(path, rows)
        started = time.perf_counter()
        asyncio.run(_post_all(server.url, all_texts))
        return {"texts": len(all_texts), "seconds": time.perf_counter() - started}


def pytorch(path: Path, rows: int) -> dict:
    """The original default model (run in the export environment), as a user scores a list with it."""
    import warnings

    import joblib
    from sentence_transformers import SentenceTransformer

    from export import default_model

    encoder = SentenceTransformer(str(default_model.body_path()), device="cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # head pickled by an older scikit-learn
        head = joblib.load(default_model.head_path())
    all_texts = _read_texts(path, rows)
    head.predict_proba(encoder.encode(all_texts[:64], batch_size=32))
    started = time.perf_counter()
    head.predict_proba(encoder.encode(all_texts, batch_size=32))
    return {"texts": len(all_texts), "seconds": time.perf_counter() - started}


def ray(bundle: str, parquet: Path, out: Path, rows: int) -> dict:
    """Ray Data on a local instance (run in the test environment, which has Ray), start-up included."""
    import pyarrow.parquet as pq
    import ray as ray_module

    part = parquet.with_name(f"first-{rows}.parquet")
    pq.write_table(pq.read_table(parquet).slice(0, rows), part)
    from service.bulk.ray_data import BundleScorer

    started = time.perf_counter()
    ray_module.init(include_dashboard=False, log_to_driver=False, runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}})
    ready = time.perf_counter() - started
    ray_module.data.read_parquet(str(part)).map_batches(
        BundleScorer,
        fn_constructor_kwargs={"bundle": bundle},
        batch_size=4096,
        batch_format="pyarrow",
        concurrency=1,
    ).write_parquet(str(out))
    seconds = time.perf_counter() - started
    ray_module.shutdown()
    return {"texts": pq.read_table(out).num_rows, "seconds": seconds, "startup_seconds": ready}


def _in(python: Path | str, mode: str, *args: str) -> dict:
    """One measurement in a process of its own (the right environment, nothing left over from another)."""
    done = subprocess.run(
        [str(python), "-m", "bench.bulk", mode, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    if done.returncode:
        raise SystemExit(f"error: {mode} failed: {done.stderr[-2000:]}")
    return json.loads(done.stdout.splitlines()[-1])


def _rate(result: dict) -> float:
    return round(result["texts"] / result["seconds"], 1)


def markdown(report: dict) -> str:
    floor_rate = report["results"]["floor"]["texts_per_s"]
    lines = [
        f"Bulk scoring, {report['rows']:,} texts of mixed length, bundle `{report['bundle']}`, on {report['machine']}.",
        "",
        "| path | texts | seconds | texts/s | of the floor |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, result in report["results"].items():
        lines.append(
            f"| {name} | {result['texts']:,} | {result['seconds']:.1f} | {result['texts_per_s']:,.0f} "
            f"| {result['texts_per_s'] / floor_rate:.0%} |"
        )
    memory = report["memory"]
    lines += [
        "",
        f"Peak memory of the bulk command: {memory['all_rows_mb']:.0f} MB for {report['rows']:,} rows, "
        f"{memory['tenth_mb']:.0f} MB for {report['rows'] // 10:,}.",
    ]
    return "\n".join(lines) + "\n"


def run(args: argparse.Namespace) -> int:
    from bench.report import machine

    bundle = str(Path(args.bundle).resolve())
    work = Path(tempfile.mkdtemp(prefix="bulk-bench-"))
    jsonl, parquet = write_inputs(work, args.rows)
    print(f"bulk bench: {args.rows:,} texts in {work}", file=sys.stderr, flush=True)
    results: dict[str, dict] = {}
    results["floor"] = _in(SERVE_PYTHON, "floor", "--bundle", bundle, "--input", str(jsonl))
    print(f"floor: {_rate(results['floor'])} texts/s", file=sys.stderr, flush=True)
    results["bulk"] = bulk(bundle, jsonl, work / "scored.jsonl")
    tenth = bulk(bundle, jsonl, work / "scored-tenth.jsonl", rows=args.rows // 10)
    print(f"bulk: {_rate(results['bulk'])} texts/s", file=sys.stderr, flush=True)
    results["service"] = service(bundle, jsonl, args.service_rows)
    print(f"service: {_rate(results['service'])} texts/s", file=sys.stderr, flush=True)
    if args.torch_rows:
        results["pytorch"] = _in(sys.executable, "pytorch", "--input", str(jsonl), "--rows", str(args.torch_rows))
        print(f"pytorch: {_rate(results['pytorch'])} texts/s", file=sys.stderr, flush=True)
    if args.ray_rows:
        ray_args = ["--bundle", bundle, "--input", str(parquet), "--rows", str(args.ray_rows)]
        results["ray"] = _in(sys.executable, "ray", *ray_args, "--out", str(work / "ray-out"))
        print(f"ray: {_rate(results['ray'])} texts/s", file=sys.stderr, flush=True)
    for result in results.values():
        result["texts_per_s"] = _rate(result)
    report = {
        "rows": args.rows,
        "bundle": args.bundle,
        "machine": machine(),
        "request_texts": REQUEST_TEXTS,
        "concurrency": CONCURRENCY,
        "results": results,
        "bulk_of_floor": round(results["bulk"]["texts_per_s"] / results["floor"]["texts_per_s"], 3),
        "memory": {"all_rows_mb": round(results["bulk"]["peak_rss_mb"], 1), "tenth_mb": round(tenth["peak_rss_mb"], 1)},
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown(report))
    print(markdown(report))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bulk", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="mode")
    whole = sub.add_parser("run", help="the whole benchmark (the default)")
    for part in (parser, whole):
        part.add_argument("--bundle", default="bundles/default")
        part.add_argument("--rows", type=int, default=100_000)
        part.add_argument("--service-rows", type=int, default=20_000)
        part.add_argument("--torch-rows", type=int, default=10_000, help="0 leaves PyTorch out")
        part.add_argument("--ray-rows", type=int, default=20_000, help="0 leaves Ray out")
        part.add_argument("--out", default="docs/benchmarks/bulk", help="writes OUT.json and OUT.md")
    for mode in ("floor", "pytorch", "ray"):
        one = sub.add_parser(mode)
        one.add_argument("--bundle", default="bundles/default")
        one.add_argument("--input", type=Path, required=True)
        one.add_argument("--rows", type=int, default=0)
        one.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    if args.mode == "floor":
        print(json.dumps(floor(args.bundle, args.input)))
    elif args.mode == "pytorch":
        print(json.dumps(pytorch(args.input, args.rows)))
    elif args.mode == "ray":
        print(json.dumps(ray(args.bundle, args.input, args.out, args.rows)))
    else:
        return run(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
