"""Soak: mixed traffic against a server process for a while, watching its memory.

On demand (not part of the suite):

    PYTHONPATH=service:clients/python:contract/python python tests/load/soak.py --minutes 30

Starts `python -m introspect` on a loopback port with tiny random GPT-2 and the packaged
MiniLM, then runs `--concurrency` workers sending attention, saliency, head ablation and
logit lens requests (cached and not), with cancels, deadlines and bad requests mixed in.
After `--warmup-seconds` it samples the server's RSS (/proc/PID/status VmRSS) every
`--sample-seconds`. It reports memory growth (mean of the last three samples over the
first three), requests by status code and the errors seen, and exits 1 when growth is
over `--max-growth-percent` or any request ended INTERNAL or UNKNOWN.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import grpc
import grpc.aio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: conftest, services

from conftest import build_tiny_models, start_server  # noqa: E402
from introspect_client import targets  # noqa: E402
from introspect_client.ablation import ablation_request  # noqa: E402
from introspect_client.logit_lens import logit_lens_request  # noqa: E402
from introspect_client.options import attention_request  # noqa: E402
from introspect_client.saliency import saliency_request  # noqa: E402
from introspect_contract import pb_grpc  # noqa: E402
from services import long_text, server_env  # noqa: E402

BAD_CODES = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN}
TEXTS = [f"sample text number {index} about {long_text(index % 7 + 3)}" for index in range(40)]

Call = Callable[[pb_grpc.IntrospectionStub, random.Random], Awaitable[None]]


async def _consume(stream: grpc.aio.UnaryStreamCall, cancel_after: int | None = None) -> None:  # type: ignore[type-arg]
    """Reads a stream to its end, or cancels it after `cancel_after` messages."""
    count = 0
    async for _ in stream:
        count += 1
        if cancel_after is not None and count >= cancel_after:
            stream.cancel()
            return


def _text(rng: random.Random) -> str:
    return rng.choice(TEXTS)


async def attention(stub: pb_grpc.IntrospectionStub, rng: random.Random) -> None:
    """Attention maps; cached (texts repeat) or bypassing the cache."""
    cache = rng.choice(["use", "use", "bypass"])
    await _consume(stub.StreamAttention(attention_request(_text(rng), model=rng.choice(["gpt2", "minilm"]),
                                                          cache=cache), timeout=30))


async def saliency(stub: pb_grpc.IntrospectionStub, rng: random.Random) -> None:
    """Gradient or occlusion saliency of gpt2's next token."""
    request = saliency_request(_text(rng), model="gpt2", target=targets.next_token(token_id=2000),
                               method=rng.choice(["gradient", "occlusion", "ig"]), cache=rng.choice(["use", "bypass"]))
    await _consume(stub.StreamSaliency(request, timeout=30))


async def ablation(stub: pb_grpc.IntrospectionStub, rng: random.Random) -> None:
    """Per-head ablation of gpt2."""
    request = ablation_request(_text(rng), model="gpt2", target=targets.next_token(token_id=2000), cache="bypass")
    await _consume(stub.StreamHeadAblation(request, timeout=30))


async def logit_lens(stub: pb_grpc.IntrospectionStub, rng: random.Random) -> None:
    """Logit lens of gpt2."""
    await _consume(stub.StreamLogitLens(logit_lens_request(_text(rng), model="gpt2", top_k=5,
                                                           cache=rng.choice(["use", "bypass"])), timeout=30))


async def cancelled(stub: pb_grpc.IntrospectionStub, rng: random.Random) -> None:
    """A long MiniLM integrated-gradients stream, cancelled after its first refinement."""
    request = saliency_request(long_text(200), model="minilm", target=targets.embedding_norm(), method="ig",
                               steps=256, tolerance=1e-30, batch_size=8, truncate=True, cache="bypass")
    await _consume(stub.StreamSaliency(request, timeout=30), cancel_after=2)


async def deadline(stub: pb_grpc.IntrospectionStub, rng: random.Random) -> None:
    """The same long stream with a deadline it cannot meet (DEADLINE_EXCEEDED)."""
    request = saliency_request(long_text(200), model="minilm", target=targets.embedding_norm(), method="ig",
                               steps=256, batch_size=8, truncate=True, cache="bypass")
    await _consume(stub.StreamSaliency(request, timeout=rng.uniform(0.05, 0.3)))


async def bad(stub: pb_grpc.IntrospectionStub, rng: random.Random) -> None:
    """Bad requests: a layer out of range, an unknown model, an empty input."""
    requests = [
        attention_request(_text(rng), model="gpt2", layers=[99]),
        attention_request(_text(rng), model="no-such-model"),
        attention_request("", model="gpt2"),
    ]
    await _consume(stub.StreamAttention(rng.choice(requests), timeout=30))


