"""A memory limit for one benchmark command, as a container gives it: a memory cgroup of its own.

Resident memory counts the pages of files a process maps, such as a checkpoint's safetensors, which the
kernel can drop and read again when memory is short; a cgroup's limit counts them too, but reclaims
them before it kills anything. Whether a command completes under a limit is therefore the question a
user with an 8 GB machine or pod has, and peak RSS alone overstates the answer.

Needs root and a writable memory controller, cgroup v2 (``memory.max``) or v1 (``memory.limit_in_bytes``).
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

ROOTS = (Path("/sys/fs/cgroup"), Path("/sys/fs/cgroup/unified"), Path("/sys/fs/cgroup/memory"))


class MemoryLimit:
    """A memory cgroup limited to ``limit`` bytes, without swap; ``join`` (a ``preexec_fn``) moves the
    process starting into it, and its children follow."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.path, self._v2 = _new_group()
        if self._v2:
            (self.path / "memory.max").write_text(str(limit))
            if (self.path / "memory.swap.max").exists():
                (self.path / "memory.swap.max").write_text("0")
        else:
            (self.path / "memory.limit_in_bytes").write_text(str(limit))

    def join(self) -> None:
        (self.path / "cgroup.procs").write_text(str(os.getpid()))

    def peak(self) -> int:
        """The most memory the group held, page cache included, as the limit counted it."""
        name = "memory.peak" if self._v2 else "memory.max_usage_in_bytes"
        return int((self.path / name).read_text())

    def oom_kills(self) -> int:
        if self._v2:
            events = dict(line.split() for line in (self.path / "memory.events").read_text().splitlines())
            return int(events.get("oom_kill", 0))
        control = dict(line.split() for line in (self.path / "memory.oom_control").read_text().splitlines())
        return int(control.get("oom_kill", 0))

    def remove(self) -> None:
        try:
            self.path.rmdir()
        except OSError:  # a process of the group still ending: the empty group is harmless
            pass


def _new_group() -> tuple[Path, bool]:
    for root in ROOTS:
        v2 = (root / "cgroup.controllers").exists()
        if v2 and not _memory_for_children(root):
            continue
        if not v2 and not (root / "memory.limit_in_bytes").exists():
            continue
        path = root / f"bench-{uuid.uuid4().hex[:8]}"
        try:
            path.mkdir()
        except OSError:
            continue
        return path, v2
    raise SystemExit("a memory limit needs root and a writable memory cgroup (v2 memory.max or v1)")


def _memory_for_children(root: Path) -> bool:
    """cgroup v2 gives a child the memory controller only when its parent hands it down."""
    if "memory" not in (root / "cgroup.controllers").read_text().split():
        return False
    control = root / "cgroup.subtree_control"
    if "memory" not in control.read_text().split():
        try:
            control.write_text("+memory")
        except OSError:
            return False
    return True
