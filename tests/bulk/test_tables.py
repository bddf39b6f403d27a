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


def test_bad_utf8_past_the_first_block_is_a_bad_row_and_reading_goes_on(tmp_path):
    path = tmp_path / "in.csv"
    path.write_bytes(b"text\n" + b"".join(b"row %d\n" % i for i in range(600)) + b"\xff\xfe bad\nafter\n")
    source = tables.Source(str(path), tables.CSV)
    read = rows_of(path, tables.CSV)
    assert read[-2:] == [(601, None, "not UTF-8 text (line 602)"), (602, {"text": "after"}, None)]
    assert tables.count_rows(source) == 602
    jsonl = tmp_path / "in.jsonl"
    jsonl.write_bytes(b'{"text": "ok"}\n{"text": "\xff"}\n')
    assert rows_of(jsonl, tables.JSONL)[1][2].startswith("not JSON (")  # one line, not the file
    header = tmp_path / "header.csv"
    header.write_bytes(b"t\xffext\nx\n")
    with pytest.raises(tables.TableError, match=r"header.csv: the header is not UTF-8 text \(line 1\)"):
        rows_of(header, tables.CSV)


def test_a_lone_surrogate_is_a_bad_row(tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_text('{"text": "x\\ud800y"}\n{"text": "ok", "note": ["\\udfff"]}\n{"text": "pair \\ud83d\\ude00"}\n')
    problem = "holds a lone UTF-16 surrogate (such as \\ud800): not valid Unicode"
    assert rows_of(path, tables.JSONL) == [
        (1, None, problem),
        (2, None, problem),
        (3, {"text": "pair \U0001f600"}, None),
    ]


def test_a_stray_quote_is_a_bad_row_never_records_merged(tmp_path):
    path = tmp_path / "in.csv"
    path.write_text('id,text\n1,"oops\n2,two\n3,"three"\n4,four\n5,"open to the end\n')
    assert rows_of(path, tables.CSV) == [
        (1, None, "not valid CSV (lines 2 to 4): ',' expected after '\"'"),
        (2, {"id": "4", "text": "four"}, None),
        (3, None, "not valid CSV (line 6): unexpected end of data"),
    ]
    assert tables.count_rows(tables.Source(str(path), tables.CSV)) == 3


def test_a_field_past_the_csv_modules_own_limit_is_read_and_rows_are_bounded(tmp_path):
    path = tmp_path / "in.csv"
    path.write_text('text\nfirst\n"' + "a" * 200_000 + '"\nlast\n')
    assert [len(values["text"]) for _, values, _ in rows_of(path, tables.CSV)] == [5, 200_000, 4]
    source = tables.Source(str(path), tables.CSV)
    with pytest.raises(tables.TableError, match=r"in.csv: line 3 is longer than 1,000 bytes \(--max-row-bytes\)"):
        list(tables.read(source, max_row_bytes=1000))
    with pytest.raises(tables.TableError, match=r"in.csv: line 3 is longer than 1,000 bytes"):
        tables.count_rows(source, 1000)
    spread = tmp_path / "spread.csv"  # a quoted field over many short lines
    spread.write_text('text\n"' + "a\n" * 1000 + '"\n')
    with pytest.raises(tables.TableError, match=r"a field near line \d+ is longer than 1,000 characters"):
        list(tables.read(tables.Source(str(spread), tables.CSV), max_row_bytes=1000))
    jsonl = tmp_path / "in.jsonl"
    jsonl.write_text('{"text": "' + "a" * 5000 + '"}\n{"text": "next"}')
    read = list(tables.read(tables.Source(str(jsonl), tables.JSONL), max_row_bytes=1000))
    assert [(row.number, row.values, row.problem) for row in read] == [
        (1, None, "longer than 1,000 bytes (--max-row-bytes)"),
        (2, {"text": "next"}, None),
    ]
    assert tables.count_rows(tables.Source(str(jsonl), tables.JSONL)) == 2  # the last line has no newline


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


def test_the_last_progress_line_is_written_once():
    now = [0.0]
    stream = io.StringIO()
    progress = Progress(10, stream=stream, interval=5, clock=lambda: now[0])
    progress.advance(4)
    now[0] = 5.0
    progress.advance(6)  # the interval is up: the line says 10 of 10
    progress.close()  # and the end has nothing new to say
    assert stream.getvalue().splitlines() == ["10 of 10 rows (100%), 2 rows/s"]
    progress = Progress(10, stream=(stream := io.StringIO()), interval=5, clock=lambda: now[0])
    now[0] = 7.0
    progress.advance(10)  # within the interval: only the end writes a line
    progress.close()
    assert stream.getvalue().splitlines() == ["10 of 10 rows (100%), 5 rows/s"]
