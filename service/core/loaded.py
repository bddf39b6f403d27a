"""One loaded version of a model: its engine, and how many requests still use it.

The registry (``service.core.registry``) makes these and swaps them; a call
(``service.core.calls``) holds one while it is answered. Both stand on this
module, so neither needs the other to name it.
"""

from __future__ import annotations

import asyncio

from service.core.engine import Engine
from service.core.metrics import ModelMetrics


class Loaded:
    """One loaded version: its engine, and how many requests still use it."""

    def __init__(
        self, name: str, version: str, engine: Engine, view: ModelMetrics, fingerprint: str, *, shadow: bool = False
    ) -> None:
        self.name = name
        self.version = version
        self.shadow = shadow  # loaded as a shadow version: a session of its own, metrics not scraped
        self.engine = engine
        self.view = view
        self.fingerprint = fingerprint
        self.in_flight = 0
        self.idle = asyncio.Event()
        self.idle.set()

    def acquire(self) -> None:
        self.in_flight += 1
        self.idle.clear()

    def release(self) -> None:
        self.in_flight -= 1
        if self.in_flight == 0:
            self.idle.set()
