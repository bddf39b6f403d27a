"""The engines side by side, in process: speed, fidelity, and answers that move with the batch.

    .venv/bin/python -m bench.engines --bundle bundles/default      # docs/benchmarks/engines.{md,json}

For each engine the bundle can run here (ONNX Runtime on ``model.onnx``; OpenVINO on ``openvino.onnx``
in bf16 where the CPU has bf16 units, else f32), in interleaved rounds so that a drift of this shared
machine's speed falls on all of them alike:

- batch 1: ms per short query (run only, texts tokenized up front), median;
- batch 32: texts per second over the reference set's texts sorted by length, in batches of 32;
- OpenVINO with two batches in flight (two streams of one thread each, two calling threads), against
  one batch at a time: whether a second batch in flight pays on this CPU;
- fidelity on the reference set: agreement and max |Δp| with the original model, as the gate measures;
- batch dependence: labels of the reference set that differ between one text at a time and batches of 32.

No timings feed the engine choice (service.core.backends.choice): this only reports.
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from bench.report import machine
from service.core.classifier import Encoded, OnnxClassifier
from service.core.gate import compare
from service.core.loading import load_classifier
from service.core.manifest import load_verified
from service.core.scoring import probabilities

BATCH = 32


def _engines(bundle: Path) -> dict[str, OnnxClassifier]:
    manifest = load_verified(bundle)
    found = {"onnxruntime": load_classifier(bundle, manifest, engine="onnxruntime").classifier}
    if manifest.engines.get("openvino"):
        found["openvino"] = load_classifier(bundle, manifest, engine="openvino").classifier
    return found


def _batches(classifier: OnnxClassifier, encoded: Sequence[Encoded]) -> list[dict[str, np.ndarray]]:
    ordered = sorted(encoded, key=lambda item: item.length)
    return [classifier.feeds(ordered[start : start + BATCH]) for start in range(0, len(ordered), BATCH)]


def batch1_ms(classifier: OnnxClassifier, encoded: Sequence[Encoded], seconds: float) -> list[float]:
    timings: list[float] = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        feeds = classifier.feeds([encoded[len(timings) % len(encoded)]])
        started = time.perf_counter()
        classifier.backend.run(feeds)
        timings.append((time.perf_counter() - started) * 1000)
    return timings


def batched(run: Callable[[dict[str, np.ndarray]], object], batches: list[dict], seconds: float) -> float:
    """Texts per second, running ``batches`` over and over for ``seconds``."""
    texts = 0
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        for feeds in batches:
            run(feeds)
            texts += len(feeds["input_ids"])
    return texts / (time.perf_counter() - started)


def two_in_flight(bundle: Path, batches: list[dict], seconds: float) -> float:
    """OpenVINO's texts per second with two streams and two batches in flight at once."""
    import openvino as ov

    from service.core.cpu import BF16_FLAGS, cpu_flags

    core = ov.Core()
    precision = "bf16" if set(BF16_FLAGS) & set(cpu_flags()) else "f32"
    compiled = core.compile_model(
        core.read_model(str(bundle / "openvino.onnx")),
        "CPU",
        {"INFERENCE_PRECISION_HINT": precision, "PERFORMANCE_HINT": "THROUGHPUT", "NUM_STREAMS": 2},
    )
    rates: list[float] = []

    def worker(part: list[dict]) -> None:
        request = compiled.create_infer_request()
        rates.append(batched(request.infer, part, seconds))

    halves = [batches[0::2], batches[1::2]]
    threads = [threading.Thread(target=worker, args=(half,)) for half in halves]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(rates)


def fidelity(classifier: OnnxClassifier, texts: list, expected: np.ndarray, problem_type: str) -> dict:
    name = "int8" if classifier.backend.name == "onnxruntime" else f"openvino-{classifier.backend.precision}"
    alone = np.concatenate([classifier.logits([text]) for text in texts])
    together = classifier.logits(texts, batch_size=BATCH)
    report = compare(name, expected, together, problem_type)
    labels = probabilities(alone.astype(np.float64), problem_type).argmax(axis=1)
    moved = int((labels != probabilities(together.astype(np.float64), problem_type).argmax(axis=1)).sum())
    return {
        "agreement": report.agreement,
        "max_prob_diff": round(report.max_prob_diff, 4),
        "labels_moved_batch1_vs_32": moved,
        "texts": len(texts),
    }


