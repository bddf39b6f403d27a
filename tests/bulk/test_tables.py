"""Reading and writing the three formats: bad records come back as rows with a problem, parts join into one file."""

from __future__ import annotations

import io

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from service.bulk import tables
from service.bulk.progress import Progress


def rows_of(path, format):
    return [(row.number, row.values, row.problem) for row in tables.read(tables.Source(str(path), format))]


def test_csv_records_that_do_not_fit_the_header_are_bad_rows(tmp_path):
    path = tmp_path / "in.csv"
    path.write_text('text,id\n"a, quoted\nline",1\n\nshort\n"b",2,extra\nc,3\n')
    assert rows_of(path, tables.CSV) == [
        (1, {"text": "a, quoted\nline", "id": "1"}, None),
        (2, None, "empty row"),
        (3, None, "1 fields where the header has 2"),
        (4, None, "3 fields where the header has 2"),
        (5, {"text": "c", "id": "3"}, None),
    ]
    assert tables.count_rows(tables.Source(str(path), tables.CSV)) == 5


def test_a_file_that_is_not_utf8_stops_the_run_with_its_name(tmp_path):
    path = tmp_path / "in.csv"
    path.write_bytes(b"text\n\xff\xfe bad\n")
    with pytest.raises(tables.TableError, match=r"in.csv: not UTF-8 text"):
        rows_of(path, tables.CSV)
    jsonl = tmp_path / "in.jsonl"
    jsonl.write_bytes(b'{"text": "ok"}\n{"text": "\xff"}\n')
    assert rows_of(jsonl, tables.JSONL)[1][2].startswith("not JSON (")  # one line, not the file


def test_parquet_parts_of_different_schemas_join_into_one(tmp_path):
    first, second = tmp_path / "a.parquet", tmp_path / "b.parquet"
    tables.write([{"id": 1, "note": None}], first, tables.PARQUET, None)
    tables.write([{"id": 2, "note": "seen"}], second, tables.PARQUET, None)
    out = tmp_path / "out.parquet"
    tables.join([first, second], out, tables.PARQUET)
    assert pq.read_table(out).to_pylist() == [{"id": 1, "note": None}, {"id": 2, "note": "seen"}]
    assert pq.read_schema(out).field("note").type == pa.string()


def test_csv_parts_keep_one_header_and_write_nested_values_as_json(tmp_path):
    parts = [tmp_path / "a.csv", tmp_path / "b.csv"]
    tables.write([{"text": "x", "tags": ["a", "b"]}], parts[0], tables.CSV, ["text", "tags", "score"])
    tables.write([{"text": "y", "score": 0.5}], parts[1], tables.CSV, ["text", "tags", "score"])
    out = tmp_path / "out.csv"
    tables.join(parts, out, tables.CSV)
    assert out.read_bytes() == b'text,tags,score\r\nx,"[""a"", ""b""]",\r\ny,,0.5\r\n'


def test_progress_lines_say_rows_rate_and_time_left():
    stream = io.StringIO()
    progress = Progress(1000, done=200, stream=stream, interval=3600)
    assert progress.mode == "lines"  # a StringIO is no terminal
    progress.advance(100)
    assert stream.getvalue() == ""  # not before the interval
    line = progress.line()
    assert line.startswith("300 of 1,000 rows (30%), ") and " rows/s, " in line and line.endswith(" left")
    progress.close()
    (written,) = stream.getvalue().splitlines()  # one line at the end
    assert written.startswith("300 of 1,000 rows (30%), ")
    unknown = Progress(None, stream=io.StringIO())
    unknown.advance(5)
    assert unknown.line().startswith("5 rows, ")
