"""One bulk run: read rows in chunks, score each chunk, commit it as a part, join the parts.

While the model runs chunk N, a second thread reads and tokenizes chunk N + 1 (the
tokenizer lets go of the GIL), so reading and tokenizing hide behind inference. Memory
holds two chunks whatever the number of rows.
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

from service.bulk import tables
from service.bulk.parts import Parts
from service.bulk.progress import Progress
from service.bulk.scorer import Scorer
from service.core.classifier import TextInput, Windowed, release_free_memory
from service.core.manifest import MODEL_FILE

FAIL, SKIP = "fail", "skip"
# Bad rows named one by one on standard error; the rest are counted.
REPORTED_BAD_ROWS = 20


class BadRows(Exception):
    """Rows that cannot be scored, with ``--on-bad-row fail``."""


class InputError(Exception):
    """Inputs that do not fit the model or the options; the message says which and why."""


@dataclass(frozen=True)
class Job:
    sources: list[tables.Source]
    out: Path
    format: str
    text_column: str = "text"
    pair_column: str | None = None
    on_bad_row: str = FAIL
    chunk_rows: int = 4096
    resume: bool = False
    overwrite: bool = False
    max_row_bytes: int = tables.MAX_ROW_BYTES


@dataclass
class Outcome:
    rows: int = 0
    scored: int = 0
    bad: int = 0
    truncated: int = 0
    resumed_rows: int = 0
    resumed_scored: int = 0
    seconds: float = 0.0
    bad_rows: list[str] = field(default_factory=list)

    def add(self, summary: dict) -> None:
        self.rows += summary["rows"]
        self.scored += summary["scored"]
        self.bad += summary["bad"]
        self.truncated += summary["truncated"]


@dataclass
class Chunk:
    index: int
    rows: list[tables.Row]
    inputs: dict[int, TextInput]  # by position in the chunk: the rows that can be scored
    encoded: dict[int, Windowed]
    problems: dict[int, str]  # by position: why a row cannot be scored


class _Unscorable(Exception):
    """Why one row cannot be scored."""


def _text_of(values: dict[str, Any], column: str) -> str:
    if column not in values:
        raise _Unscorable(f"no column {column!r}")
    value = values[column]
    if value is None:
        raise _Unscorable(f"{column!r} is null")
    if not isinstance(value, str):
        raise _Unscorable(f"{column!r} is not text but {type(value).__name__}")
    if not value.strip():
        raise _Unscorable(f"{column!r} is empty")
    return value


def _input_of(row: tables.Row, job: Job, answer_columns: Sequence[str]) -> TextInput:
    if row.values is None:
        raise _Unscorable(row.problem or "unreadable")
    taken = [name for name in answer_columns if name in row.values]
    if taken:
        raise _Unscorable(f"already has a column {taken[0]!r}; choose another --column-prefix")
    text = _text_of(row.values, job.text_column)
    if job.pair_column is None:
        return text
    return (text, _text_of(row.values, job.pair_column))


def _chunks(rows: Iterator[tables.Row], size: int) -> Iterator[list[tables.Row]]:
    while chunk := list(itertools.islice(rows, size)):
        yield chunk


def _fingerprint(job: Job, scorer: Scorer, columns: Sequence[str] | None) -> dict[str, Any]:
    """What a resumed run must share with the one it continues."""
    inputs: list[list[str | int]] = []
    for source in job.sources:
        if source.path == tables.STDIN:
            inputs.append([tables.STDIN])
        else:
            stat = os.stat(source.path)
            inputs.append([os.path.abspath(source.path), stat.st_size, stat.st_mtime_ns])
    return {
        "inputs": inputs,
        "model": scorer.manifest.files[MODEL_FILE],
        "text_column": job.text_column,
        "pair_column": job.pair_column,
        "on_bad_row": job.on_bad_row,
        "chunk_rows": job.chunk_rows,
        "max_row_bytes": job.max_row_bytes,
        "format": job.format,
        "columns": list(columns) if columns is not None else None,
        "truncate": scorer.reading.truncate,
        "windowing": asdict(scorer.reading.windowing),
        "answering": asdict(scorer.answering),
    }


def output_columns(job: Job, scorer: Scorer, first: tables.Row | None) -> list[str] | None:
    """A CSV output's columns: the first input's, then the answers' (None for the other formats, which name
    their columns row by row)."""
    if job.format != tables.CSV:
        return None
    names = tables.columns(job.sources[0])
    if names is None:
        names = list(first.values) if first is not None and first.values is not None else []
    return [*names, *scorer.columns()]


class Runner:
    def __init__(self, job: Job, scorer: Scorer, *, progress: str = "auto", stream: IO[str] | None = None) -> None:
        self.job = job
        self.scorer = scorer
        self.progress_mode = progress
        self.stream = stream
        self.answer_columns = scorer.columns()
        self.outcome = Outcome()

    def _say(self, message: str) -> None:
        if self.stream is not None:
            print(message, file=self.stream, flush=True)

    def _prepare(self, index: int, rows: list[tables.Row]) -> Chunk:
        inputs: dict[int, TextInput] = {}
        problems: dict[int, str] = {}
        for position, row in enumerate(rows):
            try:
                inputs[position] = _input_of(row, self.job, self.answer_columns)
            except _Unscorable as exc:
                problems[position] = str(exc)
        positions = list(inputs)
        encoded, refused = self.scorer.encode([inputs[p] for p in positions])
        kept = {}
        for offset, position in enumerate(positions):
            if offset in refused:
                problems[position] = refused[offset]
            else:
                item = encoded[offset]
                assert item is not None
                kept[position] = item
        return Chunk(index, rows, inputs, kept, dict(sorted(problems.items())))

    def _answer(self, chunk: Chunk) -> tuple[list[dict[str, Any]], dict]:
        positions = list(chunk.encoded)
        logits, reports = self.scorer.score([chunk.encoded[p] for p in positions])
        answers = dict(zip(positions, self.scorer.answers(logits, reports)))
        out = []
        for position, row in enumerate(chunk.rows):
            if position in answers:
                assert row.values is not None
                out.append({**row.values, **answers[position]})
        summary = {
            "rows": len(chunk.rows),
            "scored": len(answers),
            "bad": len(chunk.problems),
            "truncated": sum(report.truncated for report in reports),
        }
        return out, summary

    def _report_bad(self, chunk: Chunk) -> None:
        for position, problem in chunk.problems.items():
            if len(self.outcome.bad_rows) < REPORTED_BAD_ROWS:  # the rest are counted, not kept
                line = f"bad row: {chunk.rows[position].where}: {problem}"
                self._say(line)
                self.outcome.bad_rows.append(line)

    def _check_columns(self) -> None:
        """InputError, before any row is read, when a header or a schema shows the run cannot go well."""
        job = self.job
        for source in job.sources:
            names = tables.columns(source)
            if names is None:
                continue
            for flag, column in (("--text-column", job.text_column), ("--pair-column", job.pair_column)):
                if column is not None and column not in names:
                    raise InputError(
                        f"{source.name} has no column {column!r}, only {', '.join(map(repr, names))}; "
                        f"name the text's column with {flag}"
                    )
            taken = [name for name in self.answer_columns if name in names]
            if taken:
                raise InputError(f"{source.name} already has a column {taken[0]!r}; choose another --column-prefix")

    def run(self) -> Outcome:
        job = self.job
        started = time.monotonic()
        self._check_columns()
        rows = itertools.chain.from_iterable(
            tables.read(source, job.chunk_rows, job.max_row_bytes) for source in job.sources
        )
        first = next(rows, None)
        if first is not None:
            rows = itertools.chain([first], rows)
        columns = output_columns(job, self.scorer, first)
        total = None
        if all(source.path != tables.STDIN for source in job.sources):  # read through before any part is made
            total = sum(tables.count_rows(source, job.max_row_bytes) or 0 for source in job.sources)
        parts = Parts(job.out, job.format)
        try:
            return self._run(parts, rows, columns, total, started)
        except tables.TableError:
            parts.discard()  # the input must change before a run can go on: nothing here can be resumed
            raise
        finally:
            parts.release()

    def _run(
        self, parts: Parts, rows: Iterator[tables.Row], columns: list[str] | None, total: int | None, started: float
    ) -> Outcome:
        job = self.job
        done = parts.open(_fingerprint(job, self.scorer, columns), resume=job.resume, overwrite=job.overwrite)
        for summary in parts.summaries(done):
            self.outcome.add(summary)
        self.outcome.resumed_rows = self.outcome.rows
        self.outcome.resumed_scored = self.outcome.scored
        if done:
            self._say(f"resuming after {done} committed chunks ({self.outcome.rows:,} rows)")
            for _ in itertools.islice(rows, done * job.chunk_rows):
                pass
        progress = Progress(total, done=self.outcome.rows, mode=self.progress_mode, stream=self.stream)
        chunks = enumerate(_chunks(rows, job.chunk_rows), start=done)
        count = done
        try:
            with ThreadPoolExecutor(1, thread_name_prefix="bulk-read") as reader:

                def read_next() -> Chunk | None:
                    following = next(chunks, None)
                    return None if following is None else self._prepare(*following)

                pending = reader.submit(read_next)
                while (chunk := pending.result()) is not None:
                    pending = reader.submit(read_next)
                    self._report_bad(chunk)
                    if chunk.problems and job.on_bad_row == FAIL:
                        parts.discard()  # the input must change before a run can go on: nothing here can be resumed
                        raise BadRows(
                            f"{len(chunk.problems)} bad rows (named above) in rows {self.outcome.rows + 1:,} to "
                            f"{self.outcome.rows + len(chunk.rows):,}; fix them, or pass --on-bad-row skip to "
                            "leave them out"
                        )
                    out, summary = self._answer(chunk)
                    parts.write(chunk.index, out, columns, summary)
                    # A chunk's rows were made on the reader thread and freed on this one: without a trim,
                    # glibc keeps what they held in per-thread arenas and the peak creeps up chunk by chunk.
                    release_free_memory()
                    self.outcome.add(summary)
                    count = chunk.index + 1
                    progress.advance(len(chunk.rows))
                pending.cancel()
        finally:
            progress.close()
        parts.finish(count, columns)
        self.outcome.seconds = time.monotonic() - started
        return self.outcome
