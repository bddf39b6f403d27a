"""Score many inputs with a bundle as fast as it goes: sorted by length, batched by a token budget.

The service batches whatever arrives together; here every input of a chunk is known up
front, so the chunk's windows are sorted by token count and cut into batches of at most
``max_batch_tokens`` padded tokens (``max_batch_size`` inputs): next to no padding, and the
same memory bound as the service's batches. Inputs are cut, windowed and aggregated by the
service's own code (``service.core.inputs``), and scored as ``/predict`` scores them, so an
answer here is the answer the service gives.

A text longer than its windows could ever read is cut first, at ``CHARS_PER_TOKEN`` characters
for every token the reading may take: the service never tokenizes more than a request body
holds, and here no row's size decides the memory a run takes. A text so cut is reported as
truncated (and is a bad row with ``--no-truncate``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from service.core.classifier import OnnxClassifier, TextInput, Windowed
from service.core.failures import InvalidInput
from service.core.inputs import combine, encode, refusal
from service.core.loading import load_classifier
from service.core.manifest import BundleError, load_verified
from service.core.scoring import probabilities
from service.core.windows import InputReport, Reading, Windowing, default_aggregation

# More characters than any token of a real vocabulary spans: WordPiece reads a word of up to 100 characters
# as pieces and a longer one as one unknown token. Characters past this many per readable token can never
# reach the model, so they are never tokenized (tokenizing keeps about 100 bytes a token in memory).
CHARS_PER_TOKEN = 100


@dataclass(frozen=True)
class Answering:
    """What a scored row gets: its top label and score, and, as asked, every label's score and the
    report of how it was read (truncated, windows, tokens), in columns named ``prefix`` + what they hold."""

    all_scores: bool = False
    raw_scores: bool = False
    details: bool = False
    prefix: str = "predicted_"


def batches(lengths: Sequence[int], max_tokens: int, max_size: int) -> list[slice]:
    """Consecutive runs of ``lengths`` (ascending) whose padded size, count x the longest, fits the budget.
    An input longer than the budget alone still gets a batch of its own."""
    found = []
    start = 0
    for end in range(1, len(lengths) + 1):
        if end == len(lengths) or end + 1 - start > max_size or (end + 1 - start) * lengths[end] > max_tokens:
            found.append(slice(start, end))
            start = end
    return found


def _reason(message: str, index: int) -> str:
    """The fact in a service message about input ``index``, without the index or the advice on a request's fields."""
    return message.removeprefix(f"input {index}: ").removeprefix(f"input {index} ").split("; ")[0]


