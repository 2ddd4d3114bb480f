"""On demand: rejection latency and accepted throughput under overload.

    python tests/load/overload.py [--bursts 20] [--burst 12] [--queue 2]

A MiniLM server (a process of its own unless --in-process, no cache, --max-queue QUEUE)
gets BURSTS bursts of BURST concurrent StreamAttention calls (distinct ~130-token texts,
all layers); prints the distribution of the time to RESOURCE_EXHAUSTED of the refused
calls and the throughput of the accepted ones (calls and accepted calls per second of
wall time). In process, the client's decoding of the accepted maps competes with the
server for one interpreter, which lengthens the refusals' tail."""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from conftest import InProcessServer, minilm_dir, start_server  # noqa: E402
from introspect_client import AsyncClient, IntrospectError  # noqa: E402


async def _call(client: AsyncClient, text: str) -> tuple[bool, float]:
    started = time.perf_counter()
    try:
        await client.attention(text)
        return True, time.perf_counter() - started
    except IntrospectError:
        return False, time.perf_counter() - started


async def _run(address: str, bursts: int, burst: int) -> None:
    rejected: list[float] = []
    accepted: list[float] = []
    async with AsyncClient(address, timeout=120) as client:
        await client.attention("warm up")
        started = time.perf_counter()
        for round_ in range(bursts):
            texts = [f"Burst {round_} call {index}: " + "the slow brown fox and the lazy dog " * 14 for index in range(burst)]
            for ok, seconds in await asyncio.gather(*(_call(client, text) for text in texts)):
                (accepted if ok else rejected).append(seconds)
        wall = time.perf_counter() - started
    quantiles = statistics.quantiles(rejected, n=100) if len(rejected) > 1 else rejected * 99
    print(f"calls {bursts * burst}, accepted {len(accepted)}, refused {len(rejected)}, wall {wall:.2f} s")
    print(f"refusal ms: p50 {quantiles[49] * 1e3:.1f}  p90 {quantiles[89] * 1e3:.1f}  "
          f"p99 {quantiles[98] * 1e3:.1f}  max {max(rejected) * 1e3:.1f}")
    print(f"accepted: {len(accepted) / wall:.1f} calls/s, latency p50 {statistics.median(accepted) * 1e3:.0f} ms")


def main() -> None:
    """Parses the flags, serves MiniLM in process and runs the bursts."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bursts", type=int, default=20)
    parser.add_argument("--burst", type=int, default=12)
    parser.add_argument("--queue", type=int, default=2)
    parser.add_argument("--in-process", action="store_true", help="serve in this process (shares the GIL)")
    args = parser.parse_args()
    flags = (f"--model=minilm={minilm_dir()}", f"--max-queue={args.queue}", "--cache-bytes=0")
    server = InProcessServer(*flags) if args.in_process else start_server(*flags)
    try:
        asyncio.run(_run(server.address, args.bursts, args.burst))
    finally:
        server.stop()


if __name__ == "__main__":
    main()
