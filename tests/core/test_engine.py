"""The serving core against a real server process: admission, arrival order,
departed clients, malformed bodies, and the response cache."""

from __future__ import annotations

import asyncio
import re
import socket

import httpx
import pytest

from tests.conftest import needs_export
from tests.helpers import ServerProcess, metric_value, require_serve_env, until, wait_for

pytestmark = needs_export
LONG = "tell me everything about the weather in paris " * 8


@pytest.fixture
def server(tiny_server):
    return tiny_server


def metric(url: str, name: str, labels: str = '{model="classifier"}', missing: float | None = None) -> float:
    """One sample from /metrics; a labelled series appears only once observed, hence ``missing``."""
    text = httpx.get(url + "/metrics").text
    match = re.search(rf"^{re.escape(name)}{re.escape(labels)} (\S+)$", text, re.MULTILINE)
    if match is None and missing is not None:
        return missing
    assert match, f"{name}{labels} not in /metrics"
    return float(match.group(1))


def admitted(url: str) -> float | None:
    return metric_value(url, "classifier_admitted_inputs")


def test_admitted_inputs_never_exceed_the_queue_bound(server):
    # A batching window keeps admitted inputs waiting (a batch of 64 never fills): the first two requests fill
    # the queue's 8 slots, and the test waits until they hold them, so the later requests, sent at once, are
    # refused. The window is long beside the few milliseconds that takes even on a loaded machine.
    process = server("--max-queue-size", "8", "--max-inputs", "4", "--max-wait-ms", "5000", "--max-batch-size", "64")

    async def scenario() -> tuple[list[httpx.Response], list[httpx.Response]]:
        async with httpx.AsyncClient(base_url=process.url, timeout=120) as client:
            bodies = [{"inputs": [f"{LONG} {i} {j}" for j in range(4)]} for i in range(12)]
            first = [asyncio.ensure_future(client.post("/predict", json=body)) for body in bodies[:2]]
            await until(lambda: admitted(process.url) == 8, "8 inputs admitted")
            refused = await asyncio.gather(*(client.post("/predict", json=body) for body in bodies[2:]))
            return list(await asyncio.gather(*first)), list(refused)

    served, refused = asyncio.run(scenario())
    assert [response.status_code for response in served] == [200, 200]
    assert [response.status_code for response in refused] == [429] * 10
    for response in refused:
        assert response.headers["retry-after"] == "1"
        assert response.json() == {
            "error": "inference queue is full (8 inputs queued or running, 4 more asked for, limit 8)",
            "error_type": "Overloaded",
        }
    assert metric(process.url, "classifier_admitted_inputs_peak") == 8
    assert metric(process.url, "classifier_admitted_inputs") == 0
    # Refused requests were never tokenized: only the admitted ones show up in the tokenize phase.
    assert metric(process.url, "classifier_phase_seconds_count", '{model="classifier",phase="tokenize"}') == 2


def test_batches_follow_arrival_order(server, tiny_bundle):
    from tokenizers import Tokenizer

    # A long text, then two short ones, each sent once the one before is queued, into a batching window that ends
    # when three are queued (a batch of three), with a token budget of two long texts. In arrival order the long
    # text and the first short one fill the first batch and the second short one waits for the next (which two
    # more fill); sorting by length would have put the two short ones first and left the long one behind.
    long_tokens = len(Tokenizer.from_file(str(tiny_bundle("bert") / "tokenizer.json")).encode(LONG).ids)
    process = server("--max-wait-ms", "600000", "--max-batch-size", "3", "--max-batch-tokens", str(2 * long_tokens))
    batches = lambda: metric(process.url, "classifier_batch_size_count")  # noqa: E731

    async def scenario() -> tuple[list[httpx.Response], list[str]]:
        finished: list[str] = []
        async with httpx.AsyncClient(base_url=process.url, timeout=120) as client:

            async def one(text: str) -> httpx.Response:
                response = await client.post("/predict", json={"inputs": text})
                finished.append(text)
                return response

            calls = []
            for count, text in enumerate((LONG, "hi"), start=1):
                calls.append(asyncio.ensure_future(one(text)))
                await until(lambda count=count: admitted(process.url) == count, f"{count} inputs admitted")
            calls.append(asyncio.ensure_future(one("yo")))
            # The third input filled the first batch, which ran without it.
            await until(lambda: batches() == 1, "the first batch ran")
            calls += [asyncio.ensure_future(one(text)) for text in ("a", "b")]
            return list(await asyncio.gather(*calls)), finished

    (long, first, second, *_), finished = asyncio.run(scenario())
    assert [r.status_code for r in (long, first, second)] == [200, 200, 200]
    assert long.headers["x-inference-time"] == first.headers["x-inference-time"]
    assert second.headers["x-inference-time"] != first.headers["x-inference-time"]
    assert finished.index("yo") > max(finished.index(LONG), finished.index("hi"))
    assert batches() == 2
    assert metric(process.url, "classifier_batch_size_sum") == 5


