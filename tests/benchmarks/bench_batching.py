"""Dynamic batching: throughput of concurrent StreamAttention callers, batching on vs off,
side by side in one run.

    python tests/benchmarks/bench_batching.py [--tokens 16 32] [--clients 8] [--seconds 8] [--lone 40] [--delay-ms MS] [--device cpu]

Two server processes of MiniLM (float32, no result cache, on --device: cpu by default,
cuda in the GPU check), started by this script: one
with the default batching (--max-batch-size 8, --max-batch-delay-ms 2), one with batching
off (--max-batch-size 1). At each input length:
  throughput  --clients closed-loop callers (one channel each, in one asyncio loop), each
              sending head-mean attention requests of exactly that many tokens (every
              request a different text) back to back for --seconds: requests per second
  batch       the mean batch size the batching server's introspect_batch_size shows
  lone p50    one caller alone, --lone sequential requests: median latency
The two servers are measured in turns (on, off, on, off) and the figures summed, so that
a neighbour's load on a shared machine falls on both. Ratios are on / off; the goals:
throughput >= 2x at 16 tokens and >= 1.6x at 32, lone p50 within 10% of unbatched.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

from bench_attention import text_of  # noqa: E402
from conftest import RunningServer, start_server  # noqa: E402
from services import metrics_port_flag, scrape, total  # noqa: E402
from timing import markdown_table, model_dir  # noqa: E402
from transformers import AutoTokenizer  # noqa: E402

from introspect_client import AsyncClient  # noqa: E402

GOALS = {16: 2.0, 32: 1.6}
LONE_GOAL = 1.10


class Texts:
    """Distinct texts of exactly `tokens` tokens (a different first word each)."""

    def __init__(self, tokenizer: AutoTokenizer, tokens: int) -> None:
        base = tokenizer(text_of(tokenizer, tokens), add_special_tokens=False)["input_ids"]
        vocabulary = [token for token in range(2000, 8000)]
        self._ids = [[token, *base[1:]] for token in vocabulary]
        self._next = 0

    def next(self) -> list[int]:
        """The next text, as token ids with [CLS] and [SEP]."""
        self._next += 1
        return [101, *self._ids[self._next % len(self._ids)], 102]


async def throughput(address: str, texts: Texts, clients: int, seconds: float) -> int:
    """Requests completed by `clients` closed-loop callers in `seconds`."""
    done = 0
    stop = time.perf_counter() + seconds

    async def caller(client: AsyncClient) -> None:
        nonlocal done
        while time.perf_counter() < stop:
            await client.attention(texts.next(), model="minilm", view="head_mean")
            done += 1

    connected = [AsyncClient(address, timeout=120) for _ in range(clients)]
    try:
        await asyncio.gather(*(caller(client) for client in connected))
    finally:
        for client in connected:
            await client.close()
    return done


async def lone_latencies(address: str, texts: Texts, repeats: int) -> list[float]:
    """Seconds of `repeats` sequential requests of one caller."""
    async with AsyncClient(address, timeout=120) as client:
        timings = []
        for _ in range(repeats):
            started = time.perf_counter()
            await client.attention(texts.next(), model="minilm", view="head_mean")
            timings.append(time.perf_counter() - started)
    return timings


def batch_mean(port: int) -> tuple[float, float]:
    """(sum, count) of introspect_batch_size."""
    samples = scrape(port)
    return total(samples, "introspect_batch_size_sum"), total(samples, "introspect_batch_size_count")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, nargs="+", default=[16, 32])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=8.0, help="per turn; two turns per server and length")
    parser.add_argument("--lone", type=int, default=40, help="sequential requests per turn of the lone caller")
    parser.add_argument("--delay-ms", type=float, help="--max-batch-delay-ms of the batching server (default: its default)")
    parser.add_argument("--model-dir", help="an encoder directory (default: the packaged MiniLM)")
    parser.add_argument("--device", default="cpu", help="the servers' --device (cpu, cuda, ...)")
    arguments = parser.parse_args()
    path = model_dir(arguments.model_dir)
    tokenizer = AutoTokenizer.from_pretrained(path)
    common = [f"--model=minilm={path}", f"--device={arguments.device}", "--dtype=float32", "--cache-bytes=0"]
    port, flag = metrics_port_flag()
    servers: dict[str, RunningServer] = {
        "on": start_server(*common, flag, *([f"--max-batch-delay-ms={arguments.delay_ms}"] if arguments.delay_ms else [])),
        "off": start_server(*common, "--max-batch-size=1"),
    }
    rows = []
    try:
        for tokens in arguments.tokens:
            texts = Texts(tokenizer, tokens)
            for server in servers.values():  # warm up
                asyncio.run(throughput(server.address, texts, arguments.clients, 1.0))
            done = {"on": 0, "off": 0}
            seconds = {"on": 0.0, "off": 0.0}
            lone: dict[str, list[float]] = {"on": [], "off": []}
            before = batch_mean(port)
            for _ in range(2):
                for name, server in servers.items():
                    started = time.perf_counter()
                    done[name] += asyncio.run(throughput(server.address, texts, arguments.clients, arguments.seconds))
                    seconds[name] += time.perf_counter() - started
            after = batch_mean(port)
            for _ in range(2):
                for name, server in servers.items():
                    lone[name] += asyncio.run(lone_latencies(server.address, texts, arguments.lone))
            rate = {name: done[name] / seconds[name] for name in servers}
            p50 = {name: statistics.median(lone[name]) * 1000 for name in servers}
            ratio = rate["on"] / rate["off"]
            mean_batch = (after[0] - before[0]) / max(after[1] - before[1], 1)
            goal = GOALS.get(tokens)
            rows.append([
                tokens, f"{rate['off']:.1f}", f"{rate['on']:.1f}", f"{ratio:.2f}x",
                f">= {goal}x: {'met' if ratio >= goal else 'not met'}" if goal else "-",
                f"{mean_batch:.1f}", f"{p50['off']:.1f}", f"{p50['on']:.1f}",
                f"{p50['on'] / p50['off']:.2f} ({'met' if p50['on'] <= LONE_GOAL * p50['off'] else 'not met'})",
            ])
    finally:
        for server in servers.values():
            server.stop()
    print(f"MiniLM on {arguments.device}, {arguments.clients} concurrent callers, head-mean attention of every layer, "
          f"{2 * arguments.seconds:g} s per server and length; lone caller: {2 * arguments.lone} requests")
    print(markdown_table(
        ["tokens", "off req/s", "on req/s", "throughput on/off", "goal", "mean batch", "lone p50 off (ms)",
         "lone p50 on (ms)", "lone on/off (<= 1.10)"],
        rows,
    ))


if __name__ == "__main__":
    main()
