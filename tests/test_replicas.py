"""Several replicas, for real: three server processes sharing one redis-server, called
by one client that spreads calls over them with round_robin (an `ipv4:` list) and the
default service config (retries on UNAVAILABLE).

What is checked, from the replicas' own /metrics and against eager transformers:
calls spread over every replica; identical concurrent calls are computed once across
them (single flight through Redis); a replica SIGKILLed mid-load fails no call (gRPC
retries those that had not started, the client restarts those cut mid-stream); a
replica started later, at an address in the list from the start, is reached within a
bound (see docs/operations.md for what reaches it and what `--max-connection-age-seconds`
adds).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import RunningServer, reference_inputs, reference_model, start_server
from introspect_client import AsyncClient, Client, SaliencyResult, targets
from services import RedisServer, free_port, metrics_port_flag, scrape, server_env, total, wait_until

REPLICAS = 3
MAX_CONNECTION_AGE_SECONDS = 2
RECONNECT_OPTIONS = [("grpc.initial_reconnect_backoff_ms", 200), ("grpc.max_reconnect_backoff_ms", 1000)]
"""Client options bounding how long a subchannel to a down address waits between tries."""

SLOW_SALIENCY = {"model": "gpt2", "method": "ig", "steps": 1024, "tolerance": 1e-9, "batch_size": 16,
                 "target": targets.next_token()}
"""Integrated gradients on the tiny GPT-2 streamed as refinements (5, 9, 17, ... points;
the tolerance is never met): a call that is seconds long and sends messages throughout."""


@dataclass
class Replica:
    """One server process and its metrics port."""

    server: RunningServer
    metrics_port: int

    def count(self, name: str, **labels: str) -> float:
        """The sum of this replica's samples `name` with `labels`."""
        return total(scrape(self.metrics_port), name, **labels)


@dataclass
class Cluster:
    """The replicas, the late replica's reserved port and the round_robin target."""

    replicas: list[Replica]
    redis: RedisServer
    late_port: int
    model_flag: str

    @property
    def target(self) -> str:
        """ipv4: list of every replica, the late one included."""
        ports = [replica.server.address.rsplit(":", 1)[1] for replica in self.replicas] + [str(self.late_port)]
        return "ipv4:" + ",".join(f"127.0.0.1:{port}" for port in ports)

    def start_replica(self, *arguments: str) -> Replica:
        """Starts one more replica sharing the Redis cache."""
        port, flag = metrics_port_flag()
        server = start_server(self.model_flag, *self.redis.server_flags(), flag,
                              f"--max-connection-age-seconds={MAX_CONNECTION_AGE_SECONDS}", *arguments,
                              env=server_env())
        return Replica(server, port)


