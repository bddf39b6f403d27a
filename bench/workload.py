"""What the load tool sends: a seeded mix of short queries, long texts, whole documents and small batches.

Kept free of HTTP and of the test packages so the in-process floor (bench/floor.py)
draws exactly the same texts in the serving environment.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from export.texts import IN_DOMAIN, LONG

SHORT_TEXTS = [t for t in IN_DOMAIN if t]
# About 5.3 characters a token for the default model's tokenizer on these texts.
CHARS_PER_TOKEN = 5.3


def _documents(count: int = 16, shortest: int = 1000, longest: int = 5000) -> list[str]:
    """Documents of about ``shortest`` to ``longest`` tokens, each a different run of the long texts."""
    pieces = LONG + SHORT_TEXTS
    documents = []
    for index in range(count):
        target = CHARS_PER_TOKEN * (shortest + (longest - shortest) * index / (count - 1))
        parts: list[str] = []
        while sum(map(len, parts)) < target:
            parts.append(pieces[(index * 5 + len(parts)) % len(pieces)])
        documents.append(" ".join(parts))
    return documents


DOCUMENTS = _documents()


@dataclass
class Mix:
    """Share of single long texts and of 8-text batches; the rest are single short queries.

    ``distinct`` > 0 draws short queries from only that many texts: a repeating
    workload, the kind a response cache is for.
    """

    long_fraction: float = 0.0
    batch_fraction: float = 0.0
    distinct: int = 0
    document_fraction: float = 0.0  # whole documents, read in windows (``windows: true``)
    rng: random.Random = field(default_factory=lambda: random.Random(0))

    @property
    def short_texts(self) -> list[str]:
        return SHORT_TEXTS[: self.distinct] if self.distinct else SHORT_TEXTS

    def draw(self) -> tuple[str, str | list[str]]:
        """(kind, inputs) of the next request."""
        roll = self.rng.random()
        if roll < self.document_fraction:
            return "document", self.rng.choice(DOCUMENTS)
        roll -= self.document_fraction
        if roll < self.long_fraction:
            return "long", self.rng.choice(LONG)
        if roll < self.long_fraction + self.batch_fraction:
            texts = self.short_texts
            return "batch", self.rng.sample(texts, min(8, len(texts)))
        return "short", self.rng.choice(self.short_texts)

    def payload(self) -> tuple[str, dict]:
        kind, inputs = self.draw()
        if kind == "document":
            return kind, {"inputs": inputs, "top_k": 1, "windows": True}
        return kind, {"inputs": inputs, "top_k": 1}
