"""An opt-in response cache: least recently used, bounded in entries and in bytes.

Intent and moderation traffic repeats heavily; a hit skips tokenizing, the queue
and the session. Entries are one input's logits and what happened to it (its
``InputReport``), keyed by whatever decides them (the bundle's model hash, the
exact text and the options that change the logits).
"""

from __future__ import annotations

import sys
from collections import OrderedDict
from collections.abc import Hashable
from typing import Any

import numpy as np

# What an entry's report (a small frozen dataclass) is counted as.
REPORT_BYTES = 64


class LogitsCache:
    def __init__(self, max_entries: int, max_bytes: int) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._entries: OrderedDict[Hashable, tuple[tuple[np.ndarray, Any], int]] = OrderedDict()
        self.bytes = 0
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: Hashable) -> tuple[np.ndarray, Any] | None:
        entry = self._entries.get(key)
        if entry is None:
            self.misses += 1
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        return entry[0]

    def put(self, key: Hashable, logits: np.ndarray, report: Any) -> None:
        size = _size(key) + logits.nbytes + REPORT_BYTES
        if size > self.max_bytes or key in self._entries:
            return
        self._entries[key] = ((logits, report), size)
        self.bytes += size
        while len(self._entries) > self.max_entries or self.bytes > self.max_bytes:
            _, (_, evicted) = self._entries.popitem(last=False)
            self.bytes -= evicted


def _size(key: Hashable) -> int:
    if isinstance(key, tuple):
        return sum(sys.getsizeof(part) for part in key)
    return sys.getsizeof(key)
