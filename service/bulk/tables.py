"""Rows in and out of JSON Lines, CSV and Parquet files.

A row is a dict of column values. Reading never stops at a bad record: a line that is
not a JSON object, not UTF-8 or longer than the row limit, a text that is not valid
Unicode (a lone surrogate such as JSON's ``\\ud800``), or a CSV record that is malformed
(read strictly: a stray quote never merges records silently) or has the wrong number of
fields, comes back as a row with a ``problem`` and the run decides (``--on-bad-row``).
Every line is read with a bound (``max_row_bytes``), so no input makes a row of unbounded
size. Writing goes to one file per chunk (a part); ``join`` makes the parts one file.
Parquet needs pyarrow (``requirements-bulk.txt``), imported only when a Parquet file is
read or written.
"""

from __future__ import annotations

import csv
import glob
import json
import re
import shutil
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

JSONL, CSV, PARQUET = "jsonl", "csv", "parquet"
FORMATS = (JSONL, CSV, PARQUET)
SUFFIXES = {".jsonl": JSONL, ".ndjson": JSONL, ".csv": CSV, ".parquet": PARQUET, ".pq": PARQUET}
STDIN = "-"
# A row (a JSON Lines line, a CSV line) longer than this is a bad row (JSON Lines) or stops the run (CSV,
# whose records cannot be told apart past a line cut short). Far more than any text a model reads: the
# scorer cuts texts to what their windows can hold before tokenizing (service.bulk.scorer).
MAX_ROW_BYTES = 64 << 20
# A JSON string escape of a UTF-16 surrogate: only then can a parsed row hold a lone one.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


class TableError(Exception):
    """An input that cannot be read, or an output that cannot be written: the run stops with this message."""


@dataclass(frozen=True)
class Source:
    path: str  # STDIN for standard input
    format: str

    @property
    def name(self) -> str:
        return "standard input" if self.path == STDIN else self.path


@dataclass(frozen=True)
class Row:
    """One record of an input: where it is (for messages), its values, or why it could not be read."""

    source: str
    number: int  # 1-based: a JSON Lines file's line, a CSV file's record after the header, a Parquet row
    values: dict[str, Any] | None
    problem: str | None = None

    @property
    def where(self) -> str:
        return f"{self.source} row {self.number}"


def format_of(path: str, given: str | None, flag: str = "--format") -> str:
    """The format ``given``, or the one ``path``'s suffix names; ``flag`` is the option that would name it."""
    if given:
        return given
    found = SUFFIXES.get(Path(path).suffix.lower())
    if found is None:
        raise TableError(
            f"{path}: cannot tell its format from its name; name it *.jsonl, *.csv or *.parquet or pass {flag}"
        )
    return found


def sources(paths: Sequence[str], given: str | None) -> list[Source]:
    """The files behind ``paths``: files, directories (their files in a known format, sorted) and globs."""
    found: list[Source] = []
    for path in paths:
        if path == STDIN:
            if not given:
                raise TableError("reading standard input needs --format (jsonl or csv)")
            if given == PARQUET:
                raise TableError("Parquet cannot be read from standard input; name the file")
            found.append(Source(STDIN, given))
            continue
        if Path(path).is_dir():
            inside = sorted(str(p) for p in Path(path).iterdir() if p.is_file() and p.suffix.lower() in SUFFIXES)
            if not inside:
                raise TableError(f"{path}: a directory with no *.jsonl, *.csv or *.parquet file")
            found.extend(Source(p, format_of(p, given)) for p in inside)
        elif Path(path).is_file():
            found.append(Source(path, format_of(path, given)))
        elif glob.has_magic(path):
            matched = sorted(p for p in glob.glob(path) if Path(p).is_file())
            if not matched:
                raise TableError(f"{path}: no file matches")
            found.extend(Source(p, format_of(p, given)) for p in matched)
        else:
            raise TableError(f"{path}: no such file or directory")
    if sum(source.path == STDIN for source in found) > 1:
        raise TableError("standard input can be read once")
    return found