@pytest.fixture(scope="module")
def cluster(model_dirs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """Three replicas of the tiny GPT-2 sharing one redis-server, started together."""
    redis = RedisServer(tmp_path_factory.mktemp("redis")).start()
    cluster = Cluster([], redis, free_port(), f"--model=gpt2={model_dirs['gpt2']}")
    try:
        with ThreadPoolExecutor(REPLICAS) as pool:
            cluster.replicas = list(pool.map(lambda _: cluster.start_replica(), range(REPLICAS)))
        yield cluster
    finally:
        for replica in cluster.replicas:
            replica.server.process.kill()
            replica.server.process.wait()
        redis.stop()


@pytest.fixture(scope="module")
def client(cluster: Cluster) -> Iterator[Client]:
    """A round_robin client over every replica (default service config)."""
    with Client(cluster.target, options=RECONNECT_OPTIONS, timeout=60) as connected:
        yield connected


def eager_attention(model_dirs: dict[str, Path], text: str) -> list[np.ndarray]:
    """GPT-2's attention maps of `text` from plain transformers: [heads, query, key] per layer."""
    with torch.no_grad():
        output = reference_model(model_dirs, "gpt2")(**reference_inputs(model_dirs, "gpt2", text), output_attentions=True)
    return [layer[0].numpy() for layer in output.attentions]


def requests_served(replicas: list[Replica], rpc: str) -> list[float]:
    """How many `rpc` calls each replica has finished (any status)."""
    return [replica.count("introspect_requests_total", rpc=rpc) for replica in replicas]


async def connected(cluster: Cluster) -> AsyncClient:
    """A round_robin AsyncClient over every replica, connected to all the running ones
    (a fresh channel sends its first calls to whichever replica answers first)."""
    client = AsyncClient(cluster.target, options=RECONNECT_OPTIONS, timeout=60)
    await client.list_models()
    await asyncio.sleep(0.3)  # the other subchannels connect over loopback meanwhile
    return client


def assert_same_saliency(result: SaliencyResult, reference: SaliencyResult) -> None:
    """Same tokens and the same attributions of every refinement."""
    assert result.tokens == reference.tokens and result.steps == reference.steps
    np.testing.assert_allclose(result.scores, reference.scores, rtol=1e-5, atol=1e-7)


def test_calls_spread_over_every_replica(cluster: Cluster, client: Client, model_dirs: dict[str, Path]) -> None:
    before = requests_served(cluster.replicas, "StreamAttention")
    texts = [f"round robin call number {index}" for index in range(4 * REPLICAS)]
    for text in texts:
        result = client.attention(text, model="gpt2", cache="bypass")
        for layer, expected in enumerate(eager_attention(model_dirs, text)):
            np.testing.assert_allclose(result[0].layers[layer], expected, atol=1e-5)
    served = [after - start for after, start in zip(requests_served(cluster.replicas, "StreamAttention"), before,
                                                    strict=True)]
    assert sum(served) == len(texts) and min(served) >= 2, served


async def test_identical_concurrent_calls_are_computed_once_across_replicas(cluster: Cluster) -> None:
    text = "Six callers ask the same question of three replicas."

    def cache_counts() -> tuple[float, float]:
        return (sum(replica.count("introspect_cache_misses_total", backend="redis") for replica in cluster.replicas),
                sum(replica.count("introspect_cache_hits_total", backend="redis") for replica in cluster.replicas))

    before = requests_served(cluster.replicas, "StreamSaliency")
    misses, hits = cache_counts()
    async with await connected(cluster) as client:
        results = await asyncio.gather(*(client.saliency(text, **SLOW_SALIENCY) for _ in range(6)))
        reference = await client.saliency(text, cache="bypass", **SLOW_SALIENCY)
    after_misses, after_hits = cache_counts()
    assert (after_misses - misses, after_hits - hits) == (1, 5)
    assert sorted(result.cached for result in results) == [False] + [True] * 5
    served = [after - start for after, start in zip(requests_served(cluster.replicas, "StreamSaliency"), before,
                                                    strict=True)]
    assert min(served) >= 1, served  # the six were spread, and still computed once
    for result in results:
        assert_same_saliency(result, reference)


async def test_a_replica_killed_mid_load_fails_no_call(cluster: Cluster) -> None:
    texts = [f"Call {index} outlives the replica it started on." for index in range(REPLICAS)]
    victim, survivors = cluster.replicas[0], cluster.replicas[1:]
    rpc = "StreamSaliency"
    first_messages = victim.count("introspect_time_to_first_message_seconds_count", rpc=rpc)
    finished = victim.count("introspect_requests_total", rpc=rpc)
    served_before = requests_served(survivors, rpc)
    async with await connected(cluster) as client:
        load = [asyncio.ensure_future(client.saliency(text, cache="bypass", **SLOW_SALIENCY)) for text in texts]
        # One call each (a replica computes one at a time): kill the victim once its call
        # has sent its first message, before it has finished.
        await asyncio.to_thread(
            wait_until,
            lambda: victim.count("introspect_time_to_first_message_seconds_count", rpc=rpc) > first_messages,
            30, 0.05, "the victim's calls to start streaming",
        )
        assert victim.count("introspect_requests_total", rpc=rpc) == finished
        victim.server.process.kill()
        results = await asyncio.gather(*load)
        references = await asyncio.gather(*(client.saliency(text, cache="bypass", **SLOW_SALIENCY) for text in texts))
    for result, reference in zip(results, references, strict=True):
        assert_same_saliency(result, reference)
    served = sum(requests_served(survivors, rpc)) - sum(served_before)
    assert served == len(texts) + len(texts), "survivors served the load (victim's calls restarted) and references"


async def test_a_replica_started_later_is_reached(cluster: Cluster, client: Client) -> None:
    client.list_models()  # the client's channel is up and its subchannel to the late port failing
    late = cluster.start_replica("--port", str(cluster.late_port))
    cluster.replicas.append(late)
    ready = time.monotonic()

    def reached() -> bool:
        client.attention("are you there, late replica?", model="gpt2", cache="bypass")
        return late.count("introspect_requests_total", rpc="StreamAttention") > 0

    await asyncio.to_thread(wait_until, reached, 30, 0.1, "a call on the late replica")
    elapsed = time.monotonic() - ready
    print(f"late replica reached {elapsed:.2f} s after it was ready")
    assert elapsed < MAX_CONNECTION_AGE_SECONDS + 1 + 2  # age + the client's largest reconnect backoff + slack
