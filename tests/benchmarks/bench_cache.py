"""Result cache: latency of a hit against a miss, both backends, side by side in one run.

    python tests/benchmarks/bench_cache.py [--repeats 30] [--layers 5] [--dtype float32]
                                           [--max-message-bytes 4194304]

StreamAttention on MiniLM through the real client (results assembled into numpy
arrays) against real server subprocesses over loopback: one with the in-process memory
cache, one with the Redis cache (a redis-server started here). Input lengths are chosen
so that the selected layers' maps (12 heads x T x T x 4 bytes per layer in float32, 2 in
float16) weigh about 1, 2 and 4 MB.

  miss     CachePolicy REFRESH: computed, streamed, recorded and stored (the full miss path)
  compute  CachePolicy BYPASS: computed and streamed, the cache untouched (reference)
  hit      CachePolicy USE on a stored result: replayed
  raw hit  the same hit received with the raw stub (messages parsed, not assembled),
           as the floor receives: what the server adds to the transport; raw hits and
           floor calls alternate, so both see the same load
  floor    the same message sizes streamed by a bare grpc.aio server that sends
           pre-serialized bytes, received with the raw stub: gRPC transport alone

Goals (p50): a memory hit (raw) at most 1.3x the floor; a Redis hit (raw) at most 1.2 x
(floor + GET + integrity check), where GET is redis-py's GET of the stored value from
this process and the check is integrity.unseal (Poly1305, format 2) of it, each reported.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

import grpc  # noqa: E402
from bench_attention import text_of  # noqa: E402
from conftest import minilm_dir, start_server  # noqa: E402
from introspect.cache.integrity import CacheSecrets, unseal  # noqa: E402
from introspect_client import Client, attention_request  # noqa: E402
from introspect_contract import pb  # noqa: E402
from introspect_contract import pb_grpc  # noqa: E402
from services import RedisServer  # noqa: E402
from timing import markdown_table, measure, measure_interleaved, percentile_ms  # noqa: E402
from transport_floor import MAX_RECEIVE, floor_stub  # noqa: E402
from transformers import AutoTokenizer  # noqa: E402

HEADS = 12
VALUE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}
TARGET_MB = (1, 2, 4)


def tokens_for(megabytes: float, layers: int, dtype: str) -> int:
    """Input length whose attention maps over `layers` layers weigh about `megabytes`."""
    return round(math.sqrt(megabytes * 1e6 / (layers * HEADS * VALUE_BYTES[dtype])))


def raw_hit_and_floor_timings(
    address: str, request: pb.StreamAttentionRequest, sizes: list[int], repeats: int
) -> tuple[list[float], list[float]]:
    """Seconds per hit received with the raw stub (parsed messages, no assembly), and per
    call of the floor server streaming `sizes` through the raw stub, interleaved."""
    with floor_stub(sizes) as floor, grpc.insecure_channel(address, options=MAX_RECEIVE) as channel:
        stub = pb_grpc.IntrospectionStub(channel)
        return measure_interleaved([lambda: list(stub.StreamAttention(request)),
                                    lambda: list(floor.StreamAttention(pb.StreamAttentionRequest()))],
                                   repeats, warmup=3)


def redis_part_timings(redis_server: RedisServer, new_keys: set[bytes], repeats: int) -> tuple[list[float], list[float]]:
    """Seconds of a GET of the value stored under one of `new_keys` (the largest), and of
    its integrity check (unseal under the servers' secret)."""
    client = redis_server.client()
    sizes = {key: client.strlen(key) for key in new_keys}
    key = max(sizes, key=sizes.__getitem__)
    stored = client.get(key)
    secrets_ = CacheSecrets(redis_server.cache_secret.encode())
    cache_key = key.decode().rsplit(":", 1)[-1]
    assert unseal(secrets_, cache_key, stored) is not None, "the stored value does not check"
    gets = measure(lambda: client.get(key), repeats, warmup=3)
    checks = measure(lambda: unseal(secrets_, cache_key, stored), repeats, warmup=3)
    return gets, checks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=30, help="timed calls per cell")
    parser.add_argument("--layers", type=int, nargs="+", default=[5], help="layers returned (default: the last)")
    parser.add_argument("--dtype", choices=sorted(VALUE_BYTES), default="float32", help="value dtype on the wire")
    parser.add_argument("--max-message-bytes", type=int, default=4 * 1024 * 1024,
                        help="the servers' --max-message-bytes, which bounds chunk size (default: the server default)")
    arguments = parser.parse_args()
    path = minilm_dir()
    tokenizer = AutoTokenizer.from_pretrained(path)
    workdir = Path(tempfile.mkdtemp(prefix="bench-cache-"))
    redis_server = RedisServer(workdir).start()
    common = (f"--model=minilm={path}", f"--max-message-bytes={arguments.max_message_bytes}")
    servers = {
        "memory": start_server(*common),
        "redis": start_server(*common, *redis_server.server_flags()),
    }
    rows = []
    parts = []
    try:
        for backend, server in servers.items():
            with Client(server.address) as client:
                for megabytes in TARGET_MB:
                    tokens = tokens_for(megabytes, len(arguments.layers), arguments.dtype)
                    text = text_of(tokenizer, tokens)
                    options = {"model": "minilm", "layers": arguments.layers, "dtype": arguments.dtype}

                    def call(policy: str, text: str = text, options: dict = options) -> object:  # type: ignore[type-arg]
                        return client.attention(text, cache=policy, **options)

                    keys_before = set(redis_server.client().keys("*"))
                    result = call("refresh")
                    payload = sum(array.nbytes for array in result[0].layers.values())  # type: ignore[attr-defined]
                    sizes = [message.ByteSize() for message in client.stream_attention(text, **options)]
                    misses = measure(lambda: call("refresh"), arguments.repeats)
                    computes = measure(lambda: call("bypass"), arguments.repeats)
                    hits = measure(lambda: call("use"), arguments.repeats * 2)
                    raw_hits, floor = raw_hit_and_floor_timings(
                        server.address, attention_request(text, cache="use", **options), sizes, arguments.repeats * 2)
                    miss_p50, hit_p50 = percentile_ms(misses, 0.5), percentile_ms(hits, 0.5)
                    raw_p50, floor_p50 = percentile_ms(raw_hits, 0.5), percentile_ms(floor, 0.5)
                    if backend == "memory":
                        goal = 1.3 * floor_p50
                        parts.append([backend, f"{payload / 1e6:.2f} MB", f"{raw_p50:.2f}", f"{floor_p50:.2f}",
                                      "", "", f"{goal:.2f}", f"{raw_p50 / floor_p50:.2f}x floor",
                                      "met" if raw_p50 <= goal else "not met"])
                    else:
                        new_keys = {key for key in set(redis_server.client().keys("*")) - keys_before
                                    if key.startswith(b"introspect:result:")}
                        gets, checks = redis_part_timings(redis_server, new_keys, arguments.repeats * 2)
                        get_p50, check_p50 = percentile_ms(gets, 0.5), percentile_ms(checks, 0.5)
                        goal = 1.2 * (floor_p50 + get_p50 + check_p50)
                        parts.append([backend, f"{payload / 1e6:.2f} MB", f"{raw_p50:.2f}", f"{floor_p50:.2f}",
                                      f"{get_p50:.2f}", f"{check_p50:.2f}", f"{goal:.2f}",
                                      f"{raw_p50 / (floor_p50 + get_p50 + check_p50):.2f}x parts",
                                      "met" if raw_p50 <= goal else "not met"])
                    rows.append([
                        backend, f"{payload / 1e6:.2f} MB ({tokens} tokens, {len(sizes)} messages)",
                        f"{miss_p50:.1f}", f"{percentile_ms(misses, 0.99):.1f}",
                        f"{percentile_ms(computes, 0.5):.1f}",
                        f"{hit_p50:.2f}", f"{percentile_ms(hits, 0.99):.2f}",
                        f"{percentile_ms(floor, 0.5):.2f}",
                        f"{miss_p50 / hit_p50:.0f}x",
                    ])
    finally:
        for server in servers.values():
            server.stop()
        redis_server.stop()
    print(f"MiniLM StreamAttention, layers {arguments.layers}, all 12 heads, {arguments.dtype}, chunks of at most "
          f"{arguments.max_message_bytes} bytes, through the Python client over loopback; {arguments.repeats} misses "
          f"and {arguments.repeats * 2} hits per row.\n")
    print(markdown_table(
        ["backend", "result", "miss p50 ms", "miss p99 ms", "compute p50 ms", "hit p50 ms", "hit p99 ms",
         "floor p50 ms", "miss/hit p50"],
        rows,
    ))
    print("\nHits against the transport floor (p50 ms; raw hit: received with the raw stub like the floor):\n")
    print(markdown_table(
        ["backend", "result", "raw hit", "floor", "GET", "integrity check", "goal", "raw hit /", "goal met"],
        parts,
    ))


if __name__ == "__main__":
    main()
