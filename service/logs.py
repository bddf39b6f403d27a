"""Logging: one JSON object per line, written by a thread of its own.

A log call on the event loop only keeps the record; a writer thread formats the
records and writes them to stderr in one write every ``WRITE_INTERVAL`` seconds,
at once for a warning or an error, and before the process exits. Waking a thread
or writing for every access-log line would cost each request tens of
microseconds of event-loop time. The request id is taken from the context when
the record is kept, while it is still the request's.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
from collections import deque
from typing import TextIO

from service.middleware import REQUEST_ID

WRITE_INTERVAL = 0.1


class JsonFormatter(logging.Formatter):
    """One JSON object per line; messages never include request bodies."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
            **getattr(record, "fields", {}),
        }
        request_id = getattr(record, "request_id", None)
        if request_id is not None:
            entry.setdefault("request_id", request_id)
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


class BackgroundWriter(logging.Handler):
    """Keeps records for the writer thread; ``close`` writes what is left and stops it."""

    def __init__(self, stream: TextIO, interval: float = WRITE_INTERVAL) -> None:
        super().__init__()
        self.setFormatter(JsonFormatter())
        self._stream = stream
        self._interval = interval
        self._records: deque[logging.LogRecord] = deque()
        self._wake = threading.Event()
        self._stopping = False
        self._thread = threading.Thread(target=self._write_until_stopped, name="log-writer", daemon=True)
        self._thread.start()

    def emit(self, record: logging.LogRecord) -> None:
        if not hasattr(record, "request_id"):
            record.request_id = REQUEST_ID.get()
        if record.args:  # fixed now: the arguments may change before the writer formats them
            record.msg, record.args = record.getMessage(), None
        self._records.append(record)
        if record.levelno >= logging.WARNING:
            self._wake.set()

    def _write_until_stopped(self) -> None:
        while not self._stopping:
            self._wake.wait(self._interval)
            self._wake.clear()
            self._write_kept()
        self._write_kept()

    def _write_kept(self) -> None:
        lines = []
        while self._records:
            record = self._records.popleft()
            try:
                lines.append(self.format(record) + "\n")
            except Exception:
                self.handleError(record)
        if lines:
            try:
                self._stream.write("".join(lines))
                self._stream.flush()
            except (OSError, ValueError):  # stderr closed: nothing left to tell
                pass

    def close(self) -> None:
        self._stopping = True
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join()
        super().close()


def configure_logging(level: str) -> BackgroundWriter:
    """Send every log record through the writer thread; close the returned handler at exit."""
    # Fields the JSON lines never show, and the stack walk that finds the caller's
    # file and line, cost every record; the logging HOWTO's "Optimization" knobs.
    logging._srcfile = None  # type: ignore[attr-defined]
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    writer = BackgroundWriter(sys.stderr)
    root = logging.getLogger()
    for old in root.handlers:
        old.close()
    root.handlers[:] = [writer]
    root.setLevel(level.upper())
    return writer
