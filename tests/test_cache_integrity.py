"""Cache integrity: tagged values, tampering, secret rotation, Redis AUTH and bad secret
files. Real parts: a redis-server started here with --requirepass, a real server process
called over loopback, and the in-process memory backend behind a real ResultCache.

The reference for a stored value is computed here from the documented layout, not with
the service's helpers: the format bytes, a 16-byte nonce, then Poly1305 (cryptography's)
over the key's length as 8 little-endian bytes, the key and the value, under the one-time
key HMAC-SHA256(secret, label + nonce). Values in the HMAC-SHA256 layout of earlier
versions (tag, then value) are refused.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import os
import struct
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from conftest import RunningServer, start_server
from introspect.cache import CacheSecrets, MemoryBackend, Outcome, Policy, RedisBackend, ResultCache, SealedBackend
from cryptography.hazmat.primitives.poly1305 import Poly1305
from introspect.cache.integrity import HEADER_BYTES
from introspect_contract import pb
from services import (RedisServer, attention_request, chunks, metrics_port_flag, scrape, server_env, stream_attention,
                      total, wait_until)

CURRENT, PREVIOUS, UNKNOWN = (f"{name}-secret-0123456789abcdef".encode() for name in ("current", "previous", "unknown"))
PASSWORD = "redis-password-for-tests"


FORMAT = b"\xa7IC2"
LABEL = b"introspect cache poly1305 key\x00"


def reference_seal(secret: bytes, key: str, value: bytes, nonce: bytes | None = None) -> bytes:
    """Format 2: format, nonce, Poly1305(HMAC-SHA256(secret, label + nonce); len(key) (u64
    LE), key, value), value."""
    nonce = os.urandom(16) if nonce is None else nonce
    one_time_key = hmac.new(secret, LABEL + nonce, hashlib.sha256).digest()
    tag = Poly1305.generate_tag(one_time_key, struct.pack("<Q", len(key.encode())) + key.encode() + value)
    return FORMAT + nonce + tag + value


def reference_checks(secret: bytes, key: str, stored: bytes) -> bool:
    """True when `stored` is format 2 and its tag is the reference one under `secret`."""
    nonce, value = stored[4:20], stored[36:]
    return stored[:4] == FORMAT and reference_seal(secret, key, value, nonce) == stored


def legacy_seal(secret: bytes, key: str, value: bytes) -> bytes:
    """The layout of earlier versions: HMAC-SHA256 over len(key) (u64 LE), key, value; then value."""
    encoded = key.encode()
    return hmac.new(secret, struct.pack("<Q", len(encoded)) + encoded + value, hashlib.sha256).digest() + value


def flipped(stored: bytes, position: int = -1) -> bytes:
    """`stored` with every bit of one byte inverted."""
    data = bytearray(stored)
    data[position] ^= 0xFF
    return bytes(data)


async def stored_value(backend: MemoryBackend, key: str) -> bytes:
    """The raw value under `key` once the cache's background store has put it there."""
    for _ in range(500):
        entry = backend._entries.get(key)
        if entry is not None:
            return entry[0]
        await asyncio.sleep(0.01)
    raise AssertionError(f"nothing stored under {key}")


class Rejections:
    """A cache observer that counts rejected values (and ignores the rest)."""

    def __init__(self) -> None:
        self.count = 0

    def hit(self, rpc: str, coalesced: bool) -> None:
        """Ignored."""

    def miss(self, rpc: str) -> None:
        """Ignored."""

    def error(self, operation: str) -> None:
        """Ignored."""

    def available(self, up: bool) -> None:
        """Ignored."""

    def rejected(self) -> None:
        """Counts one."""
        self.count += 1


