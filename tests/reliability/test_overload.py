"""Overload: with --max-queue 2, a burst of concurrent calls gets RESOURCE_EXHAUSTED for
the excess at once, the accepted calls are all correct (against transformers' eager
attention), and health checks answered during the burst never miss."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import grpc
import numpy as np
import pytest
import torch
from conftest import InProcessServer, minilm_dir
from grpc_health.v1 import health_pb2, health_pb2_grpc
from introspect_client import AsyncClient, IntrospectError
from transformers import AutoModel, AutoTokenizer

BURST = 12
QUEUE = 2
REJECTION_SECONDS = 0.25  # goal: 50 ms
HEALTH_DEADLINE_SECONDS = 0.5
TEXTS = [f"Request number {index} asks about " + "the slow brown fox and the lazy dog " * 14 for index in range(BURST)]


@pytest.fixture(scope="module")
def address() -> Iterator[str]:
    """A MiniLM server with a queue of 2 per device and no cache (every call computes)."""
    server = InProcessServer(f"--model=minilm={minilm_dir()}", f"--max-queue={QUEUE}", "--cache-bytes=0")
    yield server.address
    assert server.stop() == 0


async def _call(client: AsyncClient, text: str) -> tuple[np.ndarray | None, grpc.StatusCode | None, float]:
    started = time.perf_counter()
    try:
        result = await client.attention(text)
        return np.stack([result[0].layers[layer] for layer in sorted(result[0].layers)]), None, 0.0
    except IntrospectError as error:
        return None, error.code, time.perf_counter() - started


async def _health(address: str, stop: asyncio.Event) -> list[int]:
    """Health/Check statuses every 20 ms until `stop` (an exception fails the test)."""
    statuses = []
    async with grpc.aio.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while not stop.is_set():
            response = await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=HEALTH_DEADLINE_SECONDS)
            statuses.append(response.status)
            await asyncio.sleep(0.02)
    return statuses


async def _burst(address: str) -> tuple[list[tuple[np.ndarray | None, grpc.StatusCode | None, float]], list[int]]:
    stop = asyncio.Event()
    health = asyncio.create_task(_health(address, stop))
    async with AsyncClient(address, timeout=60) as client:
        await client.attention("warm up")
        results = await asyncio.gather(*(_call(client, text) for text in TEXTS))
    await asyncio.sleep(0.1)
    stop.set()
    return results, await health


def test_a_burst_over_the_queue_is_refused_at_once_and_the_rest_is_right(address: str) -> None:
    results, health = asyncio.run(_burst(address))
    rejected = [seconds for maps, code, seconds in results if code is not None]
    assert all(code in (None, grpc.StatusCode.RESOURCE_EXHAUSTED) for _, code, _ in results)
    assert len(rejected) >= BURST - 2 * (QUEUE + 1), f"{len(rejected)} of {BURST} refused"
    assert max(rejected) < REJECTION_SECONDS, sorted(rejected)
    health_ok = health_pb2.HealthCheckResponse.SERVING
    assert len(health) >= 3 and set(health) == {health_ok}
    tokenizer = AutoTokenizer.from_pretrained(minilm_dir())
    model = AutoModel.from_pretrained(minilm_dir(), attn_implementation="eager").eval()
    accepted = [(text, maps) for text, (maps, code, _) in zip(TEXTS, results) if code is None]
    assert len(accepted) >= QUEUE + 1
    for text, maps in accepted:
        with torch.no_grad():
            reference = model(**tokenizer(text, return_tensors="pt"), output_attentions=True).attentions
        np.testing.assert_allclose(maps, torch.stack(reference)[:, 0].numpy(), atol=1e-4)
