"""convert -> optimize -> quantize -> verify (gate) -> pick -> write bundle."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import ParamSpec, TypeVar

import numpy as np

from export import budget, engine_graphs, isolated, weight_only
from export import variants as V
from export.bundle import write_bundle
from export.convert import (
    EXTERNAL_DATA_OVER,
    OPSET,
    convert_checkpoint,
    copy_onnx,
    export_onnx,
    graph_inputs,
    onnx_size,
    uses_external_data,
)
from export.errors import OutputExists, OutputNotWritable, UsageError, VerificationFailed
from export.pairs import builtin_pairs, read_pair_file
from export.sources import Source, load_source
from export.texts import builtin_texts, read_lines, read_text_file
from export.timing import Timing, measure
from service.core.classifier import OnnxClassifier, TextInput, release_free_memory
from service.core.gate import Thresholds, VariantReport, approximate, compare
from service.core.manifest import PAIR, SIGMOID, Manifest, score_function

Progress = Callable[[str], None]
P = ParamSpec("P")
R = TypeVar("R")
# Which variant ``--variant auto`` keeps when two that passed are the same size (plain int8 and
# int8-selective share a file when blind int8 passes; fused fp32 runs faster than plain fp32).
AUTO_ORDER = (V.INT8, V.SELECTIVE, V.OPTIMIZED, V.FP32, V.INT8_WEIGHTS, V.INT4_WEIGHTS)
# Validation texts the selective search ranks nodes on; every graph it tries is gated on all of them.
RANKING_TEXTS = 64
# Models whose weights take more bytes than this run each heavy step in a process of its own
# (``export.isolated``): a step's peak is freed when it ends instead of piling up. Smaller models
# stay in one process, where a step saves the second or so a child takes to start.
ISOLATE_OVER = 256 * 2**20
# ``--variant auto`` on a model with more bytes of weights than this builds neither the fused fp32
# variant nor the selective search: ONNX Runtime's transformer optimizer held about 11 times the graph
# (7.2 GB for a 640 MB decoder), and the search runs the model once per node (169 nodes for a 0.5B
# decoder, longer than the rest of the export together). Such a model is served from int8 or the
# weight-only variants, which its fp32 graph is quantized into directly (docs/export.md#large-models).
LARGE = 512 * 2**20
VERSIONED_PACKAGES = (
    "torch",
    "transformers",
    "sentence-transformers",
    "scikit-learn",
    "onnx",
    "onnxruntime",
    "tokenizers",
    "numpy",
)


@dataclass
class ExportResult:
    out: Path
    manifest: Manifest
    reports: list[VariantReport]
    timings: list[Timing] = field(default_factory=list)
    # The graphs for engines other than ONNX Runtime, gated like the variants (``export.engine_graphs``).
    engine_reports: list[VariantReport] = field(default_factory=list)
    steps: list[tuple[str, float]] = field(default_factory=list)  # each progress step and its seconds


class StepClock:
    """Passes progress lines on and times the steps they start: a step lasts until the next line."""

    def __init__(self, progress: Progress) -> None:
        self._progress = progress
        self._started: list[tuple[str, float]] = []

    def __call__(self, message: str) -> None:
        self._started.append((message, time.monotonic()))
        self._progress(message)

    def steps(self) -> list[tuple[str, float]]:
        ends = [started for _, started in self._started[1:]] + [time.monotonic()]
        return [(message, end - started) for (message, started), end in zip(self._started, ends)]


class Steps:
    """Runs a heavy step in a child process (``export.isolated``) when ``isolate``, else here."""

    def __init__(self, *, isolate: bool) -> None:
        self.isolate = isolate

    def __call__(self, name: str, function: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
        return isolated.run(name, function, *args, **kwargs) if self.isolate else function(*args, **kwargs)


def package_versions() -> dict[str, str]:
    versions = {}
    for name in VERSIONED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def check_output(out: Path, force: bool) -> None:
    if out.exists() and not force:
        raise OutputExists(f"output {out} already exists; pass --force to replace it")
    parent = out.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputNotWritable(f"cannot create output directory {parent}: {exc.strerror}") from None
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputNotWritable(f"output directory {parent} is not writable")


def requested_variants(variant: str) -> tuple[str, ...]:
    """What ``variant`` builds at first; ``auto`` adds the weight-only variants when none of these
    passes and fits the memory budget."""
    return V.CLASSIC if variant == "auto" else (variant,)


def export_bundle(
    *,
    out: Path,
    model: str | None = None,
    head: str | None = None,
    variant: str = "auto",
    validation_file: str | None = None,
    max_length: int | None = None,
    task: str | None = None,
    threshold: float | None = None,
    force: bool = False,
    thresholds: Thresholds = Thresholds(),
    keep_variants: Path | None = None,
    reference_set: bool = True,
    openvino: bool = True,
    progress: Progress = lambda _: None,
    external_data_over: int = EXTERNAL_DATA_OVER,
    sign: Callable[[Path], None] | None = None,
    max_memory: int | None = None,
    isolate_over: int = ISOLATE_OVER,
) -> ExportResult:
    """``external_data_over``: graphs larger than this many bytes keep their weights in
    an external-data file (the 2 GB protobuf limit; lowered in tests). ``openvino``: also write and gate
    the graph OpenVINO runs (``export.engine_graphs``), when OpenVINO is installed. ``sign``, when given,
    signs the bundle's directory before it takes its place (``export.sign``). ``max_memory``: the
    bytes the served variant may expect to hold (``export.budget``); None for no limit. ``isolate_over``:
    models with more bytes of weights run each heavy step in a child process (lowered in tests)."""
    out = Path(out)
    clock = progress = StepClock(progress)
    check_output(out, force)
    if validation_file:
        read_lines(validation_file, "one text, or one tab-separated pair, per line")  # fail before the slow load
    progress(f"loading {'the default model' if model is None else model}")
    source = load_source(model, head=head, max_length=max_length, task=task, max_memory=max_memory)
    if threshold is not None:
        if score_function(source.problem_type, len(source.id2label)) != SIGMOID:
            raise UsageError(
                f"--threshold applies to sigmoid scores (multi-label or one-logit models); "
                f"{source.model_id} is {source.problem_type} with {len(source.id2label)} outputs"
            )
        source.threshold = threshold
    progress(
        f"loaded {source.model_id}: {source.task} model, {len(source.id2label)} outputs, "
        f"{source.problem_type}, max_length {source.max_length}"
    )
    if "max_length_declared" in source.details:
        declared = source.details["max_length_declared"]
        progress(
            f"max_length {source.max_length}, not the {declared} declared: one window of {declared} tokens would "
            f"not fit --max-memory {budget.gib(max_memory or 0)} beside the model (docs/export.md#large-models); "
            "--max-length sets another length"
        )
    texts = validation_inputs(source.task, validation_file)
    # A decoder without BOS turns an empty text into no tokens at all: neither the
    # original nor the bundle can classify it (the service answers 422).
    empty = [t for t in texts if not source.tokenizer.encode(*((t,) if isinstance(t, str) else t)).ids]
    if empty:
        texts = [t for t in texts if t not in empty]
        progress(f"skipping {len(empty)} validation input(s) that have no tokens for this model")
    try:
        work = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    except OSError as exc:
        raise OutputNotWritable(f"cannot write in {out.parent}: {exc.strerror}") from None
    try:
        result = _export_in(
            work,
            out,
            source,
            texts,
            variant,
            thresholds,
            force,
            keep_variants,
            progress,
            external_data_over,
            reference_set,
            openvino,
            sign,
            max_memory,
            isolate_over,
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result.steps = clock.steps()
    return result


def validation_inputs(task: str, validation_file: str | None) -> list[TextInput]:
    """The built-in texts (or pairs, for a pair model) plus the user's file."""
    if task == PAIR:
        return [*builtin_pairs(), *(read_pair_file(validation_file) if validation_file else [])]
    return [*builtin_texts(), *(read_text_file(validation_file) if validation_file else [])]


