"""OpenVINO's weight compression (NNCF) beside ONNX Runtime's weight-only variants (MatMulNBits).

    .venv/bin/python -m bench.openvino_weights --variants DIR --bundle BUNDLE --name qwen2.5-0.5b
        [--rounds 3] [--texts 238] [--group-size 128] [--ir ov-int8-sym --ir ov-int4-asym] [--work DIR]

``--variants`` is a directory the export's ``--keep-variants`` wrote (``fp32.onnx``, ``int8.onnx``,
``int8-weights.onnx``, ``int4-weights.onnx``, some with ``.data`` external-data files) and ``--bundle``
a bundle exported from the same model (its tokenizer and ``bundle.json``).

From ``fp32.onnx`` OpenVINO IRs are built (``openvino.Core().read_model``, ``nncf.compress_weights``,
``openvino.save_model(..., compress_to_fp16=False)``), each in a child process so that its memory goes
back (the 0.5B shape's fp32 graph is 1.98 GB): ``ov-fp32`` uncompressed, ``ov-int8-asym`` (INT8_ASYM,
per channel) and ``ov-int4-sym-128`` (INT4_SYM, groups of 128 input channels, ratio 1.0, the layers NNCF
keeps out of int4 (embeddings, the last matrix product) in INT8_ASYM); ``--ir`` adds ``ov-int8-sym``
and ``ov-int4-asym``.

Every candidate, the ONNX Runtime variants present (``fp32``, ``int8``, ``int8-weights``,
``int4-weights``) and the IRs, is loaded in a fresh process the way the service loads it
(``OnnxRuntimeBackend(path, variant=...)``, ``OpenVinoBackend(path, precision="bf16")``, which settles
on f32 where the CPU has no bf16 units, behind ``OnnxClassifier`` with the bundle's tokenizer, warmed
up by ``service.core.loading.warm_up``), and measured: size on disk (graph and data, or xml and bin),
resident memory once loaded, after use (VmRSS) and at its peak (VmHWM), seconds to load, batch-1
latency (median over single short texts), batch-8 throughput (both timed on a second pass over the same
texts: OpenVINO prepares kernels per new input shape), the precision the engine reports, and
fidelity on the built-in validation texts (``export.texts.builtin_texts``): top-1 agreement and
max |Δp| as the export's gate measures them (``service.core.gate.compare``) against the logits of
ONNX Runtime on the fp32 graph. That graph stands for the PyTorch original: the export's gate verified
it within 1e-5 logits of it, and this needs neither torch nor the checkpoint.

The candidates take turns: ``--rounds`` rounds, each one fresh process per candidate, in an order
rotated each round so a drift of a noisy machine's speed falls on all alike; timings and memory are the
medians over rounds, fidelity comes from the first. A Markdown table and the CPU's flags go to stdout,
the results to ``docs/benchmarks/openvino_weights-NAME.json`` (``--out`` to change).

NNCF is needed here only (requirements-export.txt); the service never imports it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
ONNXRUNTIME_VARIANTS = ("fp32", "int8", "int8-weights", "int4-weights")
REFERENCE = "fp32"
WEIGHTS = {
    "fp32": "fp32",
    "int8": "int8 dynamic (QDQ, per channel)",
    "int8-weights": "int8 MatMulNBits",
    "int4-weights": "int4 MatMulNBits",
    "ov-fp32": "fp32",
    "ov-int8-asym": "NNCF int8 asym, per channel",
    "ov-int8-sym": "NNCF int8 sym, per channel",
    "ov-int4-sym": "NNCF int4 sym, groups of {group} (int8 asym backup)",
    "ov-int4-asym": "NNCF int4 asym, groups of {group} (int8 asym backup)",
}
DEFAULT_IRS = ("ov-fp32", "ov-int8-asym", "ov-int4-sym")
OPTIONAL_IRS = ("ov-int8-sym", "ov-int4-asym")
SINGLES = 20  # short texts timed one at a time, per process
BATCHES = 5  # batches of 8 short texts timed, per process
BATCH = 8

_CHILD = "import sys, json; from bench import openvino_weights as m; getattr(m, sys.argv[1])(*json.loads(sys.argv[2]))"


@dataclass(frozen=True)
class Candidate:
    name: str
    engine: str  # onnxruntime or openvino
    path: Path
    weights: str

    @property
    def files(self) -> list[Path]:
        if self.engine == "openvino":
            return [self.path, self.path.with_suffix(".bin")]
        data = self.path.with_name(self.path.name + ".data")
        return [self.path, data] if data.exists() else [self.path]

    @property
    def size(self) -> int:
        return sum(path.stat().st_size for path in self.files)


def _status(key: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(key):
                return int(line.split()[1]) * 1024
    return 0


def _run_child(function: str, *args: Any, timeout: float | None = None) -> dict[str, Any]:
    """``function`` of this module in a fresh interpreter; the JSON it prints last, or the error it died of."""
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, function, json.dumps(args)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=timeout,
    )
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines() or [f"exit code {done.returncode}"]
        return {"error": lines[-1]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def build_ir(source: str, target: str, name: str, group_size: int) -> None:
    """Child: the IR ``name`` of the ONNX graph ``source``, written to ``target`` (xml, bin beside it)."""
    import openvino as ov

    started = time.perf_counter()
    model = ov.Core().read_model(source)
    if name != "ov-fp32":
        import nncf

        modes = {
            "ov-int8-asym": nncf.CompressWeightsMode.INT8_ASYM,
            "ov-int8-sym": nncf.CompressWeightsMode.INT8_SYM,
            "ov-int4-sym": nncf.CompressWeightsMode.INT4_SYM,
            "ov-int4-asym": nncf.CompressWeightsMode.INT4_ASYM,
        }
        mode = modes[name]
        if "int4" in name:
            # ratio 1.0: every layer NNCF may put in int4 is; the rest (embeddings, last layer) int8 asym.
            model = nncf.compress_weights(
                model, mode=mode, group_size=group_size, ratio=1.0, backup_mode=nncf.BackupMode.INT8_ASYM
            )
        else:
            model = nncf.compress_weights(model, mode=mode)  # per output channel
    ov.save_model(model, target, compress_to_fp16=False)
    print(json.dumps({"build_s": round(time.perf_counter() - started, 2), "build_peak": _status("VmHWM:")}))


def measure_here(engine: str, path: str, variant: str, bundle: str, texts: int) -> None:
    """Child: load ``path`` as the service does, time it on short texts and, with ``texts``, print the logits
    of that many validation texts."""
    from export.texts import IN_DOMAIN, builtin_texts
    from service.core.backends.base import Backend
    from service.core.classifier import NoTokens, OnnxClassifier
    from service.core.loading import warm_up
    from service.core.manifest import TOKENIZER_FILE, read_manifest

    manifest = read_manifest(Path(bundle))
    before = _status("VmRSS:")
    started = time.perf_counter()
    backend: Backend
    if engine == "openvino":
        from service.core.backends.openvino_backend import OpenVinoBackend

        backend = OpenVinoBackend(Path(path), precision="bf16")
    else:
        from service.core.backends.onnxruntime_backend import OnnxRuntimeBackend

        backend = OnnxRuntimeBackend(Path(path), variant=variant)
    classifier = OnnxClassifier(Path(path), Path(bundle) / TOKENIZER_FILE, manifest, backend=backend)
    load_s = time.perf_counter() - started
    loaded = _status("VmRSS:")
    warm_up(classifier)
    short = classifier.encode(IN_DOMAIN[: SINGLES + BATCH * BATCHES])
    singles = [[item] for item in short[:SINGLES]]
    batches = [short[SINGLES + BATCH * i : SINGLES + BATCH * (i + 1)] for i in range(BATCHES)]
    # The timed pass runs shapes seen once before, as a serving process's are: OpenVINO prepares kernels
    # for each new input shape, and that first-time cost would otherwise be most of what is timed.
    for batch in singles + batches:
        classifier.run(batch)
    one = []
    for batch in singles:
        t = time.perf_counter()
        classifier.run(batch)
        one.append(time.perf_counter() - t)
    eight = []
    for batch in batches:
        t = time.perf_counter()
        classifier.run(batch)
        eight.append(time.perf_counter() - t)
    figures: dict[str, Any] = {
        "precision": backend.precision,
        "engine": backend.describe(),
        "load_s": load_s,
        "rss_before": before,
        "rss_loaded": loaded,
        "rss_after": _status("VmRSS:"),
        "rss_peak": _status("VmHWM:"),
        "batch1_ms": 1000 * statistics.median(one),
        "batch8_texts_per_s": BATCH / statistics.median(eight),
    }
    if texts:
        kept = []
        for text in builtin_texts()[:texts]:
            try:
                classifier.encode([text])
            except NoTokens:  # "" for a decoder without BOS: the export skips it too
                continue
            kept.append(text)
        figures["logits"] = classifier.logits(kept).tolist()
    print(json.dumps(figures))


def candidates(variants: Path, irs: dict[str, Path], group_size: int) -> list[Candidate]:
    found = [
        Candidate(name, "onnxruntime", variants / f"{name}.onnx", WEIGHTS[name])
        for name in ONNXRUNTIME_VARIANTS
        if (variants / f"{name}.onnx").exists()
    ]
    for name, path in irs.items():
        kind = name.removesuffix(f"-{group_size}") if "int4" in name else name
        found.append(Candidate(name, "openvino", path, WEIGHTS[kind].format(group=group_size)))
    return found


def ir_name(kind: str, group_size: int) -> str:
    return f"{kind}-{group_size}" if "int4" in kind else kind


def fidelity(reference: list[list[float]] | None, logits: list[list[float]] | None, problem_type: str) -> dict:
    import numpy as np

    from service.core.gate import compare

    if reference is None or logits is None:
        return {"agreement": None, "max_prob_diff": None, "max_logit_diff": None, "texts": 0}
    report = compare("candidate", np.array(reference), np.array(logits), problem_type)
    return {
        "agreement": report.agreement,
        "max_prob_diff": report.max_prob_diff,
        "max_logit_diff": report.max_logit_diff,
        "texts": len(reference),
    }


def summarize(candidate: Candidate, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The medians of a candidate's rounds (rounds that failed are counted, not averaged)."""
    good = [run for run in runs if "error" not in run]
    row: dict[str, Any] = {
        "candidate": candidate.name,
        "engine": candidate.engine,
        "file": candidate.path.name,
        "weights": candidate.weights,
        "size": candidate.size,
        "rounds": len(good),
    }
    if not good:
        return {**row, "error": runs[0]["error"]}
    for key in ("load_s", "rss_loaded", "rss_after", "rss_peak", "batch1_ms", "batch8_texts_per_s"):
        row[key] = statistics.median(run[key] for run in good)
    row["precision"] = good[0]["precision"]
    row["described"] = good[0]["engine"]
    if len(good) < len(runs):
        row["failed_rounds"] = [run["error"] for run in runs if "error" in run]
    return row


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| candidate | engine | precision | weights | size MB | RSS loaded MB | RSS after MB | peak MB | load s | "
        "batch-1 ms | batch-8 texts/s | agreement | max abs Δp |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        head = f"| {row['candidate']} | {row['engine']} | {row.get('precision', '')} | {row['weights']} | "
        head += f"{row['size'] / 1e6:.1f} | "
        if "error" in row:
            lines.append(head + f"{row['error']} | | | | | | | |")
            continue
        agreement = "" if row["agreement"] is None else f"{row['agreement']:.2%}"
        diff = "" if row["max_prob_diff"] is None else f"{row['max_prob_diff']:.4f}"
        lines.append(
            head + f"{row['rss_loaded'] / 1e6:.0f} | {row['rss_after'] / 1e6:.0f} | {row['rss_peak'] / 1e6:.0f} | "
            f"{row['load_s']:.2f} | {row['batch1_ms']:.2f} | {row['batch8_texts_per_s']:.1f} | {agreement} | {diff} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", type=Path, required=True, help="a directory written by --keep-variants")
    parser.add_argument("--bundle", type=Path, required=True, help="a bundle exported from the same model")
    parser.add_argument("--name", help="names the results file (default: the bundle directory's name)")
    parser.add_argument("--out", type=Path, help="the results (default: docs/benchmarks/openvino_weights-NAME.json)")
    parser.add_argument("--work", type=Path, help="where the IRs are written and kept (default: a temporary dir)")
    parser.add_argument("--rounds", type=int, default=3, help="fresh processes per candidate (default: 3)")
    parser.add_argument("--note", default="", help="what else ran on the machine, kept with the results")
    parser.add_argument("--texts", type=int, default=0, help="validation texts for fidelity (default: all)")
    parser.add_argument("--group-size", type=int, default=128, help="int4 groups (default: 128)")
    parser.add_argument("--ir", action="append", choices=OPTIONAL_IRS, default=[], help="another IR to build")
    args = parser.parse_args()
    from export.texts import builtin_texts
    from service.core.manifest import read_manifest
    from service.core.reverify import cpu_flags

    if not (args.variants / f"{REFERENCE}.onnx").exists():
        parser.error(f"{args.variants} has no {REFERENCE}.onnx: the IRs are built from it and fidelity measured to it")
    manifest = read_manifest(args.bundle)
    name = args.name or args.bundle.resolve().name
    out = args.out or ROOT / "docs" / "benchmarks" / f"openvino_weights-{name}.json"
    texts = args.texts or len(builtin_texts())
    temporary = None if args.work else tempfile.TemporaryDirectory(prefix="openvino_weights.")
    work = args.work or Path(temporary.name)  # type: ignore[union-attr]
    work.mkdir(parents=True, exist_ok=True)
    try:
        irs: dict[str, Path] = {}
        builds: dict[str, dict[str, Any]] = {}
        for kind in (*DEFAULT_IRS, *args.ir):
            ir = ir_name(kind, args.group_size)
            target = work / f"{ir}.xml"
            print(f"building {ir}", file=sys.stderr)
            built = _run_child("build_ir", str(args.variants / f"{REFERENCE}.onnx"), str(target), kind, args.group_size)
            builds[ir] = built
            if "error" in built:
                print(f"{ir}: {built['error']}", file=sys.stderr)
            else:
                irs[ir] = target
        pool = candidates(args.variants, irs, args.group_size)
        runs: dict[str, list[dict[str, Any]]] = {c.name: [] for c in pool}
        logits: dict[str, list[list[float]] | None] = {}
        for round_ in range(args.rounds):
            shift = round_ % len(pool)
            for candidate in pool[shift:] + pool[:shift]:
                print(f"round {round_ + 1} of {args.rounds}: {candidate.name}", file=sys.stderr)
                variant = candidate.name if candidate.engine == "onnxruntime" else ""
                scored = texts if round_ == 0 else 0  # fidelity once: the logits do not change between rounds
                run = _run_child(
                    "measure_here", candidate.engine, str(candidate.path), variant, str(args.bundle), scored
                )
                if not round_:
                    logits[candidate.name] = run.pop("logits", None)
                runs[candidate.name].append(run)
        rows = []
        for candidate in pool:
            row = summarize(candidate, runs[candidate.name])
            row.update(fidelity(logits.get(REFERENCE), logits.get(candidate.name), manifest.problem_type))
            if candidate.name in builds:
                row.update(builds[candidate.name])
            rows.append(row)
    finally:
        if temporary is not None:
            temporary.cleanup()
    failed_builds = {ir: built["error"] for ir, built in builds.items() if "error" in built}
    results = {
        "name": name,
        "variants": str(args.variants),
        "bundle": str(args.bundle),
        "variant_served": manifest.variant,
        "max_length": manifest.max_length,
        "cpu_flags": cpu_flags(),
        "cores": os.cpu_count(),
        "note": args.note,
        "rounds": args.rounds,
        "group_size": args.group_size,
        "reference": f"onnxruntime on {REFERENCE}.onnx (the export's gate verified it against the original)",
        "failed_builds": failed_builds,
        "candidates": rows,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"{name}: CPU flags {' '.join(results['cpu_flags'])}; {results['cores']} cores; {args.rounds} rounds")
    print(table(rows))
    for ir, error in failed_builds.items():
        print(f"{ir} not built: {error}")
    print(f"results: {out}")


if __name__ == "__main__":
    main()