def test_inputs_of_a_departed_client_are_dropped_before_running(server):
    process = server("--max-wait-ms", "60000", "--max-batch-size", "4")
    body = b'{"inputs": ["one", "two", "three"]}'
    with socket.create_connection(("127.0.0.1", process.port)) as sock:
        sock.sendall(
            b"POST /predict HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
            b"content-length: %d\r\n\r\n%s" % (len(body), body)
        )
        wait_for(lambda: admitted(process.url) == 3, "the three inputs admitted and queued")
    # The request is over for the server once it has logged it as 499: its queued inputs' futures are cancelled.
    assert '"status": 499' in process.log_with('"status": 499')
    # A request that fills the batch ends the window: the departed inputs are dropped, not run.
    assert httpx.post(process.url + "/predict", json={"inputs": "still serving"}).status_code == 200
    assert metric(process.url, "classifier_dropped_inputs") == 3
    assert metric(process.url, "classifier_admitted_inputs") == 0
    # Warm-up runs happen before the batcher exists; only the last request's input ran.
    assert metric(process.url, "classifier_batch_size_count") == 1
    assert metric(process.url, "classifier_batch_size_sum") == 1


MALFORMED = [
    pytest.param(
        b"{", "request body is not valid JSON: EOF while parsing an object at line 1 column 1", id="truncated"
    ),
    pytest.param(b"", "request body is not valid JSON: EOF while parsing a value at line 1 column 0", id="empty"),
    pytest.param(
        b'{"inputs": "a"} x', "request body is not valid JSON: trailing characters at line 1 column 17", id="trailing"
    ),
    pytest.param(
        b'{"inputs": "\\ud800"}',
        "request body is not valid JSON: unexpected end of hex escape at line 1 column 19",
        id="lone-surrogate-escaped",
    ),
    pytest.param(
        b'{"inputs": "\xed\xa0\x80"}',
        "request body is not valid JSON: invalid unicode code point at line 1 column 13",
        id="lone-surrogate-raw",
    ),
    pytest.param(
        b'{"inputs": "\xff"}',
        "request body is not valid JSON: invalid unicode code point at line 1 column 13",
        id="invalid-utf8",
    ),
    pytest.param(
        b"[" * 5000 + b"]" * 5000,
        "request body is not valid JSON: recursion limit exceeded at line 1 column 202",
        id="deep-nesting",
    ),
    pytest.param(
        b'{"inputs": [' + b"[" * 2000 + b"]" * 2001 + b"}",
        "request body is not valid JSON: recursion limit exceeded at line 1 column 212",
        id="deep-inside",
    ),
]


@pytest.fixture(scope="module")
def shared_server(tiny_bundle):
    require_serve_env()
    process = ServerProcess(tiny_bundle("bert"))
    process.wait_ready()
    yield process
    process.stop()


@pytest.mark.parametrize("body, message", MALFORMED)
def test_malformed_json_is_400_before_any_work(shared_server, body, message):
    process = shared_server
    response = httpx.post(process.url + "/predict", content=body, headers={"content-type": "application/json"})
    assert (response.status_code, response.json()) == (400, {"error": message, "error_type": "malformed_json"})
    infer = httpx.post(
        process.url + "/v2/models/classifier/infer", content=body, headers={"content-type": "application/json"}
    )
    assert (infer.status_code, infer.json()) == (400, {"error": message, "error_type": "malformed_json"})
    assert (
        metric(process.url, "classifier_phase_seconds_count", '{model="classifier",phase="tokenize"}', missing=0) == 0
    )


def test_response_cache_hits_skip_the_model(server):
    process = server("--cache-size", "16")
    first = httpx.post(process.url + "/predict", json={"inputs": ["cached text", "other"], "raw_scores": True})
    again = httpx.post(process.url + "/predict", json={"inputs": ["cached text", "other"], "raw_scores": True})
    assert first.status_code == again.status_code == 200
    assert again.json() == first.json()
    assert metric(process.url, "classifier_cache_hits_total") == 2
    assert metric(process.url, "classifier_cache_misses_total") == 2
    assert metric(process.url, "classifier_batch_size_sum") == 2  # the repeat never reached a batch
    # A different option that changes the logits is a different entry.
    httpx.post(process.url + "/predict", json={"inputs": "cached text", "truncate": False})
    assert metric(process.url, "classifier_cache_misses_total") == 3


def test_cache_is_off_by_default(server):
    process = server()
    for _ in range(2):
        httpx.post(process.url + "/predict", json={"inputs": "same"})
    assert metric(process.url, "classifier_batch_size_sum") == 2
    assert metric(process.url, "classifier_cache_hits_total") == 0
