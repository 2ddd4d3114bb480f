"""Dynamic batching keeps each caller's call its own: cancelling one caller of a batch
leaves the others' results complete and exact, cancelling all of them frees the worker
within about a layer, a merged batch never outgrows --max-batch-tokens (the calls that
do not fit run in a forward of their own), and callers still take turns: a caller
flooding the server with batchable calls does not push another caller's single call
behind its flood.

In-process MiniLM servers without cache (every call computes), with metrics so that the
batch sizes are visible; results are compared with a non-batching server's
(--max-batch-size 1), which tests/test_batching.py checks against eager attention.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from batching_helpers import LONG_INPUTS, assert_same, batch_sizes, batches_of, plain_results, while_blocked
from conftest import InProcessServer
from introspect_client import AsyncClient, Client
from services import metrics_port_flag

FREE_BOUND_SECONDS = 2.5  # test_cancellation's bound for a freed worker
WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu".split()


def text(tokens: int, seed: int = 0) -> str:
    """A text of about `tokens` word tokens."""
    return " ".join(WORDS[(seed + index) % len(WORDS)] for index in range(tokens))


@pytest.fixture(scope="module")
def servers() -> Iterator[tuple[str, str, int]]:
    """(batching server, non-batching server, batching server's metrics port)."""
    port, flag = metrics_port_flag()
    batching = InProcessServer("--cache-bytes=0", flag, "--max-batch-size=8")
    plain = InProcessServer("--cache-bytes=0", "--max-batch-size=1")
    yield batching.address, plain.address, port
    assert batching.stop() == 0
    assert plain.stop() == 0


def test_cancelling_one_caller_of_a_batch_leaves_the_others_complete_and_exact(servers: tuple[str, str, int]) -> None:
    batching, plain, port = servers
    requests: list[dict[str, Any]] = [{"inputs": [text(40 + 30 * index, index), text(90, index)]} for index in range(5)]
    before = batch_sizes(port)
    results = asyncio.run(while_blocked(batching, requests, cancel={2}))
    assert batches_of(before, batch_sizes(port), len(requests)) == 1  # 5 reads as the "6" bucket
    assert results[2] is None
    kept = [index for index in range(len(requests)) if index != 2]
    for index, alone in zip(kept, plain_results(plain, [requests[index] for index in kept])):
        assert_same(results[index], alone)


def test_cancelling_every_caller_of_a_batch_frees_the_worker(servers: tuple[str, str, int]) -> None:
    batching, _, port = servers
    # 4 calls of 4 x 512 tokens, every layer: ~5 s merged on this machine if nothing stopped it
    requests: list[dict[str, Any]] = [{"inputs": [text(600, index)] * 4, "truncate": True, "view": "head_mean"}
                                      for index in range(4)]
    before = batch_sizes(port)
    results = asyncio.run(while_blocked(batching, requests, cancel=set(range(4)), blocker_inputs=4))
    assert results == [None] * 4
    assert batches_of(before, batch_sizes(port), 4) == 1
    with Client(batching, timeout=60) as client:
        started = time.perf_counter()
        client.attention("still serving", layers=[0], cache="bypass")
        assert time.perf_counter() - started < FREE_BOUND_SECONDS


def test_a_merged_batch_stays_within_max_batch_tokens(servers: tuple[str, str, int]) -> None:
    _, plain, _ = servers
    port, flag = metrics_port_flag()
    # the blocker's 4 x 512 tokens fit; each call's 2 x ~400 do, two calls do, three do not
    limited = InProcessServer("--cache-bytes=0", flag, "--max-batch-size=8", "--max-batch-tokens=2048")
    try:
        requests: list[dict[str, Any]] = [{"inputs": [text(380 + 10 * index, index), text(300, index)]}
                                          for index in range(3)]
        before = batch_sizes(port)
        results = asyncio.run(while_blocked(limited.address, requests, blocker_inputs=4))
        after = batch_sizes(port)
        assert batches_of(before, after, 2) == 1 and batches_of(before, after, 1) == 2, after  # the blocker's too
        for result, alone in zip(results, plain_results(plain, requests)):
            assert_same(result, alone, rtol=LONG_INPUTS)
    finally:
        assert limited.stop() == 0


FLOOD = 16
BATCH = 4
TOKENS = {"flooder": "flooder-token", "single": "single-token"}


@pytest.fixture(scope="module")
def fair_address(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A batching server (at most BATCH calls a batch) with two callers."""
    path: Path = tmp_path_factory.mktemp("batched-fairness") / "tokens.toml"
    path.write_text("".join(
        f'[callers.{name}]\ntoken_sha256 = "{hashlib.sha256(token.encode()).hexdigest()}"\n'
        for name, token in TOKENS.items()
    ))
    server = InProcessServer(f"--auth-tokens-file={path}", "--cache-bytes=0", f"--max-queue={FLOOD + 4}",
                             f"--max-batch-size={BATCH}")
    yield server.address
    assert server.stop() == 0


def caller(address: str, name: str) -> AsyncClient:
    """An async client of caller `name`."""
    return AsyncClient(address, metadata=[("authorization", f"Bearer {TOKENS[name]}")], timeout=300)


async def flood_then_single(address: str) -> tuple[list[float], float, Any, Any]:
    """(the flood's finish times, the single call's finish time, its result, the same
    request's result from the flooder alone beforehand)."""
    request = {"inputs": [text(200, 7)] * 2, "view": "head_mean"}
    async with caller(address, "flooder") as flooder, caller(address, "single") as single:
        reference = await flooder.attention(**request)
        finished: list[float] = []

        async def one_of_the_flood(index: int) -> None:
            stream = flooder.stream_attention([text(200, index)] * 2, view="head_mean").__aiter__()
            async for _ in stream:
                pass
            finished.append(time.perf_counter())

        flood = [asyncio.create_task(one_of_the_flood(index)) for index in range(FLOOD)]
        await asyncio.sleep(0.2)  # the flood queued, its first batch running
        result = await single.attention(**request)
        single_finished = time.perf_counter()
        await asyncio.gather(*flood)
    return finished, single_finished, result, reference


def test_a_single_caller_joins_the_next_batch_not_the_end_of_a_flood(fair_address: str) -> None:
    finished, single_finished, result, reference = asyncio.run(flood_then_single(fair_address))
    after_single = sum(1 for moment in finished if moment > single_finished)
    # batches of BATCH in turn: the flood's first batch, then the single call with the
    # flood's next ones; first-in-first-out would put it after all FLOOD
    assert after_single >= FLOOD - 2 * BATCH, f"only {after_single} of the flood's {FLOOD} calls finished after it"
    assert_same(result, reference, rtol=LONG_INPUTS)