class Scorer:
    def __init__(
        self,
        classifier: OnnxClassifier,
        *,
        windowing: Windowing = Windowing(),
        truncate: bool = True,
        answering: Answering = Answering(),
        max_batch_tokens: int = 4096,
        max_batch_size: int = 64,
    ) -> None:
        self.classifier = classifier
        self.manifest = classifier.manifest
        self.reading = Reading(truncate, "right", windowing)
        self.aggregation = windowing.aggregation or default_aggregation(self.manifest.score_function)
        self.answering = answering
        self.max_batch_tokens = max_batch_tokens
        self.max_batch_size = max_batch_size
        self.engine: dict[str, Any] = classifier.backend.describe()

    @classmethod
    def from_bundle(cls, bundle: Path | str, *, threads: int = 0, engine: str = "auto", **options: Any) -> Scorer:
        """The bundle on the engine ``engine`` picks, re-verified as the service loads it
        (``service.core.loading``): a bundle that fails its reference set here raises BundleError,
        and ENGINE naming an engine that cannot run it raises EngineUnavailable."""
        directory = Path(bundle)
        loaded = load_classifier(directory, load_verified(directory), engine=engine, intra_op_threads=threads)
        verdict = loaded.reverification
        if verdict is not None and not verdict.passed:
            raise BundleError(f"bundle {bundle} failed its re-verification on this CPU: " + "; ".join(verdict.failures))
        scorer = cls(loaded.classifier, **options)
        scorer.engine = loaded.engine()
        return scorer

    def columns(self) -> list[str]:
        """The answer columns, in the order they are added to a row."""
        prefix = self.answering.prefix
        names = [f"{prefix}label", f"{prefix}score"]
        if self.answering.all_scores:
            names += [f"{prefix}score_{label}" for label in self.manifest.labels]
        if self.answering.details:
            names += [f"{prefix}truncated", f"{prefix}windows", f"{prefix}tokens"]
        return names

    @property
    def max_chars(self) -> int:
        """The characters of one text that may be tokenized: ``CHARS_PER_TOKEN`` for each token it may take."""
        windows = self.reading.windowing.max_windows if self.reading.windowing.enabled else 1
        return CHARS_PER_TOKEN * self.classifier.window_length * windows

    def _capped(self, item: TextInput) -> TextInput:
        cap = self.max_chars
        if isinstance(item, str):
            return item[:cap] if len(item) > cap else item
        if isinstance(item, tuple) and any(isinstance(text, str) and len(text) > cap for text in item):
            return (item[0][:cap], item[1][:cap])
        return item

    def encode(self, items: Sequence[TextInput]) -> tuple[list[Windowed | None], dict[int, str]]:
        """Each input's windows, or (None and) why it cannot be scored: the model's kind of input, a text
        with no tokens, or, without truncation, a text longer than may be read. A text over ``max_chars``
        is cut there before it is tokenized, and reported as truncated."""
        found: list[Windowed | None] = [None] * len(items)
        problems: dict[int, str] = {}
        kept: list[int] = []
        capped: list[TextInput] = []
        cut: set[int] = set()
        for index, item in enumerate(items):
            short = self._capped(item)
            if short is not item:
                if not self.reading.truncate:
                    problems[index] = (
                        f"longer than {self.max_chars:,} characters, more than "
                        f"{'its windows' if self.reading.windowing.enabled else 'the model'} can read"
                    )
                    continue
                cut.add(index)
            kept.append(index)
            capped.append(short)
        encoded, refused = self._encode(capped)
        for position, index in enumerate(kept):
            if position in refused:
                problems[index] = refused[position]
                continue
            windowed = encoded[position]
            if windowed is not None and index in cut:  # however few tokens were left, the text was cut
                windowed = dataclasses.replace(windowed, needed=max(windowed.needed, len(windowed.windows) + 1))
            found[index] = windowed
        return found, dict(sorted(problems.items()))

    def _encode(self, items: Sequence[TextInput]) -> tuple[list[Windowed | None], dict[int, str]]:
        try:
            encoded: list[Windowed | None] = list(encode(self.classifier, items, self.reading, off_loop=True))
        except InvalidInput:  # one bad input fails the whole call: find which, one at a time
            encoded = [self._encode_one(item) for item in items]
        problems = {}
        for index, item in enumerate(encoded):
            if item is None:
                problems[index] = self._problem(items[index])
            elif not self.reading.truncate:
                refused = refusal(index, item, self.reading, self.classifier.max_length)
                if refused is not None:
                    problems[index] = _reason(str(refused), index)
                    encoded[index] = None
        return encoded, problems

    def _encode_one(self, item: TextInput) -> Windowed | None:
        try:
            return encode(self.classifier, [item], self.reading)[0]
        except InvalidInput:
            return None

    def _problem(self, item: TextInput) -> str:
        try:
            encode(self.classifier, [item], self.reading)
        except InvalidInput as exc:
            return _reason(str(exc), 0)
        return "cannot be scored"  # pragma: no cover - only called for inputs that failed

    def score(self, encoded: Sequence[Windowed]) -> tuple[np.ndarray, list[InputReport]]:
        """One row of logits per input and its report: every window of every input run once, shortest
        first, in token-budget batches."""
        windows = [window for item in encoded for window in item.windows]
        order = sorted(range(len(windows)), key=lambda k: windows[k].length)
        outputs = len(self.manifest.id2label)
        logits = np.empty((len(windows), outputs), dtype=np.float32)
        lengths = [windows[k].length for k in order]
        for part in batches(lengths, self.max_batch_tokens, self.max_batch_size):
            picked = order[part]
            logits[picked] = self.classifier.run([windows[k] for k in picked])
        rows, reports, start = [], [], 0
        for item in encoded:
            count = len(item.windows)
            row, report = combine(
                item, list(logits[start : start + count]), self.manifest.score_function, self.aggregation
            )
            rows.append(row)
            reports.append(report)
            start += count
        return (np.stack(rows) if rows else np.empty((0, outputs), dtype=np.float32)), reports

    def answers(self, logits: np.ndarray, reports: Sequence[InputReport]) -> list[dict[str, Any]]:
        """The answer columns of each input, scored as ``/predict`` scores them."""
        if self.answering.raw_scores:
            scores = logits.astype(np.float64)
        else:
            scores = probabilities(logits.astype(np.float64), self.manifest.problem_type)
        labels = self.manifest.labels
        prefix = self.answering.prefix
        found = []
        for row, report in zip(scores, reports):
            top = int(row.argmax())
            answer: dict[str, Any] = {f"{prefix}label": labels[top], f"{prefix}score": float(row[top])}
            if self.answering.all_scores:
                answer.update({f"{prefix}score_{label}": float(value) for label, value in zip(labels, row)})
            if self.answering.details:
                answer.update({f"{prefix}{key}": value for key, value in report.to_dict().items()})
            found.append(answer)
        return found

    def classify(self, items: Sequence[TextInput]) -> list[dict[str, Any]]:
        """Answer columns for inputs that can all be scored; ValueError naming the first that cannot."""
        encoded, problems = self.encode(items)
        if problems:
            index = min(problems)
            raise ValueError(f"input {index}: {problems[index]}")
        logits, reports = self.score([item for item in encoded if item is not None])
        return self.answers(logits, reports)
