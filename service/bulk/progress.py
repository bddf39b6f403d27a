"""How far a bulk run is: a progress bar on a terminal, a plain line every so often otherwise.

The bar is tqdm's (rows done, rows per second, time left). Logs and CI capture standard
error without a terminal, where a bar would be thousands of carriage returns: there a line
such as ``12,288 of 100,000 rows (12%), 812 rows/s, 0:01:48 left`` is written every
``interval`` seconds, and at the end unless the last line already said it.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from datetime import timedelta
from typing import IO, Any

BAR, LINES, OFF = "bar", "lines", "off"


def _duration(seconds: float) -> str:
    return str(timedelta(seconds=round(seconds)))


class Progress:
    def __init__(
        self,
        total: int | None,
        *,
        done: int = 0,
        mode: str = "auto",
        stream: IO[str] | None = None,
        interval: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.stream = stream or sys.stderr
        if mode == "auto":
            mode = BAR if self.stream.isatty() else LINES
        self.mode = mode
        self.total = total
        self.done = done
        self._resumed_at = done
        self.interval = interval
        self.clock = clock
        self._started = self._last = clock()
        self._said: int | None = None  # the rows done when the last line was written
        self._bar: Any = None
        if mode == BAR:
            from tqdm import tqdm

            self._bar = tqdm(total=total, initial=done, unit=" rows", file=self.stream, dynamic_ncols=True)

    def advance(self, rows: int) -> None:
        self.done += rows
        if self._bar is not None:
            self._bar.update(rows)
        elif self.mode == LINES and self.clock() - self._last >= self.interval:
            self._line()

    def line(self) -> str:
        elapsed = max(self.clock() - self._started, 1e-9)
        rate = (self.done - self._resumed_at) / elapsed
        if self.total is None:
            return f"{self.done:,} rows, {rate:,.0f} rows/s"
        share = self.done / self.total if self.total else 1.0
        left = f", {_duration((self.total - self.done) / rate)} left" if rate > 0 and self.done < self.total else ""
        return f"{self.done:,} of {self.total:,} rows ({share:.0%}), {rate:,.0f} rows/s{left}"

    def _line(self) -> None:
        self._last = self.clock()
        self._said = self.done
        print(self.line(), file=self.stream, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        elif self.mode == LINES and self._said != self.done:
            self._line()