MIX: list[tuple[Call, int]] = [
    (attention, 30), (saliency, 15), (ablation, 10), (logit_lens, 20), (cancelled, 5), (deadline, 5), (bad, 15),
]


def rss_kib(pid: int) -> int:
    """VmRSS of a process, in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


class Soak:
    """Counts and samples of one run."""

    def __init__(self, address: str, pid: int, seconds: float, concurrency: int) -> None:
        self.address = address
        self.pid = pid
        self.until = time.monotonic() + seconds
        self.concurrency = concurrency
        self.codes: collections.Counter[str] = collections.Counter()
        self.errors: collections.Counter[str] = collections.Counter()
        self.samples: list[int] = []

    async def worker(self, seed: int) -> None:
        """Sends requests from the mix until the end of the run."""
        rng = random.Random(seed)
        calls, weights = zip(*MIX, strict=True)
        async with grpc.aio.insecure_channel(self.address) as channel:
            stub = pb_grpc.IntrospectionStub(channel)
            while time.monotonic() < self.until:
                call = rng.choices(calls, weights)[0]
                try:
                    await call(stub, rng)
                    self.codes["OK"] += 1
                except grpc.aio.AioRpcError as error:
                    code = error.code()
                    self.codes[code.name] += 1
                    if code in BAD_CODES or (code == grpc.StatusCode.CANCELLED and call is not cancelled):
                        self.errors[f"{call.__name__}: {code.name}: {error.details()}"] += 1
                except asyncio.CancelledError:
                    self.codes["CANCELLED (client)"] += 1

    async def sample(self, warmup: float, every: float) -> None:
        """Samples the server's RSS every `every` s after `warmup` s."""
        await asyncio.sleep(warmup)
        while time.monotonic() < self.until:
            self.samples.append(rss_kib(self.pid))
            await asyncio.sleep(every)

    async def run(self, warmup: float, every: float) -> None:
        """The workers and the sampler, to the end of the run."""
        await asyncio.gather(self.sample(warmup, every), *(self.worker(seed) for seed in range(self.concurrency)))

    def growth_percent(self) -> float:
        """Mean of the last three RSS samples over the first three, in percent."""
        if len(self.samples) < 6:
            raise RuntimeError(f"only {len(self.samples)} RSS samples: run longer or sample more often")
        first, last = statistics.mean(self.samples[:3]), statistics.mean(self.samples[-3:])
        return 100 * (last - first) / first


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=30.0, help="duration of the traffic (default 30)")
    parser.add_argument("--concurrency", type=int, default=4, help="requests in flight at once (default 4)")
    parser.add_argument("--warmup-seconds", type=float, default=60.0, help="traffic before the first RSS sample")
    parser.add_argument("--sample-seconds", type=float, default=5.0, help="seconds between RSS samples")
    parser.add_argument("--max-growth-percent", type=float, default=5.0, help="fail above this RSS growth")
    parser.add_argument("--cache-bytes", type=int, default=16 << 20,
                        help="the server's result cache budget (default 16 MiB: full within the warm-up, so that "
                             "its filling up to --cache-bytes, bounded by design, is not read as growth)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Runs the soak; 0 when memory held and no request ended INTERNAL or UNKNOWN."""
    arguments = parse_arguments(argv)
    with tempfile.TemporaryDirectory() as directory:
        models = build_tiny_models(Path(directory))
        server = start_server(f"--model=gpt2={models['gpt2']}", f"--model=minilm={models['minilm']}",
                              f"--cache-bytes={arguments.cache_bytes}", env=server_env())
        try:
            soak = Soak(server.address, server.process.pid, arguments.minutes * 60, arguments.concurrency)
            started = time.monotonic()
            asyncio.run(soak.run(arguments.warmup_seconds, arguments.sample_seconds))
            elapsed = time.monotonic() - started
        finally:
            exit_code = server.stop()
    growth = soak.growth_percent()
    requests = sum(soak.codes.values())
    print(f"soak: {elapsed / 60:.1f} min, {requests} requests ({requests / elapsed:.1f}/s), "
          f"concurrency {arguments.concurrency}, server exit code {exit_code}")
    print(f"RSS: {soak.samples[0] / 1024:.0f} MiB first sample, {soak.samples[-1] / 1024:.0f} MiB last, "
          f"{max(soak.samples) / 1024:.0f} MiB peak, {len(soak.samples)} samples; growth {growth:+.2f}%")
    print("requests by status: " + ", ".join(f"{code} {count}" for code, count in soak.codes.most_common()))
    for error, count in soak.errors.most_common():
        print(f"error x{count}: {error}")
    failed = growth > arguments.max_growth_percent or bool(soak.errors) or exit_code != 0
    print("FAILED" if failed else "passed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
