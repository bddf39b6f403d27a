"""How urgent a call is: when its caller stops waiting (a deadline) and how soon it runs (a priority).

Every transport reads them into its ``Call`` (``service.core.calls``), in its own words:

- the deadline: gRPC's own deadline; over HTTP the ``x-request-timeout`` header in seconds;
  the Open Inference Protocol's ``timeout`` request parameter in microseconds, as Triton
  reads it (over either transport, and then it wins); ``REQUEST_TIMEOUT`` for calls that
  give none. An input that cannot start before its deadline is dropped before it is
  tokenized or run, and the call answered with ``DeadlineExceeded`` (504 over HTTP,
  ``DEADLINE_EXCEEDED`` over gRPC);
- the priority: ``high``, ``normal`` (the default) or ``low``; over HTTP the ``x-priority``
  header (the name, or 1, 2, 3); the Open Inference Protocol's ``priority`` parameter as
  Triton numbers its levels (1 the highest, 0 the default). Higher levels are batched first,
  arrival order holds within a level, and a lower level's oldest input joins a batch once it
  has waited ``PRIORITY_AGING_SECONDS`` however busy the higher levels are (the batcher).
"""

from __future__ import annotations

import math
import time

from service.core.failures import BadRequest

HIGH, NORMAL, LOW = 1, 2, 3
LEVELS = (HIGH, NORMAL, LOW)
NAMES = {"high": HIGH, "normal": NORMAL, "low": LOW}
# The longest timeout a call may ask for: past it, the number is a mistake (or microseconds sent as seconds).
MAX_TIMEOUT_SECONDS = 24 * 3600


def now() -> float:
    """The clock deadlines are read on."""
    return time.monotonic()


def deadline_after(seconds: float) -> float:
    return now() + seconds


def timeout_header(value: str) -> float:
    """``x-request-timeout``: seconds, more than 0; the deadline it sets."""
    try:
        seconds = float(value)
    except ValueError:
        seconds = math.nan
    if not 0 < seconds <= MAX_TIMEOUT_SECONDS:  # NaN fails this too
        raise BadRequest(
            f"x-request-timeout must be a number of seconds above 0 and at most {MAX_TIMEOUT_SECONDS}, got {value!r}"
        )
    return deadline_after(seconds)


def timeout_parameter(value: object) -> float | None:
    """The Open Inference Protocol's ``timeout`` parameter: whole microseconds, 0 for none; the deadline it sets."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_TIMEOUT_SECONDS * 10**6:
        raise BadRequest(
            f"parameter 'timeout' must be a whole number of microseconds from 0 (none) to "
            f"{MAX_TIMEOUT_SECONDS * 10**6}, got {value!r}"
        )
    return deadline_after(value / 1e6) if value else None


def priority_header(value: str) -> int:
    """``x-priority``: high, normal or low, or their numbers 1, 2, 3."""
    level = NAMES.get(value.strip().lower())
    if level is None and value.strip() in {"1", "2", "3"}:
        level = int(value)
    if level is None:
        raise BadRequest(f"x-priority must be high, normal or low (or 1, 2, 3), got {value!r}")
    return level


def priority_parameter(value: object) -> int:
    """The Open Inference Protocol's ``priority`` parameter: 1 (high), 2 (normal), 3 (low), 0 for the default."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= LOW:
        raise BadRequest(f"parameter 'priority' must be 1 (high), 2 (normal), 3 (low) or 0 (default), got {value!r}")
    return value or NORMAL
