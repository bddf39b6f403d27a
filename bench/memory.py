"""Peak resident memory of a server under the worst valid request mix.

    python -m bench.memory --bundle bundles/default
    python -m bench.memory --bundle bundles/default --rounds 1 -- --max-batch-tokens 8192

Starts ``python -m service`` on the bundle (any flags after ``--`` go to it),
reads its limits from ``/info``, then keeps MAX_QUEUE_SIZE / MAX_INPUTS
requests in flight, each of MAX_INPUTS distinct texts that tokenize past the
model's max length (so every input runs at the max length), for ``--rounds``
rounds. With ``--fill-body`` the texts are as long as MAX_BODY_BYTES allows
(about 16,000 characters each at the defaults): the same model work, but the
most text a request may bring to tokenize. No text repeats, so a response cache cannot help. It prints the
server's resident memory when ready, its peak (the kernel's high-water mark,
VmHWM) and what it holds afterwards, and exits 1 if any answer was not 200
or 429.

With ``--grpc-flood N`` the server also serves gRPC, and N ModelInfer calls go at
once over ``--grpc-channels`` connections, each call a message of MAX_INPUTS
texts that fills MAX_BODY_BYTES: more calls than the server takes at a time, so
it must refuse some (RESOURCE_EXHAUSTED) rather than hold them all. It exits 1 if
any call ends otherwise (``GRPC_REFUSALS``).

``worst_mix`` and ``grpc_flood`` are the loads alone, for a server started some
other way (the image test runs them against a container with a memory limit).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx

from bench.process import free_port, serving

ROOT = Path(__file__).resolve().parents[1]
EXIT_OK, EXIT_FAILED_REQUESTS = 0, 1
# What a gRPC call of the flood may end with: answered, refused by admission or the call cap, or refused
# by HTTP/2 (REFUSED_STREAM, when a client opens more streams than GRPC_MAX_STREAMS before it has the
# server's settings). Anything else (INTERNAL, a dropped connection) fails the run.
GRPC_REFUSALS = {"OK", "RESOURCE_EXHAUSTED", "UNAVAILABLE"}
# Everyday words: they tokenize like real text (about 1.3 tokens a word for a BERT vocabulary).
WORDS = [
    "account",
    "balance",
    "transfer",
    "money",
    "card",
    "payment",
    "travel",
    "flight",
    "hotel",
    "booking",
    "weather",
    "tomorrow",
    "morning",
    "evening",
    "calendar",
    "meeting",
    "reminder",
    "alarm",
    "music",
    "playlist",
    "restaurant",
    "reservation",
    "dinner",
    "recipe",
    "ingredients",
    "nutrition",
    "calories",
    "shopping",
    "list",
    "order",
    "delivery",
    "address",
    "phone",
    "number",
    "insurance",
    "policy",
    "claim",
    "credit",
    "score",
    "interest",
    "rate",
    "loan",
    "mortgage",
    "vacation",
    "request",
    "schedule",
    "appointment",
    "doctor",
    "pharmacy",
    "prescription",
    "translate",
    "language",
    "directions",
    "traffic",
    "distance",
    "car",
    "rental",
    "gas",
    "station",
    "oil",
    "change",
    "tire",
    "pressure",
    "battery",
    "timezone",
    "currency",
    "exchange",
    "airport",
    "luggage",
    "passport",
    "visa",
    "international",
    "roaming",
    "please",
    "could",
    "would",
    "you",
    "tell",
    "me",
    "about",
    "my",
    "the",
    "a",
    "an",
    "of",
    "to",
    "in",
    "for",
    "with",
    "on",
    "at",
    "by",
    "from",
]


@dataclass(frozen=True)
class Limits:
    max_inputs: int
    max_queue_size: int
    max_length: int
    max_body_bytes: int

    @property
    def concurrency(self) -> int:
        """Requests in flight that fill the admission bound exactly."""
        return max(1, self.max_queue_size // self.max_inputs)


def limits(client: httpx.Client) -> Limits:
    info = client.get("/info").raise_for_status().json()
    return Limits(
        info["max_client_batch_size"],
        info["max_concurrent_requests"],
        info["max_length"],
        info["limits"]["max_body_bytes"],
    )


def words_for(client: httpx.Client, bound: Limits, fill_body: bool) -> int:
    """Words a text needs to run past the max length by a quarter, whatever the vocabulary;
    with ``fill_body``, as many as keep a request of ``max_inputs`` texts within the body limit."""
    sample = " ".join(random.Random(0).choices(WORDS, k=200))
    (tokens,) = client.post("/tokenize", json={"inputs": sample}).raise_for_status().json()
    if not fill_body:
        return int(bound.max_length * 1.25 * 200 / len(tokens)) + 1
    per_text = bound.max_body_bytes // bound.max_inputs - 64  # JSON quotes, commas, the serial number
    return int(per_text / (len(sample) + 1) * 200 * 0.9)


class Texts:
    """Distinct texts of ``words`` random words each; the serial number keeps every one unique."""

    def __init__(self, words: int, seed: int = 0) -> None:
        self.words = words
        self.rng = random.Random(seed)
        self.serial = 0

    def take(self, count: int) -> list[str]:
        texts = []
        for _ in range(count):
            self.serial += 1
            texts.append(f"{self.serial} " + " ".join(self.rng.choices(WORDS, k=self.words)))
        return texts


async def worst_mix(
    url: str, *, rounds: int, fill_body: bool = False, headers: dict[str, str] | None = None, timeout: float = 600.0
) -> Counter[int]:
    """Keep the admission bound full of maximum requests for ``rounds`` rounds; the count of each status."""
    with httpx.Client(base_url=url, headers=headers, timeout=60) as client:
        bound = limits(client)
        texts = Texts(words_for(client, bound, fill_body))
    statuses: Counter[int] = Counter()

    async def worker(session: httpx.AsyncClient) -> None:
        for _ in range(rounds):
            response = await session.post("/predict", json={"inputs": texts.take(bound.max_inputs), "top_k": 1})
            statuses[response.status_code] += 1

    limit = httpx.Limits(max_connections=bound.concurrency)
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=timeout, limits=limit) as session:
        await asyncio.gather(*(worker(session) for _ in range(bound.concurrency)))
    return statuses


def flood_message(bound: Limits, texts: Texts) -> bytes:
    """One serialised ModelInferRequest of ``max_inputs`` texts, as large as MAX_BODY_BYTES allows."""
    from service.protocols.oip.proto import grpc_predict_v2_pb2 as pb

    per_text = bound.max_body_bytes // bound.max_inputs - 64
    batch = [text.encode()[:per_text] for text in texts.take(bound.max_inputs)]
    request = pb.ModelInferRequest(model_name="classifier")
    request.inputs.add(
        name="text", datatype="BYTES", shape=[len(batch)], contents=pb.InferTensorContents(bytes_contents=batch)
    )
    return request.SerializeToString()


async def grpc_flood(url: str, address: str, *, calls: int, channels: int = 32, timeout: float = 600.0) -> Counter[str]:
    """``calls`` ModelInfer calls at once over ``channels`` connections; the count of each status code."""
    from grpc import aio

    with httpx.Client(base_url=url, timeout=60) as client:
        bound = limits(client)
        message = flood_message(bound, Texts(words_for(client, bound, fill_body=True)))
    # One connection each: a shared subchannel pool would put every channel on one connection.
    options = [("grpc.use_local_subchannel_pool", 1), ("grpc.max_send_message_length", -1)]
    opened = [aio.insecure_channel(address, options=options) for _ in range(channels)]
    methods = [
        channel.unary_unary("/inference.GRPCInferenceService/ModelInfer") for channel in opened
    ]  # bytes in and out: the message is built once
    statuses: Counter[str] = Counter()

    async def call(index: int) -> None:
        try:
            await methods[index % channels](message, timeout=timeout)
            statuses["OK"] += 1
        except aio.AioRpcError as exc:
            statuses[exc.code().name] += 1

    try:
        await asyncio.gather(*(call(index) for index in range(calls)))
    finally:
        await asyncio.gather(*(channel.close() for channel in opened))
    return statuses


def rss_kib(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (the peak) of a process, in KiB."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            fields[name] = int(value.split()[0])
    return fields


def serve_python() -> str:
    serving = ROOT / ".venv-serve" / "bin" / "python"
    return str(serving) if serving.exists() else sys.executable


def measure(
    bundle: str,
    server_args: Sequence[str],
    rounds: int,
    fill_body: bool = False,
    grpc_calls: int = 0,
    grpc_channels: int = 32,
) -> int:
    port, grpc_port = free_port(), free_port()
    url = f"http://127.0.0.1:{port}"
    command = [serve_python(), "-m", "service", "--bundle", bundle, "--port", str(port), *server_args]
    if grpc_calls:
        command += ["--grpc-port", str(grpc_port)]
    with serving(command, port) as server:
        with httpx.Client(base_url=url) as client:
            bound = limits(client)
        ready = rss_kib(server.process.pid)["VmRSS"]
        started = time.perf_counter()
        if grpc_calls:
            flood = grpc_flood(url, f"127.0.0.1:{grpc_port}", calls=grpc_calls, channels=grpc_channels)
            statuses: Counter[int | str] = Counter(asyncio.run(flood))
        else:
            statuses = Counter(asyncio.run(worst_mix(url, rounds=rounds, fill_body=fill_body)))
        seconds = time.perf_counter() - started
        after = rss_kib(server.process.pid)
    mib = lambda kib: f"{kib / 1024:.0f} MiB"  # noqa: E731
    flags = " ".join(server_args) or "defaults"
    if grpc_calls:
        print(
            f"gRPC flood: {grpc_calls} ModelInfer calls at once over {grpc_channels} connections, each of "
            f"{bound.max_inputs} texts filling {bound.max_body_bytes} bytes, {seconds:.1f} s; "
            f"statuses {dict(sorted(statuses.items(), key=str))}; server flags: {flags}"
        )
    else:
        size = f"filling {bound.max_body_bytes}-byte bodies" if fill_body else f"of {bound.max_length}+ tokens"
        print(
            f"worst mix: {bound.concurrency} requests in flight x {bound.max_inputs} distinct texts "
            f"{size}, {rounds} round(s), {seconds:.1f} s; statuses {dict(sorted(statuses.items(), key=str))}; "
            f"server flags: {flags}"
        )
    print(f"rss ready {mib(ready)}, peak {mib(after['VmHWM'])}, after {mib(after['VmRSS'])}")
    allowed = GRPC_REFUSALS if grpc_calls else {200, 429}
    return EXIT_OK if set(statuses) <= allowed else EXIT_FAILED_REQUESTS


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    server_args: list[str] = []
    if "--" in argv:
        split = argv.index("--")
        argv, server_args = argv[:split], argv[split + 1 :]
    parser = argparse.ArgumentParser(prog="python -m bench.memory", description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", default="bundles/default", help="bundle directory (default: bundles/default)")
    parser.add_argument("--rounds", type=int, default=2, help="requests each in-flight slot sends in turn (default: 2)")
    parser.add_argument(
        "--fill-body", action="store_true", help="texts as long as MAX_BODY_BYTES allows, not just past the max length"
    )
    parser.add_argument(
        "--grpc-flood",
        type=int,
        default=0,
        metavar="CALLS",
        help="instead of the HTTP mix, this many gRPC ModelInfer calls at once, each filling MAX_BODY_BYTES",
    )
    parser.add_argument("--grpc-channels", type=int, default=32, help="connections the gRPC flood uses (default: 32)")
    args = parser.parse_args(argv)
    return measure(args.bundle, server_args, args.rounds, args.fill_body, args.grpc_flood, args.grpc_channels)


if __name__ == "__main__":
    sys.exit(main())