def count_rows(source: Source, max_row_bytes: int = MAX_ROW_BYTES) -> int | None:
    """How many rows ``read`` will give (None for standard input): for the progress bar's time left. A CSV
    file is read through as ``read`` reads it, so a file it cannot read stops the run here, before any part."""
    if source.path == STDIN:
        return None
    if source.format == PARQUET:
        try:
            return int(_parquet().ParquetFile(source.path).metadata.num_rows)
        except TableError:
            raise
        except Exception as exc:  # pyarrow raises its own ArrowInvalid for a file that is not Parquet
            raise TableError(f"{source.name}: not a Parquet file ({exc})") from None
    try:
        with open(source.path, "rb") as file:
            if source.format == CSV:
                return sum(1 for _ in _read_csv(source, file, max_row_bytes))
            count, last = 0, b"\n"
            for block in iter(lambda: file.read(1 << 20), b""):  # blocks, not lines: a line may be huge
                count += block.count(b"\n")
                last = block[-1:]
            return count + (last != b"\n")
    except OSError as exc:
        raise TableError(f"{source.name}: {exc.strerror or exc}") from None


def read(source: Source, batch_rows: int = 4096, max_row_bytes: int = MAX_ROW_BYTES) -> Iterator[Row]:
    try:
        if source.format == PARQUET:
            yield from _read_parquet(source, batch_rows)
        elif source.path == STDIN:
            reader = _read_jsonl if source.format == JSONL else _read_csv
            yield from reader(source, sys.stdin.buffer, max_row_bytes)
        else:
            with open(source.path, "rb") as file:
                yield from (_read_jsonl if source.format == JSONL else _read_csv)(source, file, max_row_bytes)
    except OSError as exc:
        raise TableError(f"{source.name}: {exc.strerror or exc}") from None


def _lines(file: IO[bytes], limit: int) -> Iterator[bytes | None]:
    """Each line of ``file``, or None for one longer than ``limit`` bytes, which is skipped, never held."""
    while line := file.readline(limit + 1):
        if len(line) > limit and not line.endswith(b"\n"):
            while line and not line.endswith(b"\n"):
                line = file.readline(1 << 20)
            yield None
        else:
            yield line


