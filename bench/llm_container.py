"""A large model's bundle served by the slim image under the shipped memory limit.

    python -m bench.llm_container BUNDLE [--image text-classifier:latest] [--memory 1g] [-e NAME=VALUE ...]

Starts the image with BUNDLE mounted read-only and ``--memory``/``--memory-swap`` at the limit (the
compose file and the Kubernetes manifests give 1 GiB), then reads the service's resident memory
(``/proc/1/status`` in the container: VmRSS now, VmHWM its peak) when ready, after 64 requests 8 at a
time, and after one long document read in windows of the model's length, and whether the kernel
killed it for memory. Each request's answer is kept, so a figure is never of a failing service.
Results go to ``docs/benchmarks/llm_container-NAME.json``, NAME the bundle's directory.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx

from bench.process import free_port
from export.texts import IN_DOMAIN

ROOT = Path(__file__).resolve().parents[1]


def docker(*args: str) -> str:
    return subprocess.run(["docker", *args], capture_output=True, text=True, check=True).stdout


def wait_healthy(name: str, url: str, timeout: float) -> None:
    """Until /health answers 200; exit with the container's last log lines if it stops or never does."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if json.loads(docker("inspect", name, "--format", "{{json .State.Running}}")) is not True:
            raise SystemExit("error: the container stopped: " + docker("logs", name)[-800:])
        try:
            if httpx.get(url + "/health", timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(1)
    raise SystemExit(f"error: the container was not healthy in {timeout:.0f} s")


def memory(name: str) -> dict[str, int]:
    """The service's resident memory now and at its peak, in bytes."""
    status = docker("exec", name, "cat", "/proc/1/status")
    found = {key: int(re.search(rf"{key}:\s+(\d+) kB", status).group(1)) * 1024 for key in ("VmRSS", "VmHWM")}  # type: ignore[union-attr]
    return {"rss": found["VmRSS"], "peak": found["VmHWM"]}


async def concurrently(url: str, texts: list[str], concurrency: int) -> list[int]:
    statuses: list[int] = []
    queue = list(texts)
    async with httpx.AsyncClient(base_url=url, timeout=600) as client:

        async def worker() -> None:
            while queue:
                text = queue.pop()
                statuses.append((await client.post("/predict", json={"inputs": text})).status_code)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return statuses


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--image", default="text-classifier:latest")
    parser.add_argument("--memory", default="1g")
    parser.add_argument("-e", dest="env", action="append", default=[], help="a service setting, NAME=VALUE")
    args = parser.parse_args()
    bundle = args.bundle.resolve()
    manifest = json.loads((bundle / "bundle.json").read_text())
    port = free_port()
    name = f"llm-container-{port}"
    env = [arg for item in ["BUNDLE=/bundle", *args.env] for arg in ("-e", item)]
    started = time.monotonic()
    docker(
        "run", "-d", "--name", name, "--read-only", "--tmpfs", "/tmp", "--memory", args.memory,
        "--memory-swap", args.memory, "-v", f"{bundle}:/bundle:ro", "-p", f"127.0.0.1:{port}:8000", *env, args.image,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    results: dict[str, Any] = {"bundle": bundle.name, "variant": manifest["variant"], "limit": args.memory}
    try:
        wait_healthy(name, url, timeout=1200)
        results["ready_s"] = round(time.monotonic() - started, 1)
        results["idle"] = memory(name)
        texts = [text for text in IN_DOMAIN if text.strip()][:64]
        statuses = asyncio.run(concurrently(url, texts, 8))
        results["c8"] = {"requests": len(statuses), "statuses": sorted(set(statuses)), **memory(name)}
        document = " ".join(IN_DOMAIN) * 8
        answer = httpx.post(url + "/predict", json={"inputs": document, "windows": True}, timeout=1200)
        results["document"] = {
            "characters": len(document),
            "status": answer.status_code,
            "answer": answer.json()[:2] if answer.status_code == 200 else answer.text[:300],
            **memory(name),
        }
        results["answer"] = httpx.post(url + "/predict", json={"inputs": texts[0]}, timeout=600).json()[:2]
    finally:
        state = json.loads(docker("inspect", name, "--format", "{{json .State}}"))
        results["oom_killed"] = state["OOMKilled"]
        results["running"] = state["Running"]
        results["logs"] = subprocess.run(["docker", "logs", name], capture_output=True, text=True).stderr[-1500:]
        docker("rm", "-f", name)
        target = ROOT / "docs" / "benchmarks" / f"llm_container-{bundle.name}.json"
        target.write_text(json.dumps(results, indent=2) + "\n")
        print(json.dumps({key: value for key, value in results.items() if key != "logs"}, indent=2))
        print(f"results: {target}")


if __name__ == "__main__":
    main()
