"""Shared by the dynamic batching tests: calls sent together while a long call holds the
device's worker (so that they queue and are taken as one batch), the batch sizes the
metrics endpoint shows, and the comparison with a non-batching server's results."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
from introspect_client import AsyncClient, AttentionResult, Client
from services import scrape, total

EXACT = 1e-6  # batched vs unbatched, absolute and relative. A padded batch's other shape
# (more rows, a wider padding) changes the order of float32 sums in the BLAS kernels: on
# inputs of tens of tokens that moves values by up to ~1e-6, as a request's own several
# inputs already do unbatched
LONG_INPUTS = 1e-5  # relative, for inputs of hundreds of tokens (observed: 2.6e-6 at 0.4, 7
# values in 2 million; error grows with the number of layers' sums it passes through)
FLOAT32_GRADIENTS = 1e-5  # batched vs alone in float32, relative per value and of the
# largest value. A padded batch's other shapes change the order of float32 sums (EXACT's
# note); a backward passes through every layer twice, and the differences seen reach
# 5.7e-6 of the largest gradient (tiny LLaMA, per-dimension) and 1.4e-6 of a target score
# (MiniLM). In float64 the same comparison is exact (tests/test_batching_saliency.py): no leak.
BLOCKER = " ".join(["block"] * 600)  # truncated to MiniLM's 512 tokens


def batch_sizes(port: int) -> dict[str, float]:
    """introspect_batch_size's cumulative bucket counts by upper bound, and its sum and count."""
    samples = scrape(port)
    bounds = {dict(labels)["le"] for (name, labels) in samples if name == "introspect_batch_size_bucket"}
    sizes = {bound: total(samples, "introspect_batch_size_bucket", le=bound) for bound in bounds}  # all models
    return {**sizes, "sum": total(samples, "introspect_batch_size_sum"), "count": total(samples, "introspect_batch_size_count")}


def batches_of(before: dict[str, float], after: dict[str, float], size: int) -> float:
    """Batches of exactly `size` calls observed between two batch_sizes readings (the
    buckets used here bound 1, 2, 3, 4, 6, 8: sizes of 5 or 7 read as 6 or 8)."""
    bounds = ["1.0", "2.0", "3.0", "4.0", "6.0", "8.0"]
    upper = next(bound for bound in bounds if float(bound) >= size)
    lower = bounds[bounds.index(upper) - 1] if upper != "1.0" else None
    def delta(bound: str) -> float:
        return after.get(bound, 0) - before.get(bound, 0)

    return delta(upper) - (delta(lower) if lower else 0)


async def while_blocked(address: str, requests: list[dict[str, Any]], model: str = "minilm",
                        cancel: Collection[int] = (), blocker_inputs: int = 16, method: str = "attention") -> list[Any]:
    """Sends `requests` at once while a long call of another key holds the worker, so they
    queue and are taken together; the requests at the indices in `cancel` are cancelled
    once their header (sent when their batch starts) has arrived. Returns each one's
    result (None for a cancelled one, the exception for a failed one). `method`: the
    client's call (`attention`, `logit_lens`, `saliency`; its stream is `stream_<method>`)."""
    async with AsyncClient(address, timeout=300) as client:
        blocker = client.stream_attention([BLOCKER] * blocker_inputs, model="minilm", layers=[0],
                                          view="head_mean", truncate=True, cache="bypass").__aiter__()
        await blocker.__anext__()  # its header: the blocker runs

        async def one(index: int, request: dict[str, Any]) -> Any:
            if index not in cancel:
                return await getattr(client, method)(model=model, **request)
            stream = getattr(client, f"stream_{method}")(model=model, **request).__aiter__()
            await stream.__anext__()
            await stream.aclose()  # type: ignore[attr-defined]
            return None

        async def drain() -> None:
            async for _ in blocker:
                pass

        draining = asyncio.create_task(drain())
        results = await asyncio.gather(*(one(index, request) for index, request in enumerate(requests)),
                                       return_exceptions=True)
        await draining
    return list(results)


