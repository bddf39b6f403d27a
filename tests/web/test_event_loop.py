"""Nothing a client may send holds the event loop: while the largest valid bodies go to every door of a real
server, ``/live`` keeps answering within a bound (the work whose cost grows with the input runs on threads,
or is bounded)."""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest

from tests.conftest import needs_export
from tests.helpers import ServerProcess, free_port, require_serve_env

pytestmark = needs_export
LIMIT = 524_288  # MAX_BODY_BYTES's default
# Generous for a loaded two-core machine; /live answers in about a millisecond when nothing holds the loop.
LIVE_BOUND_S = 0.25


def padded(words: str, size: int) -> str:
    return (words * (size // len(words) + 1))[:size]


def largest_bodies() -> list[tuple[str, bytes]]:
    """(path, body) pairs, each body just under the limit: texts of mixed scripts, ids, tensors."""
    text = "héllo wörld, what is my balance? 日本語のテキスト "
    inputs = [padded(text, 2600) for _ in range(64)]
    long_text = padded(text, 150_000)  # over a hundred thousand tokens: refused by MAX_TOKENIZE_TOKENS, after counting
    v2 = {"inputs": [{"name": "text", "shape": [64], "datatype": "BYTES", "data": inputs}]}
    bodies = [
        ("/predict", {"inputs": inputs}),
        ("/", {"inputs": inputs, "truncate": True}),
        ("/tokenize", {"inputs": long_text}),
        ("/tokenize", {"inputs": padded(text, 15_000)}),  # a few thousand tokens, answered in full
        ("/decode", {"ids": [1000 + i % 500 for i in range(80_000)]}),
        ("/v2/models/classifier/infer", v2),
    ]
    encoded = [(path, json.dumps(body, ensure_ascii=False).encode()) for path, body in bodies]
    assert all(len(body) <= LIMIT for _, body in encoded), [len(body) for _, body in encoded]
    return encoded


def test_live_answers_while_the_largest_bodies_are_served(tiny_bundle):
    require_serve_env()
    grpc_port = free_port()
    server = ServerProcess(tiny_bundle("bert"), "--grpc-port", str(grpc_port))
    server.wait_ready()
    stop = threading.Event()
    delays: list[float] = []

    def probe() -> None:
        with httpx.Client(base_url=server.url, timeout=10) as client:
            while not stop.is_set():
                started = time.perf_counter()
                assert client.get("/live").status_code == 200
                delays.append(time.perf_counter() - started)
                time.sleep(0.01)

    def send(path: str, body: bytes) -> int:
        headers = {"content-type": "application/json"}
        return httpx.post(server.url + path, content=body, headers=headers, timeout=120).status_code

    def over_grpc() -> str:
        import tritonclient.grpc as grpcclient

        client = grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}")
        text = grpcclient.InferInput("text", [64], "BYTES")
        text.set_data_from_numpy(np.array([padded("héllo wörld ", 6800) for _ in range(64)], dtype=object))
        return client.infer("classifier", [text]).get_response().model_name

    try:
        prober = threading.Thread(target=probe)
        prober.start()
        time.sleep(0.2)
        bodies = largest_bodies()
        with ThreadPoolExecutor(len(bodies) + 1) as pool:
            statuses = [pool.submit(send, path, body) for path, body in bodies]
            model = pool.submit(over_grpc)
            results = [future.result(timeout=300) for future in statuses]
            assert model.result(timeout=300) == "classifier"
        time.sleep(0.2)
        stop.set()
        prober.join(timeout=30)
    finally:
        stop.set()
        server.stop()
    assert results == [200, 200, 422, 200, 200, 200]
    print(f"/live: {len(delays)} probes, slowest {max(delays) * 1000:.1f} ms, median {np.median(delays) * 1000:.1f} ms")
    assert max(delays) < LIVE_BOUND_S, sorted(delays)[-5:]


def test_a_tokenize_answer_is_bounded_by_a_setting(tiny_bundle):
    from starlette.testclient import TestClient

    from service.app import create_app
    from service.core.classifier import OnnxClassifier
    from service.settings import Settings
    from tests.helpers import wait_app_ready

    with TestClient(create_app(Settings(bundle=str(tiny_bundle("bert")), max_tokenize_tokens=12))) as client:
        wait_app_ready(client)
        ok = client.post("/tokenize", json={"inputs": ["hello world", "hi"]})
        assert ok.status_code == 200 and sum(map(len, ok.json())) <= 12
        text = "hello world " * 10
        refused = client.post("/tokenize", json={"inputs": [text]})
        count = len(OnnxClassifier.from_bundle(tiny_bundle("bert")).tokens([text], add_special_tokens=True)[0])
        assert (refused.status_code, refused.json()) == (
            422,
            {
                "error": f"the texts have {count} tokens, more than the limit of 12 per /tokenize request "
                "(MAX_TOKENIZE_TOKENS); send shorter texts",
                "error_type": "Validation",
            },
        )


@pytest.mark.parametrize("text", ["plain ascii", "héllo wörld", "日本語 😀 mixed", "a\u0301 combining"])
def test_offsets_are_utf8_bytes(tiny_bundle, text):
    from service.core.classifier import OnnxClassifier

    (tokens,) = OnnxClassifier.from_bundle(tiny_bundle("bert")).tokens([text], add_special_tokens=False)
    raw = text.encode()
    for token in tokens:
        piece = raw[token["start"] : token["stop"]].decode()
        assert piece == token["text"], token
