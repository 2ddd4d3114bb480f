"""The result cache, with real parts: the codec and keys, both backends (a real
redis-server started here), and real server processes called over loopback.

What is checked: a hit replays the stream exactly (marked cached), bypass and refresh,
TTL expiry, the value size cap, single flight of concurrent identical calls (one server,
and two replicas sharing Redis) and a replica dying while it computes. Redis killed,
restarted, frozen and flushed while requests keep flowing: tests/reliability/test_redis_faults.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from conftest import RunningServer, start_server
from introspect.cache import MemoryBackend, Outcome, Policy, RedisBackend, ResultCache, codec, result_key
from introspect.rpc.caching import canonical_request, input_messages
from introspect_client import Client
from introspect_contract import pb
from introspect_contract import pb_grpc
from services import (
    RedisServer,
    attention_request,
    chunks,
    long_text,
    metrics_port_flag,
    scrape,
    server_env,
    stream_attention,
    total,
    wait_until,
)

HEAVY_REQUEST = {"layers": [0], "view": pb.ATTENTION_VIEW_HEAD_MEAN, "truncate": True}
"""MiniLM over 512 tokens, one small map back: slow enough (a full forward) that
concurrent identical calls overlap."""


# ---------------------------------------------------------------------------------------
# Codec, keys and request walking


def test_codec_round_trips_and_stores_incompressible_bodies_raw() -> None:
    rng = np.random.default_rng(0)
    dense = [rng.bytes(16384) for _ in range(3)]
    sparse = [bytes(8192), b"header", b""]
    for messages, kind in ((dense, codec.RAW), (sparse, codec.ZSTD)):
        value = codec.encode(messages)
        assert value[0] == kind
        assert codec.decode(value) == messages
        frames = codec.frames(value)
        assert [bytes(frame) for frame in frames] == messages
        if kind == codec.RAW:  # views into the stored value itself, not copies
            assert all(frame.obj is value for frame in frames)
    with pytest.raises(codec.CorruptValue):
        codec.decode(codec.encode(sparse)[:-3])
    with pytest.raises(codec.CorruptValue):  # a bad last frame: nothing returned, not a partial list
        codec.frames(codec.encode(dense)[:-3])
    with pytest.raises(codec.CorruptValue):
        codec.decode(b"\x07abc")


def test_key_covers_fingerprint_rpc_request_processed_inputs_and_serving_settings() -> None:
    from introspect.results import EncodedInput

    def identities(*token_ids: list[int]) -> list[bytes]:
        return [EncodedInput(tuple(ids), tuple(map(str, ids)), None, False, len(ids)).identity for ids in token_ids]

    base = ("f" * 64, "/introspect.v1.Introspection/StreamAttention", b"request", identities([101, 7, 102]))
    key = result_key(*base)
    assert len(key) == 64 and key == result_key(*base)
    variants = [
        ("e" * 64, *base[1:]),
        (base[0], "/introspect.v1.Introspection/StreamSaliency", *base[2:]),
        (*base[:2], b"request2", base[3]),
        (*base[:3], identities([101, 8, 102])),
        (*base[:3], identities([101, 7], [102])),
        (*base[:3], [b"pixels:" + bytes(12)]),  # an image's processed pixels are one input's identity too
        (*base, "dtype=float16"),
    ]
    assert len({result_key(*variant) for variant in variants} | {key}) == len(variants) + 1


def test_canonical_request_ignores_the_policy_and_resolves_the_model() -> None:
    use = attention_request("a text", model="", cache=pb.CACHE_POLICY_UNSPECIFIED, layers=[1])
    refresh = attention_request("a text", model="minilm", cache=pb.CACHE_POLICY_REFRESH, layers=[1])
    assert canonical_request(use, "minilm") == canonical_request(refresh, "minilm")
    other_layer = attention_request("a text", "minilm", layers=[2])
    assert canonical_request(use, "minilm") != canonical_request(other_layer, "minilm")


def test_every_input_of_a_request_is_found_wherever_it_is() -> None:
    request = pb.StreamHeadAblationRequest(
        input=pb.Input(text=pb.TextInput(text="main")),
        target=pb.Target(
            embedding_similarity=pb.EmbeddingSimilarityTarget(reference=pb.Input(token_ids=pb.TokenIds(ids=[5])))
        ),
        mean_references=[pb.Input(text=pb.TextInput(text="r0")), pb.Input(text=pb.TextInput(text="r1"))],
    )
    assert [path for path, _ in input_messages(request)] == [
        "input",
        "target.embedding_similarity.reference",
        "mean_references[0]",
        "mean_references[1]",
    ]


# ---------------------------------------------------------------------------------------
# Backends and the result cache in process


async def test_memory_backend_evicts_least_recently_used_within_its_budget_and_expires() -> None:
    now = [0.0]
    backend = MemoryBackend(budget_bytes=100, clock=lambda: now[0])
    assert await backend.set("a", b"a" * 40, ttl_seconds=10)
    assert await backend.set("b", b"b" * 40, ttl_seconds=10)
    assert await backend.get("a") is not None  # a is now the most recently used
    assert await backend.set("c", b"c" * 40, ttl_seconds=10)
    assert await backend.get("b") is None and await backend.get("a") is not None
    assert backend.stored_bytes() == 80
    assert not await backend.set("huge", b"x" * 101, ttl_seconds=10)
    now[0] = 10.5
    assert await backend.get("a") is None and backend.stored_bytes() == 40


async def _collect(served) -> list[bytes]:  # type: ignore[no-untyped-def]
    try:
        return [message async for message in served.messages()]
    finally:
        await served.close()


async def test_concurrent_identical_streams_are_computed_once_in_process() -> None:
    cache = ResultCache(MemoryBackend(1 << 20), ttl_seconds=60, max_value_bytes=1 << 20)
    computations = []

    async def compute():  # type: ignore[no-untyped-def]
        computations.append(1)
        for index in range(3):
            await asyncio.sleep(0.05)
            yield f"message {index}".encode()

    async def one() -> tuple[Outcome, list[bytes]]:
        served = await cache.serve("key", Policy.USE, "Rpc", compute)
        return served.outcome, await _collect(served)

    results = await asyncio.gather(*(one() for _ in range(5)))
    assert len(computations) == 1
    assert sorted(outcome.value for outcome, _ in results) == ["hit"] * 4 + ["miss"]
    assert all(messages == [b"message 0", b"message 1", b"message 2"] for _, messages in results)
    # A caller that goes away mid-stream stores nothing; the next caller computes.
    served = await cache.serve("other", Policy.USE, "Rpc", compute)
    async for _ in served.messages():
        break
    await served.close()
    await asyncio.sleep(0.05)
    again = await cache.serve("other", Policy.USE, "Rpc", compute)
    assert again.outcome is Outcome.MISS
    await again.close()
    await cache.close()


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A redis-server on a free port for this module."""
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