def plain_results(address: str, requests: list[dict[str, Any]], model: str = "minilm",
                  method: str = "attention") -> list[Any]:
    """The requests one at a time (`method`: the client's call, as in while_blocked)."""
    with Client(address, timeout=300) as client:
        return [getattr(client, method)(model=model, **request) for request in requests]


def assert_same(batched: AttentionResult, plain: AttentionResult, rtol: float = EXACT) -> None:
    """Equal tokens, layers and values (within EXACT absolute, `rtol` relative), top-k key
    indices equal."""
    assert len(batched) == len(plain)
    for mine, theirs in zip(batched, plain):
        assert mine.token_ids == theirs.token_ids
        assert mine.view == theirs.view and mine.heads == theirs.heads
        assert sorted(mine.layers) == sorted(theirs.layers)
        for layer in theirs.layers:
            np.testing.assert_allclose(mine.layers[layer], theirs.layers[layer], atol=EXACT, rtol=rtol)
        for layer in theirs.key_indices:
            np.testing.assert_array_equal(mine.key_indices[layer], theirs.key_indices[layer])


def assert_close(actual: Any, expected: Any, tolerance: float) -> None:
    """Equal within `tolerance`, relative per value and of the largest value."""
    expected = np.asarray(expected, dtype=np.float64)
    scale = float(np.abs(expected).max()) or 1.0
    np.testing.assert_allclose(actual, expected, rtol=tolerance, atol=tolerance * scale)


def assert_same_saliency(batched: Any, plain: Any, tolerance: float = FLOAT32_GRADIENTS) -> None:
    """Equal tokens and method; scores, per-dimension attributions and target score within
    `tolerance`."""
    assert batched.token_ids == plain.token_ids and batched.method == plain.method
    assert batched.batch_size == plain.batch_size
    assert_close(batched.scores, plain.scores, tolerance)
    assert (batched.per_dimension is None) == (plain.per_dimension is None)
    if plain.per_dimension is not None:
        assert_close(batched.per_dimension, plain.per_dimension, tolerance)
    assert_close(batched.target_score, plain.target_score, tolerance)
    for name in ("grid_scores", "pixel_scores"):  # images
        assert (getattr(batched, name) is None) == (getattr(plain, name) is None)
        if getattr(plain, name) is not None:
            assert_close(getattr(batched, name), getattr(plain, name), tolerance)


@contextmanager
def batching_and_plain(*models: str) -> Iterator[tuple[str, str, int]]:
    """Two in-process servers of `models` (serve flags), without the result cache: one
    batching (8 calls, 2 ms), one not. Yields (batching address, plain address, the
    batching server's metrics port); both must stop cleanly."""
    from conftest import InProcessServer
    from services import metrics_port_flag

    port, flag = metrics_port_flag()
    batching = InProcessServer(*models, "--cache-bytes=0", flag, "--max-batch-size=8", "--max-batch-delay-ms=2")
    plain = InProcessServer(*models, "--cache-bytes=0", "--max-batch-size=1")
    yield batching.address, plain.address, port
    assert batching.stop() == 0
    assert plain.stop() == 0


def assert_cancel_leaves_the_others(servers: tuple[str, str, int], requests: list[dict[str, Any]], model: str,
                                    method: str, same: Callable[[Any, Any], None]) -> None:
    """`requests` sent as one batch with the second caller cancelling after its header:
    one batch ran, the cancelled caller got nothing and every other caller's result is
    `same` as the non-batching server's."""
    batching, plain, port = servers
    before = batch_sizes(port)
    results = asyncio.run(while_blocked(batching, requests, model=model, cancel={1}, method=method))
    assert batches_of(before, batch_sizes(port), len(requests)) == 1
    assert results[1] is None
    kept = [index for index in range(len(requests)) if index != 1]
    for index, alone in zip(kept, plain_results(plain, [requests[index] for index in kept], model, method=method)):
        same(results[index], alone)
