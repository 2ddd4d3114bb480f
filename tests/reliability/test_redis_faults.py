"""Redis failing under a real server process while a bounded stream of requests keeps
flowing: a real redis-server killed (SIGKILL) and restarted on the same port, frozen
(SIGSTOP) and thawed, and flushed.

What is checked: no request fails or is slow, health stays SERVING, each outage is at
most one "unreachable" and one "reachable again" transition (log lines, and the
`introspect_cache_up` gauge sampled by scraping during the run), and once caching has
resumed (the first hit after the repair) every repeated request is a hit.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from conftest import RunningServer, start_server
from grpc_health.v1 import health_pb2, health_pb2_grpc
from services import (
    RedisServer,
    attention_request,
    metrics_port_flag,
    scrape,
    server_env,
    stream_attention,
    total,
)

TEXTS = 4  # a round sends one request per text, at once (so Redis has that many pooled
# connections to go stale); every round after the first repeats the texts
BEFORE, DURING = 3, 4  # rounds before the fault and during it
AFTER = 16  # requests after caching resumed (the first hit after the repair)
MAX_REQUESTS = 400  # bounds the wait for caching to resume (a probe every 2 s)
SLOW_SECONDS = 2.0  # a request this slow waited on Redis (socket timeouts are 250 ms)


@pytest.fixture(scope="module")
def fragile(
    model_dirs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[RedisServer, RunningServer, int]]:
    """A Redis of its own (to be killed, frozen and flushed) and a server using it."""
    redis_process = RedisServer(tmp_path_factory.mktemp("fragile-redis")).start()
    port, flag = metrics_port_flag()
    server = start_server(
        f"--model=gpt2={model_dirs['gpt2']}", *redis_process.server_flags(), flag, env=server_env()
    )
    yield redis_process, server, port
    server.stop()
    redis_process.stop()


def _health(address: str) -> int:
    with grpc.insecure_channel(address) as channel:
        return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=5).status


def _transitions(lines: list[str]) -> tuple[int, int]:
    """(down, up) transitions the server logged in `lines`."""
    down = sum("redis cache at" in line and "is unreachable" in line for line in lines)
    return down, sum("is reachable again" in line for line in lines)


class Traffic:
    """Rounds of TEXTS concurrent requests, recording each one's cache outcome, and
    `introspect_cache_up` scraped between rounds."""

    def __init__(self, server: RunningServer, metrics_port: int, round_name: str) -> None:
        self.server = server
        self.metrics_port = metrics_port
        self.round_name = round_name
        self.outcomes: list[tuple[str, str, float]] = []  # (text, cache, seconds)
        self.up: list[float] = []

    async def run(self, rounds: int) -> None:
        """Sends `rounds` rounds; a failed request raises."""
        for _ in range(rounds):
            await self.round()

    async def until_resumed(self, since: int) -> int:
        """Sends requests until AFTER of them followed the first hit after request
        `since`; returns the index of that hit."""
        while len(self.outcomes) < MAX_REQUESTS:
            caches = [cache for _, cache, _ in self.outcomes[since:]]
            if "hit" in caches and len(caches) - caches.index("hit") > AFTER:
                return since + caches.index("hit")
            await self.round()
        pytest.fail(f"caching did not resume within {MAX_REQUESTS} requests")

    async def round(self) -> None:
        """Sends one request per text at once, then samples the gauge."""
        await asyncio.gather(*(self._one(f"{self.round_name} request {index}") for index in range(TEXTS)))
        samples = await asyncio.to_thread(scrape, self.metrics_port)
        self.up.append(total(samples, "introspect_cache_up", backend="redis"))

    async def _one(self, text: str) -> None:
        started = time.monotonic()
        reply = await stream_attention(self.server.address, attention_request(text, "gpt2"), timeout=10)
        assert reply.messages[0].HasField("header") and len(reply.messages) > 1
        self.outcomes.append((text, reply.cache, time.monotonic() - started))

    def flips(self) -> int:
        """Changes of the sampled introspect_cache_up."""
        return sum(a != b for a, b in zip(self.up, self.up[1:]))


async def _outage(
    fragile: tuple[RedisServer, RunningServer, int], name: str, fault: Callable[[], None], repair: Callable[[], None]
) -> Traffic:
    """Traffic before `fault`, during it and after `repair`; checks what every outage
    must satisfy and returns the traffic for the caller's own checks."""
    _, server, port = fragile
    traffic = Traffic(server, port, name)
    log_start = len(server.output)
    await traffic.run(BEFORE)
    fault()
    try:
        await traffic.run(DURING)
        assert _health(server.address) == health_pb2.HealthCheckResponse.SERVING
    finally:
        repair()
    resumed = await traffic.until_resumed((BEFORE + DURING) * TEXTS)

    assert all(seconds < SLOW_SECONDS for _, _, seconds in traffic.outcomes), traffic.outcomes
    caches = [cache for _, cache, _ in traffic.outcomes]
    assert set(caches[TEXTS : BEFORE * TEXTS]) == {"hit"}, caches
    assert set(caches[(BEFORE + 1) * TEXTS : (BEFORE + DURING) * TEXTS]) == {"miss"}, caches
    seen: set[str] = set()
    for text, cache, _ in traffic.outcomes[resumed:]:
        assert cache == "hit" or text not in seen, (text, caches)  # no spurious miss once resumed
        seen.add(text)
    down, up = _transitions(server.output[log_start:])
    assert (down, up) == (1, 1), "".join(server.output[log_start:])
    assert traffic.flips() <= 2 and traffic.up[-1] == 1, traffic.up
    return traffic


async def test_redis_killed_and_restarted_flips_the_cache_off_and_on_once(
    fragile: tuple[RedisServer, RunningServer, int],
) -> None:
    redis_process, _, port = fragile
    await _outage(fragile, "kill", redis_process.kill, redis_process.start)
    assert total(scrape(port), "introspect_cache_errors_total", backend="redis") > 0


async def test_redis_frozen_and_thawed_flips_the_cache_off_and_on_once(
    fragile: tuple[RedisServer, RunningServer, int],
) -> None:
    redis_process, _, _ = fragile
    await _outage(fragile, "freeze", redis_process.pause, redis_process.resume)


async def test_flushed_redis_costs_one_miss(fragile: tuple[RedisServer, RunningServer, int]) -> None:
    redis_process, server, _ = fragile
    request = attention_request("after the flush", "gpt2")
    await stream_attention(server.address, request)
    assert (await stream_attention(server.address, request)).cache == "hit"
    redis_process.client().flushall()
    assert (await stream_attention(server.address, request)).cache == "miss"
    assert (await stream_attention(server.address, request)).cache == "hit"