async def test_redis_backend_prefixes_keys_sets_ttls_and_hands_over_expired_leases(redis_server: RedisServer) -> None:
    first = RedisBackend(redis_server.url, "unit:", lease_seconds=0.6)
    second = RedisBackend(redis_server.url, "unit:", lease_seconds=0.6)
    sync = redis_server.client()
    try:
        assert await first.set("k", b"value", ttl_seconds=30)
        assert sync.get("unit:result:k") == b"value"
        assert 0 < sync.ttl("unit:result:k") <= 30
        assert await second.get("k") == b"value"

        held = await first.lead("job")
        assert held.lease is not None and held.value is None

        async def store_then_release() -> None:
            await asyncio.sleep(0.3)
            await first.set("job", b"done", ttl_seconds=30)
            await held.lease.release(stored=True)  # type: ignore[union-attr]

        waiter = asyncio.ensure_future(second.lead("job"))
        await store_then_release()
        assert (await waiter).value == b"done"

        # A holder that dies stops renewing; the waiter takes over once the lease lapses.
        sync.set("unit:lock:orphan", "someone-dead", px=600)
        started = time.monotonic()
        taken = await second.lead("orphan")
        assert taken.lease is not None and 0.4 < time.monotonic() - started < 3
        await taken.lease.release(stored=False)
        assert sync.get("unit:lock:orphan") == b"released"
    finally:
        await first.close()
        await second.close()


# ---------------------------------------------------------------------------------------
# Through real servers


@pytest.fixture(scope="module")
def memory_server(model_dirs: dict[str, Path]) -> Iterator[tuple[RunningServer, int]]:
    """A server with the default in-process cache, serving minilm and gpt2, with metrics."""
    port, flag = metrics_port_flag()
    server = start_server(f"--model=minilm={model_dirs['minilm']}", f"--model=gpt2={model_dirs['gpt2']}", flag,
                          env=server_env())
    yield server, port
    server.stop()


