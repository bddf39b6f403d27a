"""``python -m service.bulk``: score files of texts with a bundle, with the service's own answers.

    python -m service.bulk tickets.jsonl --output scored.jsonl
    python -m service.bulk data/ --text-column body --output scored.parquet --all-scores
    python -m service.bulk pairs.csv --text-column query --pair-column passage --output ranked.csv

Exit codes: 0 when every row is written (bad rows skipped with ``--on-bad-row skip`` are
counted in the summary), 2 for a bad option, 3 for a bad bundle, 4 for an input that
cannot be read or an output that cannot be written, 5 for bad rows under
``--on-bad-row fail`` (the default), 130 when interrupted (``--resume`` continues).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Mapping, Sequence
from datetime import timedelta
from pathlib import Path
from types import FrameType

from service.bulk import tables
from service.bulk.parts import PartsError, check_output
from service.bulk.run import FAIL, SKIP, BadRows, InputError, Job, Outcome, Runner
from service.bulk.scorer import Answering, Scorer
from service.core.backends.choice import EngineUnavailable
from service.core.manifest import BundleError
from service.core.origin import Trust, check_keys, check_origin
from service.core.windows import AGGREGATIONS, Windowing
from service.settings import ENGINES, Settings, SettingsError, parse_bool, parse_list

EXIT_BAD_OPTION = 2
EXIT_BAD_BUNDLE = 3
EXIT_BAD_FILE = 4
EXIT_BAD_ROWS = 5
EXIT_INTERRUPTED = 130


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _not_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be at least 0, got {value}")
    return value


def parser() -> argparse.ArgumentParser:
    defaults = Settings()
    parser = argparse.ArgumentParser(
        prog="python -m service.bulk",
        description="Score JSON Lines, CSV or Parquet files with a bundle; the rows come back with answer columns.",
    )
    parser.add_argument("inputs", nargs="+", help="files, directories or globs; - reads standard input")
    parser.add_argument("--output", "-o", required=True, help="the file to write; its suffix names its format")
    # No default path: a relative one would name a directory only from one place (the repository's root).
    bundle = os.environ.get("BUNDLE")
    parser.add_argument(
        "--bundle",
        default=bundle,
        required=bundle is None,
        help="bundle directory (default: the BUNDLE environment variable, as for the service; one is needed)",
    )
    trust = parser.add_argument_group("the bundle's origin (as the service's settings of the same names)")
    trust.add_argument(
        "--trusted-key",
        action="append",
        dest="trusted_keys",
        metavar="PUBLIC.pem",
        help="a public key whose signature is trusted (repeat for more; default: TRUSTED_KEYS, comma-separated)",
    )
    trust.add_argument(
        "--require-signature",
        action="store_true",
        default=None,
        help="refuse a bundle not signed by a trusted key (default: REQUIRE_SIGNATURE)",
    )
    trust.add_argument("--bundle-digest", help="refuse a bundle whose digest is not this (default: BUNDLE_DIGEST)")
    what = parser.add_argument_group("what to read")
    what.add_argument("--format", choices=tables.FORMATS, help="the inputs' format, when their names do not say")
    what.add_argument("--output-format", choices=tables.FORMATS, help="the output's format (default: its suffix)")
    what.add_argument("--text-column", default="text", help="the column holding the text (default: %(default)s)")
    what.add_argument("--pair-column", help="the column holding the second text, for a text-pair model")
    answers = parser.add_argument_group("what to answer")
    answers.add_argument("--all-scores", action="store_true", help="a score column per label, besides the top one")
    answers.add_argument("--raw-scores", action="store_true", help="logits instead of probabilities, as raw_scores")
    answers.add_argument("--details", action="store_true", help="truncated, windows and tokens columns per row")
    answers.add_argument("--column-prefix", default="predicted_", help="answer columns' prefix (default: %(default)s)")
    long = parser.add_argument_group("long texts (as the service reads them)")
    long.add_argument("--windows", action="store_true", help="read a long text whole, in overlapping windows")
    long.add_argument("--window-overlap", type=_not_negative, default=defaults.window_overlap)
    long.add_argument("--max-windows", type=_positive, default=defaults.max_windows)
    long.add_argument("--aggregation", choices=("auto", *AGGREGATIONS), default="auto")
    long.add_argument(
        "--no-truncate",
        action="store_true",
        help="a text too long to read whole (over the max length, or over --max-windows) is a bad row, not cut",
    )
    run = parser.add_argument_group("the run")
    run.add_argument("--on-bad-row", choices=(FAIL, SKIP), default=FAIL, help="stop at bad rows, or leave them out")
    run.add_argument("--resume", action="store_true", help="continue an interrupted run into the same output")
    run.add_argument("--overwrite", action="store_true", help="replace the output, or an interrupted run's parts")
    run.add_argument(
        "--chunk-rows", type=_positive, default=4096, help="rows per committed part (default: %(default)s)"
    )
    run.add_argument(
        "--max-row-bytes",
        type=_positive,
        default=tables.MAX_ROW_BYTES,
        help="a longer JSON Lines row is a bad row, a longer CSV line stops the run (default: %(default)s)",
    )
    run.add_argument("--max-batch-tokens", type=_positive, default=defaults.max_batch_tokens)
    run.add_argument("--max-batch-size", type=_positive, default=defaults.max_batch_size)
    run.add_argument("--threads", type=_not_negative, default=0, help="threads per batch; 0: every usable core")
    run.add_argument(
        "--engine",
        choices=ENGINES,
        default=defaults.engine,
        help="what runs the graph, chosen as the service chooses it (ENGINE in docs/settings.md) and "
        "re-verified with the bundle's reference set before any row is scored (default: %(default)s)",
    )
    run.add_argument("--progress", choices=("auto", "bar", "lines", "off"), default="auto")
    return parser


def _fail(message: str, code: int) -> int:
    print(f"error: {message}", file=sys.stderr)
    return code


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def _trust(args: argparse.Namespace, environ: Mapping[str, str]) -> Trust:
    """The origin checks the flags ask for, or else the service's environment variables of the same names."""
    keys = args.trusted_keys if args.trusted_keys is not None else parse_list(environ.get("TRUSTED_KEYS", ""))
    try:
        required = args.require_signature or parse_bool(environ.get("REQUIRE_SIGNATURE", ""))
    except ValueError:
        raise SettingsError(f"REQUIRE_SIGNATURE has an invalid value {environ['REQUIRE_SIGNATURE']!r}") from None
    digest = args.bundle_digest if args.bundle_digest is not None else environ.get("BUNDLE_DIGEST", "")
    try:
        Settings(trusted_keys=tuple(keys), require_signature=required, bundle_digest=digest)
    except SettingsError as exc:
        raise SettingsError(str(exc).replace("--trusted-keys", "--trusted-key")) from None
    problem = check_keys(keys)
    if problem:
        raise SettingsError(problem)
    return Trust(tuple(keys), required, digest)