def measure(bundle: Path, rounds: int, seconds: float) -> dict:
    manifest = load_verified(bundle)
    reference = json.loads((bundle / "reference.json").read_text(encoding="utf-8"))
    texts = [item if isinstance(item, str) else tuple(item) for item in reference["inputs"]]
    expected = np.asarray(reference["logits"], dtype=np.float32)
    engines = _engines(bundle)
    encoded = next(iter(engines.values())).encode(texts)
    short = sorted(encoded, key=lambda item: item.length)[: len(encoded) // 2]
    single: dict[str, list[float]] = {name: [] for name in engines}
    rate: dict[str, list[float]] = {name: [] for name in engines}
    flight: list[float] = []
    for index in range(rounds):
        names = list(engines)[index % len(engines) :] + list(engines)[: index % len(engines)]
        for name in names:
            classifier = engines[name]
            single[name] += batch1_ms(classifier, short, seconds)
            rate[name].append(batched(classifier.backend.run, _batches(classifier, encoded), seconds))
        if "openvino" in engines:
            flight.append(two_in_flight(bundle, _batches(engines["openvino"], encoded), seconds))
    results = {
        name: {
            "precision": classifier.backend.precision,
            "file": classifier.backend.describe()["file"],
            "batch1_p50_ms": round(statistics.median(single[name]), 3),
            "batch32_texts_per_s": round(statistics.median(rate[name]), 1),
            **fidelity(classifier, texts, expected, manifest.problem_type),
        }
        for name, classifier in engines.items()
    }
    if flight:
        results["openvino"]["two_in_flight_texts_per_s"] = round(statistics.median(flight), 1)
    return {"machine": machine(), "bundle": manifest.model_id, "variant": manifest.variant, "engines": results}


def markdown(result: dict) -> str:
    engines = result["engines"]
    ort = engines["onnxruntime"]
    lines = [
        "# Engines, in process",
        "",
        "Command: `.venv/bin/python -m bench.engines --bundle bundles/default`, interleaved rounds.",
        f"Machine: {result['machine']}. Bundle: {result['bundle']}, variant {result['variant']}.",
        "",
        "| engine | file | precision | batch 1 p50 ms | batch 32 texts/s | vs ONNX Runtime at 32 | agreement | "
        "max \\|Δp\\| | labels moved, batch 1 vs 32 |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, row in engines.items():
        lines.append(
            f"| {name} | {row['file']} | {row['precision']} | {row['batch1_p50_ms']:.2f} | "
            f"{row['batch32_texts_per_s']:.0f} | {row['batch32_texts_per_s'] / ort['batch32_texts_per_s']:.2f}× | "
            f"{row['agreement']:.2%} | {row['max_prob_diff']:.4f} | "
            f"{row['labels_moved_batch1_vs_32']} of {row['texts']} |"
        )
    openvino = engines.get("openvino", {})
    if "two_in_flight_texts_per_s" in openvino:
        gain = openvino["two_in_flight_texts_per_s"] / openvino["batch32_texts_per_s"]
        lines += [
            "",
            f"OpenVINO with two batches of 32 in flight (two streams): {openvino['two_in_flight_texts_per_s']:.0f} "
            f"texts/s, {gain:.2f}× one batch at a time.",
        ]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.engines", description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", type=Path, default=Path("bundles/default"))
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=3.0, help="per figure, engine and round")
    parser.add_argument("--out", type=Path, default=Path("docs/benchmarks"))
    args = parser.parse_args(argv)
    result = measure(args.bundle, args.rounds, args.seconds)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "engines.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    text = markdown(result)
    (args.out / "engines.md").write_text(text, encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