async def test_memory_backend_never_serves_a_tampered_value() -> None:
    inner = MemoryBackend(1 << 20)
    rejections = Rejections()
    cache = ResultCache(SealedBackend(inner, CacheSecrets(CURRENT), rejections), ttl_seconds=60,
                        max_value_bytes=1 << 20, observer=rejections)
    computed = [b"first message", b"second message" * 100]
    computations = 0

    async def compute() -> AsyncIterator[bytes]:
        nonlocal computations
        computations += 1
        for message in computed:
            yield message

    async def one() -> tuple[Outcome, list[bytes]]:
        served = await cache.serve("key", Policy.USE, "Rpc", compute)
        try:
            return served.outcome, [message async for message in served.messages()]
        finally:
            await served.close()

    assert await one() == (Outcome.MISS, computed)
    stored = await stored_value(inner, "key")
    assert reference_checks(CURRENT, "key", stored)
    assert await one() == (Outcome.HIT, computed) and computations == 1

    inner._entries["key"] = (flipped(stored), inner._entries["key"][1])
    assert await cache.backend.get("key") is None  # rejected and deleted
    assert "key" not in inner._entries and rejections.count == 1
    inner._entries["key"] = (flipped(stored, HEADER_BYTES + 3), float("inf"))
    assert await one() == (Outcome.MISS, computed) and computations == 2 and rejections.count == 2
    restored = await stored_value(inner, "key")  # recomputed and stored afresh (a new nonce)
    assert reference_checks(CURRENT, "key", restored) and restored[HEADER_BYTES:] == stored[HEADER_BYTES:]

    # Every header byte counts (format, nonce, tag), and the earlier HMAC-SHA256 layout
    # with a correct tag under the same secret is refused.
    body = stored[HEADER_BYTES:]
    for count, value in enumerate([flipped(restored, position) for position in (0, 4, 19, 20, 35)]
                                  + [legacy_seal(CURRENT, "key", body)], start=3):
        inner._entries["key"] = (value, float("inf"))
        assert await cache.backend.get("key") is None and "key" not in inner._entries
        assert rejections.count == count
    inner._entries["key"] = (reference_seal(CURRENT, "key", body), float("inf"))  # written by another sealer
    assert await one() == (Outcome.HIT, computed) and computations == 2
    await cache.close()


async def test_memory_values_are_hashed_once_per_stored_object(monkeypatch: pytest.MonkeyPatch) -> None:
    from introspect.cache import integrity

    hashed: list[str] = []
    real_tag = integrity.tag
    monkeypatch.setattr(integrity, "tag",
                        lambda secret, key, nonce, value: hashed.append(key) or real_tag(secret, key, nonce, value))
    inner = MemoryBackend(100)
    sealed = SealedBackend(inner, CacheSecrets(CURRENT))
    await sealed.set("a", b"x" * 40, 60)
    assert hashed == ["a"]  # sealing
    for _ in range(3):
        assert await sealed.get("a") == b"x" * 40
    assert hashed == ["a"]  # the object this backend sealed is not hashed again
    genuine = inner._entries["a"][0]
    inner._entries["a"] = (genuine[:1] + genuine[1:], inner._entries["a"][1])  # an equal value, another object
    assert await sealed.get("a") == b"x" * 40 and hashed == ["a", "a"]  # checked once...
    assert await sealed.get("a") == b"x" * 40 and hashed == ["a", "a"]  # ...then trusted
    inner._entries["a"] = (flipped(genuine), inner._entries["a"][1])
    assert await sealed.get("a") is None and "a" not in inner._entries  # another object: checked, rejected
    await sealed.set("b", b"y" * 40, 60)
    await sealed.set("c", b"z" * 40, 60)  # evicts b (budget 100 bytes, 72 each)
    assert await sealed.get("b") is None and sealed._checked_objects.keys() == {"c"}  # nothing kept for b


