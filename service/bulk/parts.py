"""An output written in parts, so that a run can stop anywhere and leave nothing half-written.

The input is cut into chunks of a fixed number of rows; chunk N's answers go to
``OUT.parts/part-N.EXT``, written to a temporary name and renamed, then ``part-N.json``
(its rows and bad rows) is written the same way: that file is the commit. A run that
is killed loses at most the chunk it was working on; ``--resume`` counts the committed
parts, skips their rows and goes on. When every chunk is in, the parts are joined into a
temporary file beside ``OUT`` that is renamed to ``OUT`` (atomic on one file system),
and only then is the parts directory removed. ``run.json`` in the directory records what
the run reads and how it answers; a resume that would read or answer differently is refused.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from service.bulk import tables

RUN_FILE = "run.json"


class PartsError(Exception):
    """The output or its parts are not in a state this run may write to; the message says what to do."""


def _atomic_write(path: Path, data: bytes) -> None:
    temporary = path.with_name(path.name + ".tmp")
    with open(temporary, "wb") as file:
        file.write(data)
        file.flush()
        os.fsync(file.fileno())
    os.replace(temporary, path)


def _fsync(path: Path) -> None:
    with open(path, "rb") as file:
        os.fsync(file.fileno())


class Parts:
    def __init__(self, out: Path, format: str) -> None:
        self.out = out
        self.format = format
        self.directory = out.with_name(out.name + ".parts")

    def _data(self, index: int) -> Path:
        return self.directory / f"part-{index:06d}.{self.format}"

    def _commit(self, index: int) -> Path:
        return self.directory / f"part-{index:06d}.json"

    def open(self, run: dict[str, Any], *, resume: bool, overwrite: bool) -> int:
        """Get ready to write the parts of ``run``; returns how many chunks an earlier run already committed."""
        if self.out.exists() and not overwrite:
            raise PartsError(f"{self.out} exists; pass --overwrite to replace it")
        if self.directory.exists() and overwrite and not resume:
            self.discard()
        if self.directory.exists():
            if not resume:
                raise PartsError(
                    f"{self.directory} holds an interrupted run's parts; pass --resume to continue it, "
                    "or --overwrite to start again"
                )
            try:
                earlier = json.loads((self.directory / RUN_FILE).read_text(encoding="utf-8"))
            except (OSError, ValueError):
                raise PartsError(f"{self.directory} is not an interrupted run's parts; remove it") from None
            changed = sorted(key for key in {*earlier, *run} if earlier.get(key) != run.get(key))
            if changed:
                raise PartsError(
                    f"cannot resume: this run differs from the interrupted one in {', '.join(changed)}; "
                    "run it as it was, or pass --overwrite instead of --resume to start again"
                )
            done = 0
            while self._commit(done).exists():
                done += 1
            for stale in self.directory.glob("part-*"):  # a part written but not committed, or a temporary file
                if stale.suffix == ".tmp" or int(stale.name[5:11]) >= done:
                    stale.unlink()
            return done
        if resume:
            raise PartsError(f"nothing to resume: {self.directory} does not exist")
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.directory.mkdir()
        _atomic_write(self.directory / RUN_FILE, json.dumps(run, indent=1).encode())
        return 0

    def write(self, index: int, rows: Sequence[dict[str, Any]], columns: Sequence[str] | None, summary: dict) -> None:
        """Commit chunk ``index``: its rows, then the summary that says they are all there."""
        data = self._data(index)
        temporary = data.with_name(data.name + ".tmp")
        tables.write(rows, temporary, self.format, columns)
        _fsync(temporary)
        os.replace(temporary, data)
        _atomic_write(self._commit(index), json.dumps(summary).encode())

    def discard(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)

    def summaries(self, count: int) -> list[dict]:
        return [json.loads(self._commit(index).read_text(encoding="utf-8")) for index in range(count)]

    def finish(self, count: int, columns: Sequence[str] | None) -> None:
        """Join the ``count`` parts into the output, atomically, then remove them."""
        temporary = self.out.with_name(f".{self.out.name}.joining")
        if count:
            tables.join([self._data(index) for index in range(count)], temporary, self.format)
        else:  # no rows at all: an empty file of the format (a CSV file still has its header)
            tables.write([], temporary, self.format, columns)
        _fsync(temporary)
        os.replace(temporary, self.out)
        shutil.rmtree(self.directory)
