"""The log writer: JSON lines written by a thread, in batches, and nothing lost at exit."""

from __future__ import annotations

import io
import json
import logging
import time

import pytest

from service import logs


class Captured(io.StringIO):
    """A stream that counts its writes (the writer batches lines into one write)."""

    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, text: str) -> int:
        self.writes += 1
        return super().write(text)


def lines(stream: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


@pytest.fixture
def logger():
    logger = logging.getLogger("tests.logs")
    logger.propagate = False
    yield logger
    for handler in logger.handlers:
        handler.close()
    logger.handlers.clear()


def test_records_are_kept_then_written_together_with_their_request_id(logger):
    stream = Captured()
    logger.addHandler(logs.BackgroundWriter(stream, interval=60))
    logger.setLevel("INFO")
    token = logs.REQUEST_ID.set("req-1")
    try:
        logger.info("first %s", "arg", extra={"fields": {"status": 200}})
    finally:
        logs.REQUEST_ID.reset(token)
    logger.info("second")
    assert stream.getvalue() == ""  # an info line waits for the interval (a minute here) or the close
    logger.handlers[0].close()
    assert stream.writes == 1
    first, second = lines(stream)
    assert {k: first[k] for k in ("level", "logger", "msg", "status", "request_id")} == {
        "level": "info",
        "logger": "tests.logs",
        "msg": "first arg",
        "status": 200,
        "request_id": "req-1",
    }
    assert second["msg"] == "second" and "request_id" not in second


def test_a_warning_is_written_at_once_with_its_traceback(logger):
    stream = Captured()
    logger.addHandler(logs.BackgroundWriter(stream, interval=60))
    try:
        raise ValueError("boom")
    except ValueError:
        logger.exception("it failed")
    deadline = time.monotonic() + 30  # well inside the 60 s interval: woken at once, not by its timer
    while not stream.getvalue() and time.monotonic() < deadline:
        time.sleep(0.01)
    (entry,) = lines(stream)
    assert entry["level"] == "error" and entry["msg"] == "it failed"
    assert "ValueError: boom" in entry["exc"]


def test_access_lines_have_the_shape_of_an_access_record(monkeypatch):
    stream = Captured()
    writer = logs.BackgroundWriter(stream, interval=60)
    monkeypatch.setattr(logs, "_writer", writer)
    fields = {"request_id": "abc", "method": "POST", "path": "/predict", "status": 200, "duration_ms": 1.5}
    previous = logs.access_log.level
    try:
        logs.access_log.setLevel(logging.INFO)
        logs.log_access(fields)
        logs.access_log.setLevel(logging.WARNING)  # LOG_LEVEL=warning: no access lines
        logs.log_access({**fields, "request_id": "not written"})
    finally:
        logs.access_log.setLevel(previous)
    writer.close()
    (entry,) = lines(stream)
    assert entry.pop("ts") == pytest.approx(time.time(), abs=60)
    assert entry == {"level": "info", "logger": "service.access", "msg": "request", **fields}


def test_without_the_writer_access_lines_go_through_logging(monkeypatch, caplog):
    monkeypatch.setattr(logs, "_writer", None)
    with caplog.at_level(logging.INFO, logger="service.access"):
        logs.log_access({"request_id": "abc", "status": 404})
    (record,) = [r for r in caplog.records if r.name == "service.access"]
    assert (record.getMessage(), record.fields) == ("request", {"request_id": "abc", "status": 404})


def test_configure_logging_routes_the_root_logger_through_one_writer(monkeypatch):
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    for name in ("_srcfile", "logThreads", "logProcesses", "logMultiprocessing"):
        monkeypatch.setattr(logging, name, getattr(logging, name))
    monkeypatch.setattr(logs, "_writer", None)
    try:
        first = logs.configure_logging("warning")
        second = logs.configure_logging("debug")  # configured again: the first writer is closed
        assert root.handlers == [second] and logs._writer is second
        assert root.level == logging.DEBUG and not first._thread.is_alive()
    finally:
        for handler in root.handlers:
            handler.close()
        root.handlers[:], root.level = saved[0], saved[1]