async def test_a_hit_replays_the_stream_marked_cached(memory_server: tuple[RunningServer, int]) -> None:
    server, port = memory_server
    request = attention_request("A hit replays what the miss sent.", "gpt2", dtype=pb.DTYPE_FLOAT16)
    miss = await stream_attention(server.address, request)
    hit = await stream_attention(server.address, request)
    assert (miss.cache, hit.cache) == ("miss", "hit")
    assert not miss.messages[0].header.cached and hit.messages[0].header.cached
    hit.messages[0].header.cached = False
    assert hit.messages[0] == miss.messages[0]
    assert chunks(hit.messages) == chunks(miss.messages) and len(chunks(hit.messages)) == 3
    with Client(server.address) as client:
        computed = client.attention("Arrays from a hit.", model="gpt2", cache="refresh")
        replayed = client.attention("Arrays from a hit.", model="gpt2")
    assert computed[0].layers.keys() == replayed[0].layers.keys()
    for layer, values in computed[0].layers.items():
        np.testing.assert_array_equal(replayed[0].layers[layer], values)
    assert total(scrape(port), "introspect_cache_hits_total", backend="memory") >= 2


async def test_bypass_neither_reads_nor_writes_and_refresh_recomputes(memory_server: tuple[RunningServer, int]) -> None:
    server, _ = memory_server
    text = "Bypass and refresh."
    bypass = await stream_attention(server.address, attention_request(text, "gpt2", cache=pb.CACHE_POLICY_BYPASS))
    assert bypass.cache == "bypass" and not bypass.messages[0].header.cached
    assert (await stream_attention(server.address, attention_request(text, "gpt2"))).cache == "miss"
    assert (await stream_attention(server.address, attention_request(text, "gpt2"))).cache == "hit"
    refresh = await stream_attention(server.address, attention_request(text, "gpt2", cache=pb.CACHE_POLICY_REFRESH))
    assert refresh.cache == "refresh" and not refresh.messages[0].header.cached
    bypass = await stream_attention(server.address, attention_request(text, "gpt2", cache=pb.CACHE_POLICY_BYPASS))
    assert bypass.cache == "bypass"
    assert (await stream_attention(server.address, attention_request(text, "gpt2"))).cache == "hit"
    # Same question by token ids, and another model: different results, different keys.
    ids_request = pb.StreamAttentionRequest(model="gpt2", inputs=[pb.Input(token_ids=pb.TokenIds(ids=[101, 2023, 102]))])
    assert (await stream_attention(server.address, ids_request)).cache == "miss"
    assert (await stream_attention(server.address, attention_request(text, "minilm"))).cache == "miss"


async def test_errors_are_not_cached_and_bad_policies_are_rejected(memory_server: tuple[RunningServer, int]) -> None:
    server, _ = memory_server
    for _ in range(2):
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await stream_attention(server.address, attention_request("bad layer", "gpt2", layers=[99]))
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await stream_attention(server.address, attention_request("bad policy", "gpt2", cache=9))
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "cache" in (error.value.details() or "")
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await stream_attention(server.address, attention_request("no such model", "nope"))
    assert error.value.code() == grpc.StatusCode.NOT_FOUND


async def test_concurrent_identical_calls_are_computed_once(memory_server: tuple[RunningServer, int]) -> None:
    server, port = memory_server
    before = scrape(port)
    request = attention_request(long_text(600) + " single flight", "minilm", **HEAVY_REQUEST)
    replies = await asyncio.gather(*(stream_attention(server.address, request) for _ in range(6)))
    after = scrape(port)

    def delta(name: str) -> float:
        return total(after, name, backend="memory") - total(before, name, backend="memory")

    assert sorted(reply.cache for reply in replies) == ["hit"] * 5 + ["miss"]
    assert delta("introspect_cache_misses_total") == 1
    assert delta("introspect_cache_hits_total") == 5
    assert delta("introspect_cache_coalesced_total") >= 1
    assert all(chunks(reply.messages) == chunks(replies[0].messages) for reply in replies)


@pytest.fixture(scope="module")
def short_lived_server(model_dirs: dict[str, Path]) -> Iterator[RunningServer]:
    """A server whose results live 1 s and may be at most 4 KiB."""
    server = start_server(f"--model=gpt2={model_dirs['gpt2']}", "--cache-ttl-seconds=1",
                          "--cache-max-value-bytes=4096", env=server_env())
    yield server
    server.stop()


