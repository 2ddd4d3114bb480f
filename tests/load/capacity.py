"""On demand: the capacity of one replica, in calls per second, for typical calls.

    python tests/load/capacity.py [--seconds 20] [--concurrency 4] [--threads 2]

A MiniLM server in a process of its own (no result cache, so every call is computed;
OMP_NUM_THREADS=THREADS) gets CONCURRENCY callers that each send the next call as soon as
the last one is answered, for SECONDS per kind of call, after a warm-up call:

- attention: one ~60-token text, all 6 layers, the head mean (`view="head_mean"`);
- attention (all heads): the same text, every head of every layer, float16 on the wire;
- saliency: gradient x input of the embedding norm;
- saliency (ig): integrated gradients, 32 steps.

Prints, per kind, calls per second and the latency median and 95th percentile: the
figures docs/operations.md sizes replicas and the queue-depth target with.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from conftest import minilm_dir, start_server  # noqa: E402
from introspect_client import AsyncClient, targets  # noqa: E402

TEXT = "The operator scales the service by the depth of its queue, not by how busy the device looks. " * 3

Call = Callable[[AsyncClient, str], Awaitable[object]]

CALLS: dict[str, Call] = {
    "attention head_mean": lambda client, text: client.attention(text, view="head_mean"),
    "attention all heads f16": lambda client, text: client.attention(text, dtype="float16"),
    "saliency gradient_x_input": lambda client, text: client.saliency(
        text, method="gradient_x_input", target=targets.embedding_norm()),
    "saliency ig 32 steps": lambda client, text: client.saliency(
        text, method="ig", steps=32, target=targets.embedding_norm()),
}


async def measure(client: AsyncClient, call: Call, seconds: float, concurrency: int) -> tuple[int, float, list[float]]:
    """Runs `concurrency` closed-loop callers of `call` for `seconds`: (calls, wall, latencies)."""
    latencies: list[float] = []
    started = time.perf_counter()

    async def caller(index: int) -> None:
        number = 0
        while time.perf_counter() - started < seconds:
            begun = time.perf_counter()
            await call(client, f"{index}.{number} {TEXT}")  # distinct texts: nothing shared
            latencies.append(time.perf_counter() - begun)
            number += 1

    await asyncio.gather(*(caller(index) for index in range(concurrency)))
    return len(latencies), time.perf_counter() - started, latencies


async def run(address: str, seconds: float, concurrency: int) -> None:
    """Measures every kind of call and prints one line each."""
    async with AsyncClient(address, timeout=120) as client:
        print(f"{'call':<28} {'calls/s':>8} {'p50 ms':>8} {'p95 ms':>8} {'calls':>6}")
        for name, call in CALLS.items():
            await call(client, "warm up " + TEXT)
            count, wall, latencies = await measure(client, call, seconds, concurrency)
            p95 = statistics.quantiles(latencies, n=20)[18] if len(latencies) > 1 else latencies[0]
            print(f"{name:<28} {count / wall:8.2f} {statistics.median(latencies) * 1e3:8.0f} {p95 * 1e3:8.0f} {count:6d}")


def main() -> None:
    """Parses the flags, starts the server and prints the table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2, help="OMP_NUM_THREADS of the server")
    args = parser.parse_args()
    server = start_server(f"--model=minilm={minilm_dir()}", "--cache-bytes=0",
                          env={"OMP_NUM_THREADS": str(args.threads)})
    try:
        asyncio.run(run(server.address, args.seconds, args.concurrency))
    finally:
        server.stop()


if __name__ == "__main__":
    main()
