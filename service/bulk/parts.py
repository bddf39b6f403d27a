"""An output written in parts, so that a run can stop anywhere and leave nothing half-written.

The input is cut into chunks of a fixed number of rows; chunk N's answers go to
``OUT.parts/part-N.EXT``, written to a temporary name and renamed, then ``part-N.json``
(its rows and bad rows) is written the same way: that file is the commit. A run that
is killed loses at most the chunk it was working on; ``--resume`` counts the committed
parts, skips their rows and goes on. When every chunk is in, the parts are joined into a
temporary file beside ``OUT`` that is renamed to ``OUT`` (atomic on one file system),
and only then is the parts directory removed. ``run.json`` in the directory records what
the run reads and how it answers; a resume that would read or answer differently is refused.

A run holds an exclusive lock (``flock``) on the parts directory from the moment it exists
until it is removed: a second run on the same output, a ``--resume`` or an ``--overwrite``,
is refused while the first is alive, and the lock goes with the process however it ends. A
new directory is made under a temporary name, locked and filled with ``run.json`` before it
is renamed into place, so no other run can ever lock it half made.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import stat
import tempfile
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


def check_output(out: Path, *, overwrite: bool) -> None:
    """PartsError unless ``out`` can be written by a run: checked before any row is scored."""
    if out.is_dir():
        raise PartsError(f"{out} is a directory; name the file to write")
    if out.exists() or out.is_symlink():
        if not overwrite:
            raise PartsError(f"{out} exists; pass --overwrite to replace it")
        if not stat.S_ISREG(out.lstat().st_mode):
            raise PartsError(f"{out} is not a regular file; name the file to write")
    parent = out.parent
    for place in (parent, *parent.parents):  # the nearest existing directory must be one, and writable
        if place.exists():
            if not place.is_dir():
                raise PartsError(f"{out}: {place} is not a directory")
            if not os.access(place, os.W_OK | os.X_OK):
                raise PartsError(f"{out}: cannot write in {place}")
            return


class Locked(PartsError):
    """Another live run holds the output's parts."""


class Parts:
    def __init__(self, out: Path, format: str) -> None:
        self.out = out
        self.format = format
        self.directory = out.with_name(out.name + ".parts")
        self._lock: int | None = None  # a descriptor of the directory, flock'ed while this run owns it

    def _data(self, index: int) -> Path:
        return self.directory / f"part-{index:06d}.{self.format}"

    def _commit(self, index: int) -> Path:
        return self.directory / f"part-{index:06d}.json"

    def open(self, run: dict[str, Any], *, resume: bool, overwrite: bool) -> int:
        """Get ready to write the parts of ``run``; returns how many chunks an earlier run already committed."""
        check_output(self.out, overwrite=overwrite)
        if self.directory.exists():
            self._take(self.directory)
            if overwrite and not resume:
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
        made = Path(tempfile.mkdtemp(prefix=f".{self.directory.name}.", dir=self.out.parent))
        self._take(made)
        _atomic_write(made / RUN_FILE, json.dumps(run, indent=1).encode())
        try:
            os.rename(made, self.directory)  # fails if another run put its own (never empty) directory there
        except OSError:
            self.discard(made)
            raise Locked(f"another run started writing {self.out} at the same moment; let it finish") from None
        return 0

    def _take(self, directory: Path) -> None:
        """Lock ``directory`` for this run, or Locked when a live run holds it."""
        descriptor = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(descriptor)
            raise Locked(
                f"another run is writing {self.out} (it holds {self.directory} locked); let it finish or stop it first"
            ) from None
        self.release()
        self._lock = descriptor

    def release(self) -> None:
        if self._lock is not None:
            os.close(self._lock)  # closing the last descriptor lets go of the lock
            self._lock = None

    def write(self, index: int, rows: Sequence[dict[str, Any]], columns: Sequence[str] | None, summary: dict) -> None:
        """Commit chunk ``index``: its rows, then the summary that says they are all there."""
        data = self._data(index)
        temporary = data.with_name(data.name + ".tmp")
        tables.write(rows, temporary, self.format, columns)
        _fsync(temporary)
        os.replace(temporary, data)
        _atomic_write(self._commit(index), json.dumps(summary).encode())

    def discard(self, directory: Path | None = None) -> None:
        """Remove the parts this run holds (kept locked until they are gone, so no other run takes them half
        removed); parts it does not hold are another run's, and are left alone."""
        if self._lock is not None:
            shutil.rmtree(directory or self.directory, ignore_errors=True)
        self.release()

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
        self.release()