async def test_results_expire_after_their_ttl(short_lived_server: RunningServer) -> None:
    request = attention_request("short lived", "gpt2", layers=[0])
    assert (await stream_attention(short_lived_server.address, request)).cache == "miss"
    assert (await stream_attention(short_lived_server.address, request)).cache == "hit"
    await asyncio.sleep(1.3)
    assert (await stream_attention(short_lived_server.address, request)).cache == "miss"


async def test_results_over_the_size_cap_are_never_cached(short_lived_server: RunningServer) -> None:
    request = attention_request(long_text(60), "gpt2")  # 3 layers x 4 heads x 60 x 60 floats
    replies = [await stream_attention(short_lived_server.address, request) for _ in range(3)]
    assert [reply.cache for reply in replies] == ["miss"] * 3
    assert sum(len(chunk) for chunk in chunks(replies[0].messages)) > 4096
    assert all(chunks(reply.messages) == chunks(replies[0].messages) for reply in replies)


@pytest.fixture(scope="module")
def replicas(model_dirs: dict[str, Path], redis_server: RedisServer) -> Iterator[list[tuple[RunningServer, int]]]:
    """Two servers sharing one Redis, each with metrics."""
    running = []
    try:
        for _ in range(2):
            port, flag = metrics_port_flag()
            server = start_server(f"--model=minilm={model_dirs['minilm']}", f"--model=gpt2={model_dirs['gpt2']}",
                                  *redis_server.server_flags(), flag, env=server_env())
            running.append((server, port))
        yield running
    finally:
        for server, _ in running:
            server.stop()


async def test_two_replicas_sharing_redis_compute_concurrent_identical_calls_once(
    replicas: list[tuple[RunningServer, int]], redis_server: RedisServer
) -> None:
    request = attention_request(long_text(600) + " across replicas", "minilm", **HEAVY_REQUEST)
    before = [scrape(port) for _, port in replicas]
    replies = await asyncio.gather(*(stream_attention(replicas[i % 2][0].address, request) for i in range(6)))
    after = [scrape(port) for _, port in replicas]

    def delta(name: str) -> float:
        pairs = zip(after, before, strict=True)
        return sum(total(a, name, backend="redis") - total(b, name, backend="redis") for a, b in pairs)

    assert sorted(reply.cache for reply in replies) == ["hit"] * 5 + ["miss"]
    assert delta("introspect_cache_misses_total") == 1
    assert delta("introspect_cache_hits_total") == 5
    assert all(chunks(reply.messages) == chunks(replies[0].messages) for reply in replies)
    assert redis_server.client().keys("introspect:result:*")
    # A replica that did not compute it serves it from Redis afterwards.
    for server, _ in replicas:
        assert (await stream_attention(server.address, request)).cache == "hit"


async def test_a_replica_dying_mid_computation_blocks_nobody(
    replicas: list[tuple[RunningServer, int]], redis_server: RedisServer, model_dirs: dict[str, Path]
) -> None:
    doomed = start_server(f"--model=minilm={model_dirs['minilm']}", *redis_server.server_flags(), env=server_env())
    request = attention_request(long_text(600) + " the leader dies", "minilm", **HEAVY_REQUEST)
    sync = redis_server.client()

    def doomed_call() -> None:
        with grpc.insecure_channel(doomed.address) as channel, contextlib.suppress(grpc.RpcError):  # it dies
            list(pb_grpc.IntrospectionStub(channel).StreamAttention(request, timeout=30))

    caller = threading.Thread(target=doomed_call, daemon=True)
    try:
        caller.start()
        wait_until(lambda: sync.keys("introspect:lock:*"), 30, interval=0.002, message="the doomed replica's lock")
        doomed.process.kill()
        started = time.monotonic()
        reply = await stream_attention(replicas[0][0].address, request, timeout=30)
        elapsed = time.monotonic() - started
    finally:
        doomed.process.kill()
        doomed.process.wait()
        caller.join(10)
    assert reply.cache == "miss" and reply.messages[0].HasField("header")
    assert elapsed < 5 + 10, f"waited {elapsed:.1f}s for a dead replica (lease 5 s)"
    assert (await stream_attention(replicas[1][0].address, request)).cache == "hit"