def _export_in(
    work: Path,
    out: Path,
    source: Source,
    texts: Sequence[TextInput],
    variant: str,
    thresholds: Thresholds,
    force: bool,
    keep_variants: Path | None,
    progress: Progress,
    external_data_over: int,
    reference_set: bool,
    openvino: bool,
    sign: Callable[[Path], None] | None = None,
    max_memory: int | None = None,
    isolate_over: int = ISOLATE_OVER,
) -> ExportResult:
    tokenizer_path = work / "tokenizer.json"
    source.tokenizer.save(str(tokenizer_path))
    progress(f"running the original model on {len(texts)} validation texts")
    reference = source.reference(texts)
    weights = source.weight_bytes()
    step = Steps(isolate=weights > isolate_over)
    progress("converting to ONNX (fp32)" + (", each step in a process of its own" if step.isolate else ""))
    if step.isolate:
        # The child loads the model again and traces it; this process no longer needs its copy.
        source.release_model()
        base = plain = isolated.run(
            "converting to ONNX", convert_checkpoint, source.loaded_with, work / "fp32.onnx", external_data_over
        )
    else:
        base = plain = export_onnx(source, work / "fp32.onnx", external_data_over=external_data_over)
    # A stage may add up to a copy of the weights (the selective search's probe): a graph over half
    # the limit writes every graph made from it with external data, never one proto over 2 GB.
    external = uses_external_data(base) or 2 * onnx_size(base) > external_data_over
    if external:
        progress(f"the graph is {onnx_size(base) / 1e9:.2f} GB: weights go to an external-data file")
    draft = _draft_manifest(source, graph_inputs(base))

    def classifier_of(path: Path) -> OnnxClassifier:
        return OnnxClassifier(path, tokenizer_path, draft)

    def logits_of(path: Path) -> np.ndarray:
        return classifier_of(path).logits(texts)

    wanted = requested_variants(variant)
    paths: dict[str, Path] = {}
    reports: list[VariantReport] = []

    def check(name: str, path: Path, *, record: bool = True, kept_fp32: Sequence[str] = ()) -> VariantReport:
        report = compare(name, reference, logits_of(path), source.problem_type, thresholds, threshold=source.threshold)
        release_free_memory()  # the session is gone; hand its memory back before the next step
        report.size_bytes = onnx_size(path)
        report.kept_fp32 = list(kept_fp32)
        if record:
            paths[name] = path
            reports.append(report)
        verdict = "passed" if report.passed else "FAILED: " + "; ".join(report.failures)
        progress(
            f"verified {name}: {report.measure} agreement {report.agreement:.2%}, "
            f"max |Δlogit| {report.max_logit_diff:.2e} - {verdict}"
        )
        return report

    if V.FP32 in wanted:
        check(V.FP32, base)
    large = variant == "auto" and weights > LARGE
    if large:
        progress(
            f"{weights / 1e9:.2f} GB of weights: no fused fp32 and no selective search "
            "(each costs many times the model; docs/export.md#large-models)"
        )
        wanted = tuple(name for name in wanted if name not in (V.OPTIMIZED, V.SELECTIVE))
    if not large and {V.OPTIMIZED, V.INT8, V.SELECTIVE} & set(wanted):
        progress("optimizing with ONNX Runtime transformer fusions")
        optimized = step("optimizing", V.optimize, base, work / "fp32-optimized.onnx", external=external)
        if check(V.OPTIMIZED, optimized, record=V.OPTIMIZED in wanted).passed:
            # Quantize the fused graph only when the fusions themselves are exact.
            base = optimized
    if V.INT8 in wanted or V.SELECTIVE in wanted:
        progress("quantizing to dynamic int8 (per-channel)")
        int8 = step("quantizing to int8", V.quantize, base, work / "int8.onnx", external=external)
        int8_passed = check(V.INT8, int8, record=V.INT8 in wanted).passed
        if V.SELECTIVE in wanted:
            if int8_passed:
                check(V.SELECTIVE, int8)
            else:
                search = Search(
                    base,
                    work,
                    tokenizer_path,
                    draft,
                    list(texts),
                    reference,
                    source.problem_type,
                    source.threshold,
                    thresholds,
                    external,
                )
                path, kept = _selective(search, logits_of, progress, step)
                check(V.SELECTIVE, path, kept_fp32=kept)

    _weight_only(plain, work, variant, wanted, reports, max_memory, check, progress, external, step)

    if keep_variants is not None:
        # Every variant built, passing or not, for benchmarks; the bundle holds only the chosen one.
        keep_variants.mkdir(parents=True, exist_ok=True)
        for name, path in paths.items():
            step("copying the variants", copy_onnx, path, keep_variants / f"{name}.onnx")
    passing = [r for r in reports if r.passed]
    if not passing:
        raise VerificationFailed("no requested variant passed verification:\n" + report_table(reports))
    fitting = [r for r in passing if budget.fits(r, max_memory)]
    if max_memory is not None and not fitting:
        raise budget.refuse(reports, max_memory)
    timings: list[Timing] = []
    if variant == "auto":
        progress("timing the variants that passed and fit, at batch 1 and 32 (for the report; the choice is a rule)")
        for report in fitting:
            classifier = OnnxClassifier(paths[report.variant], tokenizer_path, draft)
            timings.append(measure(report.variant, classifier, texts[:64]))
        chosen = choose(fitting)
    else:
        chosen = variant
    engines: dict[str, dict[str, object]] = {}
    graphs: dict[str, Path] = {}
    engine_reports: list[VariantReport] = []
    if openvino and approximate(chosen):
        unavailable = engine_graphs.openvino_unavailable() or (
            "the fp32 graph keeps its weights in an external-data file" if external else ""
        )
        if unavailable:
            progress(f"no graph for OpenVINO: {unavailable}")
        else:
            progress("gating the fp32 graph on OpenVINO, for the engine the service picks on CPUs with bf16 units")
            graph = step("writing the graph for OpenVINO", engine_graphs.openvino_graph, plain, work)
            try:
                name, logits = engine_graphs.openvino_logits(graph, tokenizer_path, draft, texts)
            except Exception as exc:  # OpenVINO raises its own error types for graphs it cannot compile
                progress(f"no graph for OpenVINO: it cannot run this graph: {str(exc).strip().splitlines()[0]}")
            else:
                report = compare(name, reference, logits, source.problem_type, thresholds, threshold=source.threshold)
                report.size_bytes = onnx_size(graph)
                engine_reports.append(report)
                passed = "passed" if report.passed else "FAILED (left out of the bundle): " + "; ".join(report.failures)
                progress(f"verified {name}: {report.measure} agreement {report.agreement:.2%} - {passed}")
                if report.passed:
                    engines[engine_graphs.OPENVINO] = engine_graphs.engine_entry(report)
                    graphs[graph.name] = graph
    progress(f"writing bundle {out} with variant {chosen}")
    manifest = write_bundle(
        out,
        model_path=paths[chosen],
        tokenizer_path=tokenizer_path,
        draft=draft,
        variant=chosen,
        verification=_verification_summary(chosen, reports, thresholds, len(texts)),
        force=force,
        reference=(texts, reference) if reference_set else None,
        engines=engines,
        graphs=graphs,
        sign=sign,
    )
    return ExportResult(out=out, manifest=manifest, reports=reports, timings=timings, engine_reports=engine_reports)


