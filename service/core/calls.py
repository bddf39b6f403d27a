"""One call, whichever protocol brought it: its id, its key check, the model version it held, its record.

Every transport (the HTTP middleware, the gRPC servicer) opens a ``Call`` when a
request arrives and ``finish``es it once the answer is out, so request ids are
capped and sanitised, API keys compared, metrics labelled and access-log lines
written the same way for all of them. The registry records in the call which
model version it resolved (``ModelRegistry.hold``); ``finish`` lets go of it.

Statuses are HTTP's numbers for every protocol (gRPC's codes are mapped onto
them as Google's ``google.rpc.Code`` documents), with a ``protocol`` label and
field to tell the transports apart.
"""

from __future__ import annotations

import hmac
import os
import re
import time
from dataclasses import dataclass, field
from typing import Protocol

from service.core.failures import Forbidden
from service.core.loaded import Loaded
from service.core.urgency import HIGH, NORMAL
from service.logs import log_access

# What a client may send as its request id; anything else is replaced by a fresh one.
_VALID_REQUEST_ID = re.compile(r"[\w.:/+=-]{1,128}", re.ASCII)


class RequestRecorder(Protocol):
    def record_request(self, protocol: str, endpoint: str, status: str, model: str, seconds: float) -> None: ...


def request_id(sent: str | None) -> str:
    """The client's id when it is short and plain, else a new random one (as random as uuid4, cheaper)."""
    if sent and _VALID_REQUEST_ID.fullmatch(sent):
        return sent
    return os.urandom(16).hex()


def bearer_key_matches(authorization: str, api_keys: tuple[bytes, ...]) -> bool:
    """Whether an ``Authorization: Bearer KEY`` value names one of the keys."""
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer":
        return False
    given = token.strip().encode()
    # Compare against every key, so timing reveals neither the key nor which one matched.
    matches = [hmac.compare_digest(given, key) for key in api_keys]
    return any(matches)


@dataclass
class Call:
    protocol: str  # "http" or "grpc"
    method: str
    path: str
    request_id: str
    started: float = field(default_factory=time.perf_counter)
    model: str = ""  # the model the call named or defaulted to, once resolved
    held: Loaded | None = None  # the version it holds until it has answered
    deadline: float | None = None  # when its caller stops waiting (service.core.urgency.now), if it said
    priority: int = NORMAL
    may_ask_high: bool = True  # false for a caller HIGH_PRIORITY_KEYS does not name

    def ask(self, priority: int) -> int:
        """``priority``, when this caller may ask for it; Forbidden for high from a caller not allowed it."""
        if priority == HIGH and not self.may_ask_high:
            raise Forbidden(
                "high priority is reserved for the API keys in HIGH_PRIORITY_KEYS; ask for normal or low priority"
            )
        return priority

    def release(self) -> None:
        """Let go of the held version (it may then be retired); safe to call twice."""
        held, self.held = self.held, None
        if held is not None:
            held.release()


def finish(call: Call, status: int, endpoint: str, metrics: RequestRecorder) -> None:
    """Release what the call held, then count it and write its access-log line."""
    held = call.held
    call.release()
    elapsed = time.perf_counter() - call.started
    metrics.record_request(call.protocol, endpoint, str(status), call.model, elapsed)
    fields: dict[str, object] = {
        "request_id": call.request_id,
        "protocol": call.protocol,
        "method": call.method,
        "path": call.path,
        "status": status,
        "duration_ms": round(elapsed * 1000, 3),
    }
    if call.model:
        fields["model"] = call.model
    if held is not None:
        fields["model_version"] = held.version
    log_access(fields)
