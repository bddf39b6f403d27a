"""convert -> optimize -> quantize -> verify (gate) -> pick -> write bundle."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import numpy as np

from export import variants as V
from export.bundle import write_bundle
from export.convert import (
    EXTERNAL_DATA_OVER,
    OPSET,
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
from export.timing import Timing, fastest, measure
from export.verify import Thresholds, VariantReport, compare
from service.core.classifier import OnnxClassifier, TextInput
from service.core.manifest import PAIR, SIGMOID, Manifest, score_function

Progress = Callable[[str], None]
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
    return V.VARIANTS if variant == "auto" else (variant,)


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
    progress: Progress = lambda _: None,
    external_data_over: int = EXTERNAL_DATA_OVER,
) -> ExportResult:
    """``external_data_over``: graphs larger than this many bytes keep their weights in
    an external-data file (the 2 GB protobuf limit; lowered in tests)."""
    out = Path(out)
    check_output(out, force)
    if validation_file:
        read_lines(validation_file, "one text, or one tab-separated pair, per line")  # fail before the slow load
    progress(f"loading {'the default model' if model is None else model}")
    source = load_source(model, head=head, max_length=max_length, task=task)
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
        return _export_in(
            work, out, source, texts, variant, thresholds, force, keep_variants, progress, external_data_over
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


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
) -> ExportResult:
    tokenizer_path = work / "tokenizer.json"
    source.tokenizer.save(str(tokenizer_path))
    progress(f"running the original model on {len(texts)} validation texts")
    reference = source.reference(texts)
    progress("converting to ONNX (fp32)")
    base = export_onnx(source, work / "fp32.onnx", external_data_over=external_data_over)
    external = uses_external_data(base)
    if external:
        progress(f"the graph is {onnx_size(base) / 1e9:.2f} GB: weights go to an external-data file")
    draft = _draft_manifest(source, graph_inputs(base))

    def logits_of(path: Path) -> np.ndarray:
        return OnnxClassifier(path, tokenizer_path, draft).logits(texts)

    wanted = requested_variants(variant)
    paths: dict[str, Path] = {}
    reports: list[VariantReport] = []

    def check(name: str, path: Path, *, record: bool = True, kept_fp32: Sequence[str] = ()) -> VariantReport:
        report = compare(name, reference, logits_of(path), source.problem_type, thresholds, threshold=source.threshold)
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
    if {V.OPTIMIZED, V.INT8, V.SELECTIVE} & set(wanted):
        progress("optimizing with ONNX Runtime transformer fusions")
        optimized = V.optimize(base, work / "fp32-optimized.onnx", external=external)
        if check(V.OPTIMIZED, optimized, record=V.OPTIMIZED in wanted).passed:
            # Quantize the fused graph only when the fusions themselves are exact.
            base = optimized
    if V.INT8 in wanted or V.SELECTIVE in wanted:
        progress("quantizing to dynamic int8 (per-channel)")
        int8 = V.quantize(base, work / "int8.onnx", external=external)
        int8_passed = check(V.INT8, int8, record=V.INT8 in wanted).passed
        if V.SELECTIVE in wanted:
            if int8_passed:
                check(V.SELECTIVE, int8)
            else:
                path, kept = _selective(base, work, reference, logits_of, source, thresholds, progress, external)
                check(V.SELECTIVE, path, kept_fp32=kept)

    if keep_variants is not None:
        # Every variant built, passing or not, for benchmarks; the bundle holds only the chosen one.
        keep_variants.mkdir(parents=True, exist_ok=True)
        for name, path in paths.items():
            copy_onnx(path, keep_variants / f"{name}.onnx")
    passing = [r for r in reports if r.passed]
    if not passing:
        raise VerificationFailed("no requested variant passed verification:\n" + report_table(reports))
    timings: list[Timing] = []
    if variant == "auto":
        progress("timing the variants that passed, at batch 1 and 32")
        for report in passing:
            classifier = OnnxClassifier(paths[report.variant], tokenizer_path, draft)
            timings.append(measure(report.variant, classifier, texts[:64]))
        chosen = fastest(timings).variant
    else:
        chosen = variant
    progress(f"writing bundle {out} with variant {chosen}")
    manifest = write_bundle(
        out,
        model_path=paths[chosen],
        tokenizer_path=tokenizer_path,
        draft=draft,
        variant=chosen,
        verification=_verification_summary(chosen, reports, timings, thresholds, len(texts)),
        force=force,
    )
    return ExportResult(out=out, manifest=manifest, reports=reports, timings=timings)


def _selective(
    base: Path,
    work: Path,
    reference: np.ndarray,
    logits_of: Callable[[Path], np.ndarray],
    source: Source,
    thresholds: Thresholds,
    progress: Progress,
    external: bool,
) -> tuple[Path, list[str]]:
    """Find few fp32 nodes that let int8 pass the gate: rank nodes by measured damage,
    then keep the 1, 2, 4, ... most harmful in fp32 until the gate passes."""

    def evaluate(path: Path) -> VariantReport:
        return compare(
            V.SELECTIVE, reference, logits_of(path), source.problem_type, thresholds, threshold=source.threshold
        )

    progress("measuring each node's quantization damage for selective int8")
    ranking = [
        name
        for name, _ in V.rank_sensitivity(base, work, lambda p: evaluate(p).max_prob_diff, progress, external=external)
    ]

    def attempt(count: int) -> Path | None:
        path = V.quantize(base, work / f"int8-selective-{count}.onnx", exclude=ranking[:count], external=external)
        if not external:  # graphs over 2 GB keep their weights as they are, in the external-data file
            V.store_half(path)
        passed = evaluate(path).passed
        progress(f"selective int8 with {count} node(s) kept in fp32: {'passed' if passed else 'failed'}")
        return path if passed else None

    # Double the fp32 set until the gate passes, then bisect back down to the fewest.
    failed, count = 0, 1
    while (found := attempt(count)) is None:
        if count == len(ranking):
            return work / f"int8-selective-{count}.onnx", ranking
        failed, count = count, min(count * 2, len(ranking))
    best, passed_at = found, count
    while passed_at - failed > 1:
        middle = (failed + passed_at) // 2
        if (found := attempt(middle)) is None:
            failed = middle
        else:
            best, passed_at = found, middle
    return best, ranking[:passed_at]


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


def _verification_summary(
    chosen: str, reports: Sequence[VariantReport], timings: Sequence[Timing], thresholds: Thresholds, n_texts: int
) -> dict[str, object]:
    from dataclasses import asdict

    return {
        "passed": True,
        "chosen": chosen,
        "texts": n_texts,
        "thresholds": asdict(thresholds),
        "variants": [r.to_dict() for r in reports],
        "timings": [asdict(t) for t in timings],
    }


def report_table(reports: Sequence[VariantReport], timings: Sequence[Timing] = (), chosen: str | None = None) -> str:
    """One row per variant. ``measure`` says what agreement and max |Δscore| are:
    top-1 labels and probabilities, decisions at a threshold and probabilities, or
    regression values (max |Δvalue| / std of the original's outputs; no agreement)."""
    by_name = {t.variant: t for t in timings}
    rows = [
        (
            "variant",
            "size MB",
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