def _weight_only(
    plain: Path,
    work: Path,
    variant: str,
    wanted: Sequence[str],
    reports: list[VariantReport],
    max_memory: int | None,
    check: Callable[..., VariantReport],
    progress: Progress,
    external: bool,
    step: Steps,
) -> None:
    """Build and gate the weight-only variants asked for, or with ``auto`` when no variant built so far
    passed and fits ``max_memory``."""
    names = [name for name in wanted if name in V.WEIGHT_ONLY]
    if variant == "auto" and not any(r.passed and budget.fits(r, max_memory) for r in reports):
        why = "passed" if max_memory is None else f"passed and fits {budget.gib(max_memory)}"
        progress(f"no variant so far {why}: trying the weight-only variants")
        names = list(V.WEIGHT_ONLY)
    for name in names:
        progress(f"quantizing weights only: {name} (MatMulNBits, blocks of {weight_only.BLOCK_SIZE[name]})")
        check(
            name,
            step(f"quantizing {name}", weight_only.quantize, plain, work / f"{name}.onnx", name, external=external),
        )


def ranking_rows(total: int, count: int = RANKING_TEXTS) -> list[int]:
    """A fixed subset of the validation texts, spread over them (the same on every run)."""
    return list(range(0, total, max(1, total // count)))[:count]


def _short(node: str) -> str:
    return node.removeprefix("/encoder/encoder/").removesuffix("/MatMul")


@dataclass
class Search:
    """What the selective search needs, all of it picklable (it runs in a child for large models)."""

    base: Path
    work: Path
    tokenizer_path: Path
    draft: Manifest
    texts: list[TextInput]
    reference: np.ndarray
    problem_type: str
    threshold: float
    thresholds: Thresholds
    external: bool

    def report(self, logits: np.ndarray, rows: Sequence[int] | None = None) -> VariantReport:
        expected = self.reference if rows is None else self.reference[list(rows)]
        return compare(V.SELECTIVE, expected, logits, self.problem_type, self.thresholds, threshold=self.threshold)


def _selective(
    search: Search, logits_of: Callable[[Path], np.ndarray], progress: Progress, step: Steps
) -> tuple[Path, list[str]]:
    """Find few fp32 nodes that let int8 pass the gate.

    One probe session (``variants.Probe``) emulates int8 for any set of nodes: it ranks the nodes by the
    damage each does alone, on a fixed subset of the validation texts, and finds how many of the most
    harmful to keep in fp32 for the emulated graph to pass the gate on all of them. Then the real
    quantized graph is built and gated, and only if it fails does the search go on with real graphs, from
    there up. Every graph that ships passed the real gate.
    """
    progress(
        f"measuring each node's quantization damage on {len(ranking_rows(len(search.texts)))} of the validation texts"
    )
    damage, predicted = step("searching the nodes to keep in fp32", probe_search, search)
    progress("ranked: " + ", ".join(f"{_short(name)} {error:.4f}" for name, error in damage))
    progress(f"emulated int8 passes the gate with {predicted} node(s) kept in fp32")
    return fewest_fp32(
        search.base,
        search.work,
        [name for name, _ in damage],
        lambda path: search.report(logits_of(path)).passed,
        progress,
        external=search.external,
        start=predicted,
        step=step,
    )


def probe_search(search: Search) -> tuple[list[tuple[str, float]], int]:
    """Each searched node's damage alone (most harmful first), and how many of the most harmful the
    emulated int8 graph must keep in fp32 to pass the gate on every validation text."""
    classifier = OnnxClassifier(search.base, search.tokenizer_path, search.draft)
    probe = V.Probe(search.base, search.work, external=search.external)
    damage = probe_ranking(
        probe, search.texts, classifier, lambda rows, logits: search.report(logits, rows).max_prob_diff
    )
    ranking = [name for name, _ in damage]
    run_all = probe_runner(probe, classifier, search.texts)
    predicted = fewest(lambda count: search.report(run_all(probe.switches(ranking[count:]))).passed, len(ranking))
    return damage, predicted


def probe_runner(
    probe: V.Probe, classifier: OnnxClassifier, texts: Sequence[TextInput]
) -> Callable[[dict[str, np.ndarray]], np.ndarray]:
    """Logits of ``texts`` from the probe session, for a given set of switches (texts encoded once)."""
    encoded = classifier.encode(texts)
    order = sorted(range(len(encoded)), key=lambda i: encoded[i].length)
    width = classifier.manifest.num_outputs

    def run(switches: dict[str, np.ndarray]) -> np.ndarray:
        out = np.empty((len(encoded), width), dtype=np.float32)
        for start in range(0, len(order), 32):
            batch = order[start : start + 32]
            feeds = {**classifier.feeds([encoded[i] for i in batch]), **switches}
            (out[batch],) = probe.session.run(["logits"], feeds)
        return out

    return run


def probe_ranking(
    probe: V.Probe,
    texts: Sequence[TextInput],
    classifier: OnnxClassifier,
    damage_of: Callable[[Sequence[int], np.ndarray], float],
) -> list[tuple[str, float]]:
    """The searched nodes and their damage, most harmful first: each node's damage (``damage_of`` the
    ranking texts' rows and their logits) with it alone as int8, measured in the probe's one session."""
    rows = ranking_rows(len(texts))
    run = probe_runner(probe, classifier, [texts[row] for row in rows])
    return V.probed_damage(probe, run, lambda logits: damage_of(rows, logits))


def fewest(passes: Callable[[int], bool], total: int, start: int = 0) -> int:
    """The smallest count in (start, total] for which ``passes`` holds, assuming that more never hurts:
    1, 2, 4, ... above ``start`` until one passes, then bisection; ``total`` if none does."""
    failed, step = start, 1
    count = min(start + step, total)
    while not passes(count):
        if count == total:
            return total
        failed, step = count, step * 2
        count = min(start + step, total)
    passed_at = count
    while passed_at - failed > 1:
        middle = (failed + passed_at) // 2
        if passes(middle):
            passed_at = middle
        else:
            failed = middle
    return passed_at


def fewest_fp32(
    base: Path,
    work: Path,
    ranking: Sequence[str],
    gate: Callable[[Path], bool],
    progress: Progress,
    *,
    external: bool = False,
    start: int | None = None,
    step: Steps | None = None,
) -> tuple[Path, list[str]]:
    """Quantize with the first nodes of ``ranking`` kept in fp32, as few as pass the real gate. With
    ``start`` (a prediction) that count is tried first; when it fails, the search goes on above it."""
    built: dict[int, Path] = {}
    run = step or Steps(isolate=False)

    def attempt(count: int) -> bool:
        target = work / f"int8-selective-{count}.onnx"
        path = run("quantizing", V.quantize, base, target, exclude=ranking[:count], external=external)
        run("storing fp32 weights as fp16", V.store_half, path)
        passed = gate(path)
        progress(f"selective int8 with {count} node(s) kept in fp32: {'passed' if passed else 'failed'}")
        if passed:
            built[count] = path
        return passed

    if start is not None and start > 0 and attempt(start):
        count = start
    else:
        count = fewest(attempt, len(ranking), start or 0)
    path = built.get(count) or work / f"int8-selective-{count}.onnx"
    return path, list(ranking[:count])


def _draft_manifest(source: Source, input_names: list[str]) -> Manifest:
    return Manifest(
        model_id=source.model_id,
        source={"kind": source.kind, **source.details},
        id2label=source.id2label,
        problem_type=source.problem_type,
        max_length=source.max_length,
        input_names=input_names,
        variant="draft",
        opset=OPSET,
        versions=package_versions(),
        verification={},
        files={"model.onnx": "", "tokenizer.json": ""},
        strip_whitespace=source.strip_whitespace,
        task=source.task,
        threshold=source.threshold,
    )


def choose(passing: Sequence[VariantReport]) -> str:
    """``--variant auto``: the smallest variant that passed the gate; at equal size, the first of AUTO_ORDER.

    A rule, not a race: timings on the machine at hand moved from run to run (the same export chose fp32
    once and int8-selective the next), and the serving CPU is seldom the export one. Every variant that
    passes is within the gate's tolerances, so the smaller one costs no accuracy the gate allows; on CPUs
    with VNNI it is also the fastest, and on AVX2 alone it is about as fast (docs/export.md).
    """
    return min(passing, key=lambda report: (report.size_bytes, AUTO_ORDER.index(report.variant))).variant


def _verification_summary(
    chosen: str, reports: Sequence[VariantReport], thresholds: Thresholds, n_texts: int
) -> dict[str, object]:
    """What bundle.json records of the gate: no timings, so that the same inputs give the same bytes."""
    from dataclasses import asdict

    return {
        "passed": True,
        "chosen": chosen,
        "texts": n_texts,
        "thresholds": asdict(thresholds),
        "variants": [r.to_dict() for r in reports],
    }


def steps_table(steps: Sequence[tuple[str, float]]) -> str:
    """Where the export's time went, step by step, and in all."""
    lines = [f"{seconds:7.1f} s  {message[:100]}" for message, seconds in steps]
    return "\n".join([*lines, f"{sum(seconds for _, seconds in steps):7.1f} s  in all"])


def report_table(reports: Sequence[VariantReport], timings: Sequence[Timing] = (), chosen: str | None = None) -> str:
    """One row per variant. RSS is the memory a service holding it may expect before any batch
    (``export.budget``). ``measure`` says what agreement and max |Δscore| are:
    top-1 labels and probabilities, decisions at a threshold and probabilities, or
    regression values (max |Δvalue| / std of the original's outputs; no agreement)."""
    by_name = {t.variant: t for t in timings}
    rows = [
        (
            "variant",
            "size MB",
            "RSS MB",
            "measure",
            "agreement",
            "confident",
            "max |Δlogit|",
            "max |Δscore|",
            "batch1 ms",
            "batch32 ms",
            "result",
        )
    ]
    for r in reports:
        t = by_name.get(r.variant)
        result = "passed" if r.passed else "FAILED: " + "; ".join(r.failures)
        if r.variant == chosen:
            result += " (chosen)"
        values = r.max_value_diff is not None
        rows.append(
            (
                r.variant,
                f"{r.size_bytes / 1e6:.1f}",
                f"{budget.expected_rss(r.variant, r.size_bytes) / 1e6:.0f}",
                r.measure,
                "-" if values else f"{r.agreement:.2%}",
                "-" if values else f"{r.confident_agreement:.2%}",
                f"{r.max_logit_diff:.2e}",
                f"{r.max_prob_diff:.4f}",
                f"{t.batch1_ms:.2f}" if t else "-",
                f"{t.batch32_ms:.1f}" if t else "-",
                result,
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row[:-1], widths)) + "  " + row[-1] for row in rows)
