"""Fairness across callers: the device queue takes callers in turn, so a caller flooding
the server does not hold up another caller's single request for longer than about one of
the flooder's requests (its own time measured in the same test is the reference); with a
first-in-first-out queue the single request would wait behind all twenty."""

from __future__ import annotations

import asyncio
import hashlib
import statistics
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from conftest import InProcessServer
from introspect_client import AsyncClient, targets

FLOOD = 20
BOUND = 4.0  # B's latency, in A's single-request times: the request running + B's own + slack for
# a shared machine (the client's twenty streams share the process); a FIFO queue gives ~20
TOKENS = {"flooder": "flooder-token", "single": "single-token"}
TEXT = "the cat sat on the mat and looked at the dog across the quiet garden"


@pytest.fixture(scope="module")
def address(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A MiniLM server with two callers and no cache (every call computes)."""
    path: Path = tmp_path_factory.mktemp("fairness") / "tokens.toml"
    path.write_text("".join(
        f'[callers.{name}]\ntoken_sha256 = "{hashlib.sha256(token.encode()).hexdigest()}"\n'
        for name, token in TOKENS.items()
    ))
    server = InProcessServer(f"--auth-tokens-file={path}", "--cache-bytes=0", f"--max-queue={FLOOD + 4}")
    yield server.address
    assert server.stop() == 0


def client(address: str, name: str) -> AsyncClient:
    """An async client of caller `name`."""
    return AsyncClient(address, metadata=[("authorization", f"Bearer {TOKENS[name]}")], timeout=300)


async def ablate(connected: AsyncClient, text: str) -> tuple[np.ndarray, float]:
    """Per-head ablation of `text`: target deltas and the time the call took."""
    started = time.perf_counter()
    result = await connected.ablate(text, target=targets.embedding_norm())
    return np.asarray(result.target_delta), time.perf_counter() - started


async def flood_then_single(address: str) -> tuple[float, np.ndarray, float, list[float], float]:
    """(A's single-request time, B's result, B's latency, A's finish times, B's finish time)."""
    async with client(address, "flooder") as flooder, client(address, "single") as single:
        await ablate(flooder, "warm up")
        reference, _ = await ablate(flooder, TEXT)
        alone = statistics.median([(await ablate(flooder, f"{TEXT} {index}"))[1] for index in range(3)])
        finished: list[float] = []

        async def one_of_the_flood(index: int) -> None:
            await ablate(flooder, f"{TEXT} number {index}")
            finished.append(time.perf_counter())

        flood = [asyncio.create_task(one_of_the_flood(index)) for index in range(FLOOD)]
        await asyncio.sleep(max(0.2, alone / 2))  # the flood queued, its first request running
        result, latency = await ablate(single, TEXT)
        single_finished = time.perf_counter()
        await asyncio.gather(*flood)
    np.testing.assert_allclose(result, reference, rtol=1e-5, atol=1e-6)
    return alone, result, latency, finished, single_finished


def test_a_single_request_waits_for_about_one_of_a_flooders_requests(address: str) -> None:
    alone, _, latency, finished, single_finished = asyncio.run(flood_then_single(address))
    after_single = sum(1 for moment in finished if moment > single_finished)
    assert latency <= BOUND * alone, f"B waited {latency:.2f}s; A's request alone takes {alone:.2f}s"
    assert after_single >= FLOOD - 3, f"only {after_single} of A's {FLOOD} requests finished after B's"
