"""From inputs to the token rows the model reads, and from the rows' logits back to one answer per input.

Shared by everything that classifies with a bundle (the engine behind the service, the bulk
command, the Ray Data scorer), so an input is cut, windowed and aggregated the same way on
every path.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from service.core.classifier import InputKindError, NoTokens, OnnxClassifier, TextInput, Windowed
from service.core.failures import InputTooLong, InvalidInput
from service.core.windows import InputReport, Reading, aggregate


def encode(
    classifier: OnnxClassifier,
    items: Sequence[TextInput],
    reading: Reading,
    *,
    exclusive: bool = False,
    off_loop: bool = False,
) -> list[Windowed]:
    """Each input as the windows the model reads: its first only (cut to the max length), or as many
    as ``reading.windowing`` allows. ``exclusive`` and ``off_loop`` as for ``OnnxClassifier.encode``.
    InvalidInput for an input of the wrong kind or with no tokens."""
    windowing = reading.windowing
    try:
        if windowing.enabled:
            return classifier.encode_windows(
                items,
                overlap=windowing.overlap,
                max_windows=windowing.max_windows,
                side=reading.side,
                exclusive=exclusive,
                off_loop=off_loop,
            )
        encoded = classifier.encode(
            items, count_full=True, direction=reading.direction, exclusive=exclusive, off_loop=off_loop
        )
    except (InputKindError, NoTokens) as exc:
        raise InvalidInput(str(exc)) from None
    # count_full: every cut input has its whole length
    return [Windowed([item], 1 + ((item.full_length or 0) > item.length)) for item in encoded]


def refusal(index: int, item: Windowed, reading: Reading, max_length: int) -> InputTooLong | None:
    """Why input ``index`` may not be read as it was when the call asked not to cut (None: it may)."""
    if not item.truncated:
        return None
    if not reading.windowing.enabled:
        return InputTooLong.tokens(index, item.windows[0].full_length or 0, max_length)
    if item.cut:
        return InputTooLong(
            f"input {index}: the text kept whole in every window is longer than half a window; "
            "send a shorter one or set truncate to true to cut it"
        )
    return InputTooLong.windows(index, item.needed, reading.windowing.max_windows)


def refuse_cut(indices: Sequence[int], windowed: Sequence[Windowed], reading: Reading, max_length: int) -> None:
    """InputTooLong for the first input that was cut, when the call asked not to cut."""
    for index, item in zip(indices, windowed):
        problem = refusal(index, item, reading, max_length)
        if problem is not None:
            raise problem


def combine(item: Windowed, logits: Sequence[np.ndarray], function: str, how: str) -> tuple[np.ndarray, InputReport]:
    """One input's row of logits from its windows' rows (aggregated by ``how`` for the model's score
    ``function``), and its report."""
    tokens = np.array([window.length for window in item.windows])
    report = InputReport(item.truncated, len(item.windows), int(tokens.sum()))
    if len(logits) == 1:
        return logits[0], report
    row = aggregate(np.stack(logits), tokens, function, how).astype(np.float32)
    return row, report
