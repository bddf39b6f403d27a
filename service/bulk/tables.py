"""Rows in and out of JSON Lines, CSV and Parquet files.

A row is a dict of column values. Reading never stops at a bad record: a line that is
not a JSON object, or a CSV record with the wrong number of fields, comes back as a row
with a ``problem`` and the run decides (``--on-bad-row``). Writing goes to one file per
chunk (a part); ``join`` makes the parts one file. Parquet needs pyarrow
(``requirements-bulk.txt``), imported only when a Parquet file is read or written.
"""

from __future__ import annotations

import csv
import glob
import io
import json
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


def format_of(path: str, given: str | None) -> str:
    if given:
        return given
    found = SUFFIXES.get(Path(path).suffix.lower())
    if found is None:
        raise TableError(
            f"{path}: cannot tell its format from its name; name it *.jsonl, *.csv or *.parquet or pass --format"
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


def count_rows(source: Source) -> int | None:
    """How many rows ``read`` will give (None for standard input): for the progress bar's time left."""
    if source.path == STDIN:
        return None
    if source.format == PARQUET:
        return int(_parquet().ParquetFile(source.path).metadata.num_rows)
    if source.format == JSONL:
        with open(source.path, "rb") as file:
            return sum(1 for _ in file)
    with open(source.path, encoding="utf-8", newline="") as text:
        return max(0, sum(1 for _ in csv.reader(text)) - 1)


def read(source: Source, batch_rows: int = 4096) -> Iterator[Row]:
    try:
        if source.format == PARQUET:
            yield from _read_parquet(source, batch_rows)
        elif source.path == STDIN:
            yield from (_read_jsonl if source.format == JSONL else _read_csv)(source, sys.stdin.buffer)
        else:
            with open(source.path, "rb") as file:
                yield from (_read_jsonl if source.format == JSONL else _read_csv)(source, file)
    except OSError as exc:
        raise TableError(f"{source.name}: {exc.strerror or exc}") from None


def _read_jsonl(source: Source, file: IO[bytes]) -> Iterator[Row]:
    for number, line in enumerate(file, 1):
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
        yield Row(source.name, number, values)


def _read_csv(source: Source, file: IO[bytes]) -> Iterator[Row]:
    text = io.TextIOWrapper(file, encoding="utf-8", newline="")
    records = csv.reader(text)
    try:
        header = next(records, None)
        if header is None:
            return
        for number, record in enumerate(records, 1):
            if not record:
                yield Row(source.name, number, None, "empty row")
            elif len(record) != len(header):
                yield Row(source.name, number, None, f"{len(record)} fields where the header has {len(header)}")
            else:
                yield Row(source.name, number, dict(zip(header, record)))
    except UnicodeDecodeError as exc:
        raise TableError(f"{source.name}: not UTF-8 text ({exc.reason} at byte {exc.start} of a block)") from None
    except csv.Error as exc:
        raise TableError(f"{source.name}: not valid CSV near line {records.line_num}: {exc}") from None
    finally:
        text.detach()  # the caller closes the file


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
        with open(source.path, encoding="utf-8", newline="") as file:
            return next(csv.reader(file), None)
    except UnicodeDecodeError as exc:
        raise TableError(f"{source.name}: not UTF-8 text ({exc.reason})") from None


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
