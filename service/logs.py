"""Logging: one JSON object per line, written by a thread of its own.

A log call on the event loop only keeps the record; a writer thread formats the
records and writes them to stderr in one write every ``WRITE_INTERVAL`` seconds,
at once for a warning or an error, and before the process exits. Waking a thread
or writing for every access-log line would cost each request tens of
microseconds of event-loop time. The request id is taken from the context when
the record is kept, while it is still the request's.

The access log (``log_access``), one line per request, skips even the LogRecord:
it keeps the line's fields, and the writer formats them as it would the record.
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
import threading
import time
from collections import deque
from typing import Any, TextIO

WRITE_INTERVAL = 0.1
# The id of the request being served, for every log line written on its behalf (set by RequestContext).
REQUEST_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)
access_log = logging.getLogger("service.access")
_writer: BackgroundWriter | None = None  # set by configure_logging


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
        # LogRecords, and (time, fields) of access-log lines
        self._records: deque[logging.LogRecord | tuple[float, dict[str, Any]]] = deque()
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

    def keep_access_line(self, fields: dict[str, Any]) -> None:
        self._records.append((time.time(), fields))

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
            if isinstance(record, tuple):
                created, fields = record
                entry = {
                    "ts": round(created, 3),
                    "level": "info",
                    "logger": access_log.name,
                    "msg": "request",
                    **fields,
                }
                lines.append(json.dumps(entry, ensure_ascii=False) + "\n")
                continue
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
    logging._srcfile = None
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    global _writer
    writer = _writer = BackgroundWriter(sys.stderr)
    root = logging.getLogger()
    for old in root.handlers:
        if isinstance(old, BackgroundWriter):  # configured before: write out what it kept
            old.close()
    root.handlers[:] = [writer]
    root.setLevel(level.upper())
    return writer


def log_access(fields: dict[str, Any]) -> None:
    """One access-log line (``fields`` hold the request id), if the log level lets info through."""
    if not access_log.isEnabledFor(logging.INFO):
        return
    if _writer is None:  # logging not configured by the CLI (an app built in-process)
        access_log.info("request", extra={"fields": fields})
    else:
        _writer.keep_access_line(fields)