def _summary(outcome: Outcome, out: Path) -> str:
    """What this run did, at its rate; after a resume, what the output holds in all as well."""
    rows = outcome.rows - outcome.resumed_rows
    rate = rows / max(outcome.seconds, 1e-9)
    took = f"in {timedelta(seconds=round(outcome.seconds))} ({rate:,.0f} rows/s)"
    bad = f"{outcome.bad:,} bad row{'' if outcome.bad == 1 else 's'} skipped"
    if outcome.resumed_rows:
        scored = outcome.scored - outcome.resumed_scored
        text = f"scored {scored:,} of {rows:,} rows {took} after resuming at row {outcome.resumed_rows + 1:,}; "
        text += f"in all {outcome.scored:,} of {outcome.rows:,} rows"
    else:
        text = f"scored {outcome.scored:,} of {outcome.rows:,} rows {took}"
    return f"{text}; {bad}; {outcome.truncated:,} truncated; wrote {out}"


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        sources = tables.sources(args.inputs, args.format)
        out_format = tables.format_of(args.output, args.output_format, "--output-format")
    except tables.TableError as exc:
        return _fail(str(exc), EXIT_BAD_OPTION)
    try:
        check_output(Path(args.output), overwrite=args.overwrite)
    except PartsError as exc:
        return _fail(str(exc), EXIT_BAD_FILE)
    windowing = Windowing(
        args.windows, args.window_overlap, args.max_windows, None if args.aggregation == "auto" else args.aggregation
    )
    answering = Answering(args.all_scores, args.raw_scores, args.details, args.column_prefix)
    try:
        trust = _trust(args, os.environ)
    except SettingsError as exc:
        return _fail(str(exc), EXIT_BAD_OPTION)
    try:
        check_origin(Path(args.bundle), trust, pin=trust.digest)  # before anything of the bundle is read
        scorer = Scorer.from_bundle(
            args.bundle,
            threads=args.threads,
            engine=args.engine,
            windowing=windowing,
            truncate=not args.no_truncate,
            answering=answering,
            max_batch_tokens=args.max_batch_tokens,
            max_batch_size=args.max_batch_size,
        )
    except BundleError as exc:
        return _fail(str(exc), EXIT_BAD_BUNDLE)
    except EngineUnavailable as exc:
        return _fail(str(exc), EXIT_BAD_OPTION)
    engine = scorer.engine
    if engine["engine"] != "onnxruntime" or engine.get("fallback"):  # ONNX Runtime alone is what it always was
        fallback = f"; {engine['fallback']}, so ONNX Runtime runs" if engine.get("fallback") else ""
        print(f"engine: {engine['engine']} {engine['precision']} ({engine['reason']}{fallback})", file=sys.stderr)
    if scorer.manifest.is_pair and not args.pair_column:
        return _fail(
            "this bundle classifies text pairs: name the second text's column with --pair-column", EXIT_BAD_OPTION
        )
    if args.pair_column and not scorer.manifest.is_pair:
        return _fail("this bundle classifies single texts: --pair-column is for text-pair models", EXIT_BAD_OPTION)
    job = Job(
        sources,
        Path(args.output),
        out_format,
        text_column=args.text_column,
        pair_column=args.pair_column,
        on_bad_row=args.on_bad_row,
        chunk_rows=args.chunk_rows,
        resume=args.resume,
        overwrite=args.overwrite,
        max_row_bytes=args.max_row_bytes,
    )
    previous = signal.signal(signal.SIGTERM, _interrupt)  # a stopped container or job: as Ctrl-C
    try:
        outcome = Runner(job, scorer, progress=args.progress, stream=sys.stderr).run()
    except KeyboardInterrupt:
        return _fail("interrupted; the committed rows are kept: run again with --resume to go on", EXIT_INTERRUPTED)
    except BadRows as exc:
        return _fail(str(exc), EXIT_BAD_ROWS)
    except InputError as exc:
        return _fail(str(exc), EXIT_BAD_OPTION)
    except (tables.TableError, PartsError) as exc:
        return _fail(str(exc), EXIT_BAD_FILE)
    except OSError as exc:
        return _fail(f"{exc.filename or args.output}: {exc.strerror or exc}", EXIT_BAD_FILE)
    finally:
        signal.signal(signal.SIGTERM, previous)
    print(_summary(outcome, job.out), file=sys.stderr)
    return 0