def _invalid_unicode(value: Any) -> bool:
    """Whether ``value`` holds a string that no UTF-8 file can hold (a lone surrogate)."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return True
        return False
    if isinstance(value, dict):
        return any(_invalid_unicode(key) or _invalid_unicode(item) for key, item in value.items())
    if isinstance(value, list):
        return any(_invalid_unicode(item) for item in value)
    return False


def _read_jsonl(source: Source, file: IO[bytes], limit: int) -> Iterator[Row]:
    for number, line in enumerate(_lines(file, limit), 1):
        if line is None:
            yield Row(source.name, number, None, f"longer than {limit:,} bytes (--max-row-bytes)")
            continue
        if not line.strip():
            yield Row(source.name, number, None, "empty row")
            continue
        try:
            values = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            yield Row(source.name, number, None, f"not JSON ({exc})")
            continue
        if not isinstance(values, dict):
            yield Row(source.name, number, None, f"not a JSON object but {type(values).__name__}")
            continue
        if _SURROGATE_ESCAPE.search(line) and _invalid_unicode(values):
            yield Row(source.name, number, None, "holds a lone UTF-16 surrogate (such as \\ud800): not valid Unicode")
            continue
        yield Row(source.name, number, values)


class _LineTooLong(Exception):
    pass


def _csv_records(source: Source, file: IO[bytes], limit: int) -> Iterator[tuple[list[str] | None, str | None]]:
    """Each record read strictly, or (None and) why it is malformed: a quote where none may be (the record
    spans the lines up to where the csv module saw the fault, and reading goes on at the next line), or a
    line that is not UTF-8. A line longer than ``limit``, or a field over it, stops the run: past it the
    records cannot be told apart."""
    bad_lines: list[int] = []

    def decoded() -> Iterator[str]:
        for number, line in enumerate(_lines(file, limit), 1):
            if line is None:
                raise _LineTooLong(number)
            try:
                yield line.decode("utf-8")
            except UnicodeDecodeError:
                bad_lines.append(number)
                yield line.decode("utf-8", "surrogateescape")

    csv.field_size_limit(limit)  # the module's own default (128 KiB) is below what a long text can be
    records = csv.reader(decoded(), strict=True)
    last = 0  # the last line of the previous record
    try:
        while True:
            try:
                record: list[str] | None = next(records)
                problem = None
            except StopIteration:
                return
            except csv.Error as exc:
                if "field limit" in str(exc):
                    raise TableError(
                        f"{source.name}: a field near line {records.line_num:,} is longer than {limit:,} "
                        "characters (--max-row-bytes)"
                    ) from None
                record, problem = None, f"not valid CSV ({_lines_named(last + 1, records.line_num)}): {exc}"
            first, last = last + 1, records.line_num
            if record is not None and bad_lines and bad_lines[-1] >= first:
                record, problem = None, f"not UTF-8 text (line {next(n for n in bad_lines if n >= first)})"
            yield record, problem
    except _LineTooLong as exc:
        raise TableError(
            f"{source.name}: line {exc.args[0]:,} is longer than {limit:,} bytes (--max-row-bytes)"
        ) from None


def _lines_named(first: int, last: int) -> str:
    return f"line {last}" if first >= last else f"lines {first} to {last}"


def _read_csv(source: Source, file: IO[bytes], limit: int) -> Iterator[Row]:
    records = _csv_records(source, file, limit)
    header, problem = next(records, ([], None))
    if header is None:
        raise TableError(f"{source.name}: the header is {problem}")
    if not header:
        return
    for number, (record, problem) in enumerate(records, 1):
        if record is None:
            yield Row(source.name, number, None, problem)
        elif not record:
            yield Row(source.name, number, None, "empty row")
        elif len(record) != len(header):
            yield Row(source.name, number, None, f"{len(record)} fields where the header has {len(header)}")
        else:
            yield Row(source.name, number, dict(zip(header, record)))


def _read_parquet(source: Source, batch_rows: int) -> Iterator[Row]:
    pq = _parquet()
    try:
        parquet = pq.ParquetFile(source.path)
    except Exception as exc:  # pyarrow raises its own ArrowInvalid for a file that is not Parquet
        raise TableError(f"{source.name}: not a Parquet file ({exc})") from None
    number = 0
    for batch in parquet.iter_batches(batch_size=batch_rows):
        for values in batch.to_pylist():
            number += 1
            yield Row(source.name, number, values)


def columns(source: Source) -> list[str] | None:
    """The columns a CSV file's header or a Parquet file's schema names (None for JSON Lines, whose rows
    name their own, for standard input, read only once, and for an empty file)."""
    if source.path == STDIN or source.format == JSONL:
        return None
    if source.format == PARQUET:
        try:
            return list(_parquet().read_schema(source.path).names)
        except Exception as exc:  # pyarrow raises its own ArrowInvalid for a file that is not Parquet
            raise TableError(f"{source.name}: not a Parquet file ({exc})") from None
    try:
        with open(source.path, "rb") as file:
            header, problem = next(_csv_records(source, file, MAX_ROW_BYTES), ([], None))
    except OSError as exc:
        raise TableError(f"{source.name}: {exc.strerror or exc}") from None
    if header is None:
        raise TableError(f"{source.name}: the header is {problem}")
    return header or None


def write(rows: Sequence[dict[str, Any]], path: Path, format: str, columns: Sequence[str] | None) -> None:
    """One part. ``columns`` fixes a CSV part's columns (every part gets the header; ``join`` keeps the first)."""
    if format == PARQUET:
        pa, pq = _arrow(), _parquet()
        pq.write_table(pa.Table.from_pylist(list(rows)), path)
        return
    with open(path, "w", encoding="utf-8", newline="") as file:
        if format == JSONL:
            for row in rows:
                file.write(json.dumps(row, ensure_ascii=False, default=str))
                file.write("\n")
            return
        writer = csv.writer(file)
        names = list(columns or [])
        writer.writerow(names)
        for row in rows:
            writer.writerow([_cell(row.get(name)) for name in names])


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False, default=str)
    return value


def join(parts: Sequence[Path], out: Path, format: str) -> None:
    """The parts one after another in ``out``, a part at a time in memory."""
    if format == PARQUET:
        pa, pq = _arrow(), _parquet()
        schema = pa.unify_schemas([pq.read_schema(part) for part in parts], promote_options="permissive")
        with pq.ParquetWriter(out, schema) as writer:
            for part in parts:
                writer.write_table(pq.read_table(part).cast(schema))
        return
    with open(out, "wb") as joined:
        for index, part in enumerate(parts):
            with open(part, "rb") as file:
                if format == CSV and index:
                    file.readline()  # the header, written once
                shutil.copyfileobj(file, joined, 1 << 20)


def _arrow() -> Any:
    try:
        import pyarrow
    except ImportError:
        raise TableError("Parquet needs pyarrow: pip install -r requirements-bulk.txt") from None
    return pyarrow


def _parquet() -> Any:
    _arrow()
    import pyarrow.parquet

    return pyarrow.parquet
