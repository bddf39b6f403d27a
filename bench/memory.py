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

``worst_mix`` is the load alone, for a server started some other way (the
image test runs it against a container with a memory limit).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx

from bench.process import free_port, wait_ready

ROOT = Path(__file__).resolve().parents[1]
EXIT_OK, EXIT_FAILED_REQUESTS = 0, 1
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


def measure(bundle: str, server_args: Sequence[str], rounds: int, fill_body: bool = False) -> int:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [serve_python(), "-m", "service", "--bundle", bundle, "--port", str(port), *server_args]
    server = subprocess.Popen(
        command,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        wait_ready(server, url)
        with httpx.Client(base_url=url) as client:
            bound = limits(client)
        ready = rss_kib(server.pid)["VmRSS"]
        started = time.perf_counter()
        statuses = asyncio.run(worst_mix(url, rounds=rounds, fill_body=fill_body))
        seconds = time.perf_counter() - started
        after = rss_kib(server.pid)
    finally:
        server.terminate()
        server.wait(timeout=60)
    mib = lambda kib: f"{kib / 1024:.0f} MiB"  # noqa: E731
    size = f"filling {bound.max_body_bytes}-byte bodies" if fill_body else f"of {bound.max_length}+ tokens"
    print(
        f"worst mix: {bound.concurrency} requests in flight x {bound.max_inputs} distinct texts "
        f"{size}, {rounds} round(s), {seconds:.1f} s; "
        f"statuses {dict(sorted(statuses.items()))}; server flags: {' '.join(server_args) or 'defaults'}"
    )
    print(f"rss ready {mib(ready)}, peak {mib(after['VmHWM'])}, after {mib(after['VmRSS'])}")
    return EXIT_OK if set(statuses) <= {200, 429} else EXIT_FAILED_REQUESTS


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
    args = parser.parse_args(argv)
    return measure(args.bundle, server_args, args.rounds, args.fill_body)


if __name__ == "__main__":
    sys.exit(main())