async def test_large_values_checked_in_pieces_agree_with_the_reference() -> None:
    """Values over the piece size (4 MiB) are hashed in pieces with the loop free between
    them: a reference-sealed 9 MB value is accepted, one flipped byte anywhere refused."""
    body = os.urandom(9_000_000)
    genuine = reference_seal(PREVIOUS, "big", body)
    for position, accepted in ((None, True), (HEADER_BYTES + 5_000_000, False), (-1, False)):
        inner = MemoryBackend(1 << 25)
        sealed = SealedBackend(inner, CacheSecrets(CURRENT, PREVIOUS))
        inner._entries["big"] = (genuine if position is None else flipped(genuine, position), float("inf"))
        value = await sealed.get("big")
        assert (value is not None and value == body) if accepted else value is None


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A redis-server that requires a password; servers get the current and previous secret."""
    server = RedisServer(tmp_path_factory.mktemp("redis"), password=PASSWORD,
                         cache_secret=f"{CURRENT.decode()}\n{PREVIOUS.decode()}").start()
    yield server
    server.stop()


async def test_redis_values_rotate_and_unknown_or_tampered_ones_are_deleted(redis_server: RedisServer) -> None:
    url = f"redis://:{PASSWORD}@127.0.0.1:{redis_server.port}/0"
    rejections = Rejections()
    old = SealedBackend(RedisBackend(url, "rot:"), CacheSecrets(PREVIOUS))
    rotated = SealedBackend(RedisBackend(redis_server.url, "rot:", password=PASSWORD),
                            CacheSecrets(CURRENT, PREVIOUS), rejections)
    stranger = SealedBackend(RedisBackend(url, "rot:"), CacheSecrets(UNKNOWN))
    sync = redis_server.client()
    try:
        assert await old.set("k", b"written before the rotation", ttl_seconds=30)
        raw = sync.get("rot:result:k")
        assert reference_checks(PREVIOUS, "k", raw) and raw[HEADER_BYTES:] == b"written before the rotation"
        assert await rotated.get("k") == b"written before the rotation" and rejections.count == 0

        assert await rotated.set("k", b"after", ttl_seconds=30)
        raw = sync.get("rot:result:k")
        assert reference_checks(CURRENT, "k", raw) and raw[HEADER_BYTES:] == b"after"
        assert await old.get("k") is None  # a replica without the new secret cannot read it

        assert await stranger.set("k", b"forged", ttl_seconds=30)
        assert await rotated.get("k") is None and rejections.count == 1 and sync.get("rot:result:k") is None

        assert await rotated.set("k", b"genuine", ttl_seconds=30)
        sync.set("rot:result:k", flipped(sync.get("rot:result:k")))
        assert (await rotated.lead("k")).value is None and rejections.count == 2

        assert await rotated.set("k", b"genuine", ttl_seconds=30)
        sync.set("rot:result:moved", sync.get("rot:result:k"))  # a genuine value under another key
        assert await rotated.get("moved") is None and rejections.count == 3
        assert await rotated.get("k") == b"genuine"
    finally:
        for backend in (old, rotated, stranger):
            await backend.close()


async def test_redis_without_the_password_is_unavailable_not_an_error(redis_server: RedisServer) -> None:
    backend = RedisBackend(redis_server.url, "auth:")
    try:
        assert await backend.get("k") is None
        assert not await backend.set("k", b"v", ttl_seconds=5)
    finally:
        await backend.close()
    assert redis_server.client().get("auth:result:k") is None


@pytest.fixture(scope="module")
def server(model_dirs: dict[str, Path], redis_server: RedisServer) -> Iterator[tuple[RunningServer, int]]:
    """A server on the password-protected Redis, with metrics."""
    port, flag = metrics_port_flag()
    running = start_server(f"--model=gpt2={model_dirs['gpt2']}", *redis_server.server_flags(), flag, env=server_env())
    yield running, port
    running.stop()


async def test_a_tampered_value_in_redis_is_recomputed_deleted_and_counted(
    server: tuple[RunningServer, int], redis_server: RedisServer
) -> None:
    running, port = server
    sync = redis_server.client()
    request = attention_request("Tampered values are never served.", "gpt2", layers=[0])
    reference = await stream_attention(running.address, attention_request(
        "Tampered values are never served.", "gpt2", layers=[0], cache=pb.CACHE_POLICY_BYPASS))  # BYPASS: the model's numbers
    assert reference.cache == "bypass"
    assert (await stream_attention(running.address, request)).cache == "miss"
    # stored after the last message, in the background
    [key] = wait_until(lambda: sync.keys("introspect:result:*"), 30, message="the result stored in redis")
    genuine = sync.get(key)
    cache_key = key.decode().rsplit(":", 1)[1]
    assert reference_checks(CURRENT, cache_key, genuine)
    assert (await stream_attention(running.address, request)).cache == "hit"

    body = genuine[HEADER_BYTES:]
    for value in (flipped(genuine), flipped(genuine, 0), flipped(genuine, 10),  # the value, format, nonce
                  flipped(genuine, 30), reference_seal(UNKNOWN, cache_key, body),  # tag; another secret
                  legacy_seal(CURRENT, cache_key, body)):  # the earlier HMAC-SHA256 layout
        before = total(scrape(port), "introspect_cache_rejected_total", backend="redis")
        sync.set(key, value)
        reply = await stream_attention(running.address, request)
        assert reply.cache == "miss" and not reply.messages[0].header.cached
        assert chunks(reply.messages) == chunks(reference.messages)
        assert total(scrape(port), "introspect_cache_rejected_total", backend="redis") == before + 1
        # the bad value was deleted and the result stored again
        stored_again = wait_until(lambda: sync.get(key), 30, message="the result stored again")
        assert reference_checks(CURRENT, cache_key, stored_again) and stored_again[HEADER_BYTES:] == body

    # Written under the previous secret (a replica not yet rotated): accepted.
    sync.set(key, reference_seal(PREVIOUS, cache_key, body))
    reply = await stream_attention(running.address, request)
    assert reply.cache == "hit" and chunks(reply.messages) == chunks(reference.messages)


def _start_fails(tmp_path: Path, *flags: str) -> str:
    """Runs the server with `flags`; asserts exit code 2 and returns its one error line."""
    result = subprocess.run([sys.executable, "-m", "introspect", "--port", "0", *flags], capture_output=True,
                            text=True, timeout=120, env={**os.environ, **server_env()}, cwd=tmp_path)
    output = (result.stdout + result.stderr).strip()
    assert result.returncode == 2, output
    assert "Traceback" not in output and len(output.splitlines()) == 1, output
    return output


@pytest.mark.parametrize(
    ("content", "flag", "says"),
    [
        (None, "--cache-secret-file", "No such file"),
        ("", "--cache-secret-file", "holds 0 secret lines"),
        ("one-secret-0123456789\ntwo-secret-0123456789\nthree-secret-0123456789\n", "--cache-secret-file",
         "holds 3 secret lines"),
        ("short-secret\n", "--cache-secret-file", "at least 16"),
        (b"\xff\xfe not text", "--cache-secret-file", "UnicodeDecodeError"),
        ("first-password\nsecond-password\n", "--redis-password-file", "expected one line"),
        (None, "--redis-password-file", "No such file"),
    ],
)
def test_a_bad_secret_file_stops_the_server_with_one_line_naming_it(
    tmp_path: Path, content: str | bytes | None, flag: str, says: str
) -> None:
    path = tmp_path / "secret"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    good = tmp_path / "good"
    good.write_text(CURRENT.decode())
    flags = [f"{flag}={path}"]
    if flag == "--redis-password-file":
        flags.append(f"--cache-secret-file={good}")
    line = _start_fails(tmp_path, "--redis-url=redis://127.0.0.1:1/0", *flags)
    assert str(path) in line and flag in line and says in line, line
    for secret in ("short-secret", "one-secret", "first-password"):
        assert secret not in line


def test_redis_without_a_cache_secret_is_refused_at_start(tmp_path: Path) -> None:
    line = _start_fails(tmp_path, "--redis-url=redis://127.0.0.1:1/0")
    assert "--cache-secret-file" in line


async def test_rediss_speaks_tls_with_a_password_and_refuses_a_wrong_ca(tmp_path: Path) -> None:
    """`rediss://` (TLS, the CA in the URL's query) with AUTH, against a real redis-server
    listening with TLS only: values round-trip sealed; a client trusting another CA gets
    nothing (unavailable, not an error)."""
    from certificates import Authority
    from services import free_port, require_binary, stop_process

    authority, stranger = Authority("redis test CA"), Authority("another CA")
    cert, key = authority.issue("127.0.0.1", server=True).write(tmp_path, "redis")
    ca, other_ca = authority.write(tmp_path, "ca"), stranger.write(tmp_path, "other-ca")
    port = free_port()
    process = subprocess.Popen(
        [require_binary("redis-server"), "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
         "--tls-cert-file", str(cert), "--tls-key-file", str(key), "--tls-ca-cert-file", str(ca),
         "--tls-auth-clients", "no", "--requirepass", PASSWORD, "--save", "", "--appendonly", "no",
         "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    trusted = SealedBackend(RedisBackend(f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={ca}", "tls:", password=PASSWORD),
                            CacheSecrets(CURRENT))
    untrusting = SealedBackend(
        RedisBackend(f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={other_ca}", "tls:", password=PASSWORD),
        CacheSecrets(CURRENT))
    try:
        wait_until(lambda: process.poll() is None and _listening(port), 10, message="redis-server with TLS")
        assert await trusted.set("k", b"over TLS", ttl_seconds=30)
        assert await trusted.get("k") == b"over TLS"
        assert await untrusting.get("k") is None
    finally:
        await trusted.close()
        await untrusting.close()
        stop_process(process, timeout=10)


def _listening(port: int) -> bool:
    import socket

    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0
