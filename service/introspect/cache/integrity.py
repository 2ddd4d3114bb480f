"""Cache integrity: every stored value carries a Poly1305 tag over its key and bytes,
under a one-time key derived from the secret and a random nonce of the value.

A value whose tag does not check under any accepted secret (flipped bytes, a value
written by someone without the secret, one moved to another key, one in another format
such as the HMAC-SHA256 layout of earlier versions) is never served: it is a miss, it is
deleted, and it is counted (`CacheObserver.rejected`).

Secrets: values are written with the current secret and accepted with the current or the
previous one, so during a rolling secret change old and new replicas read each other's
values.

Stored layout (format 2): the 4 bytes `FORMAT`, a random 16-byte nonce, the 16-byte tag,
then the codec's value. The tag is Poly1305 over the key's length (8 bytes, little
endian), the key and the value, under the one-time key HMAC-SHA256(secret, `_KDF_LABEL`
+ nonce): the construction of NaCl's secretbox and ChaCha20-Poly1305 (a PRF-derived
Poly1305 key per message), with the nonce drawn at random for every value sealed, so a
one-time key never tags two values (2^-128 per pair). Whoever lacks the secret cannot
learn a one-time key, and Poly1305 under an unknown one-time key is forged with
probability about 2^-100 per try, even knowing another value tagged under it. Poly1305
(OpenSSL, SIMD) hashes a 4 MB value in about 0.5 ms here against 3.3-3.7 ms for
HMAC-SHA256 (tests/benchmarks/bench_mac.py): the check is on every Redis hit's path
before its first message.

An in-process backend (memory) returns the very bytes object it was given, which nothing
outside the process can alter: each stored object is checked once (sealed here, or read
and checked), and a later read of the same object is not hashed again. Replacing the
object (as tampering with an entry would) means a new check. Redis values are new
objects on every read: every read is checked.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import secrets
import struct
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.poly1305 import Poly1305

from ..secret_files import read_secret_lines
from .backend import Backend, CacheObserver, Leadership, NullObserver

FORMAT = b"\xa7IC2"
"""First bytes of every stored value (format 2); any other value is refused."""
NONCE_BYTES = 16
TAG_BYTES = 16
HEADER_BYTES = len(FORMAT) + NONCE_BYTES + TAG_BYTES
"""Bytes in front of the codec's value: format, nonce, tag."""
MIN_SECRET_BYTES = 16
"""Shortest secret a secret file may hold (a random 32-byte hex or base64 string is advised)."""

_KDF_LABEL = b"introspect cache poly1305 key\x00"
# Poly1305 holds the GIL while it hashes (about 8 GB/s here, a thread would not free the
# loop): values are hashed on the event loop, in pieces of this size (about 0.5 ms each)
# with the loop free between them. Yielding after every MiB made a 4 MB check take
# 1.1 ms instead of 0.8 ms inside the server.
_PIECE_BYTES = 4 * 1024 * 1024
_LENGTH = struct.Struct("<Q")


@dataclass(frozen=True, repr=False)
class CacheSecrets:
    """The secret values are written with, and the previous one still accepted."""

    current: bytes
    previous: bytes | None = None

    @classmethod
    def from_file(cls, path: Path | str) -> CacheSecrets:
        """Reads `--cache-secret-file`: the current secret on the first line, optionally
        the previous one on the second; SecretFileError if unreadable or malformed."""
        lines = read_secret_lines(
            path, "cache secret file (--cache-secret-file)", most=2, min_length=MIN_SECRET_BYTES
        )
        return cls(lines[0], lines[1] if len(lines) > 1 else None)

    @classmethod
    def random(cls) -> CacheSecrets:
        """A secret of this process alone (its values are unreadable to any other)."""
        return cls(secrets.token_bytes(32))

    def accepted(self) -> tuple[bytes, ...]:
        """The secrets a value may be tagged with, current first."""
        return (self.current,) if self.previous is None else (self.current, self.previous)

    def __repr__(self) -> str:
        return "CacheSecrets(<redacted>)"


def one_time_key(secret: bytes, nonce: bytes | memoryview) -> bytes:
    """The Poly1305 key of the value sealed with `nonce`: HMAC-SHA256(secret, label + nonce)."""
    return hmac.new(secret, _KDF_LABEL + bytes(nonce), hashlib.sha256).digest()


def _mac(secret: bytes, key: str, nonce: bytes | memoryview) -> Poly1305:
    encoded = key.encode()
    mac = Poly1305(one_time_key(secret, nonce))
    mac.update(_LENGTH.pack(len(encoded)))
    mac.update(encoded)
    return mac


def tag(secret: bytes, key: str, nonce: bytes | memoryview, value: bytes | memoryview) -> bytes:
    """Poly1305 over the length-prefixed key, then the value, under the nonce's one-time key."""
    mac = _mac(secret, key, nonce)
    mac.update(value)
    return mac.finalize()


async def _tag_yielding(secret: bytes, key: str, nonce: bytes | memoryview, value: memoryview) -> bytes:
    """`tag`, hashing `value` in pieces with the event loop free between them."""
    mac = _mac(secret, key, nonce)
    for start in range(0, len(value), _PIECE_BYTES):
        if start:
            await asyncio.sleep(0)
        mac.update(value[start : start + _PIECE_BYTES])
    return mac.finalize()


def seal(secrets_: CacheSecrets, key: str, value: bytes) -> bytes:
    """The value as stored: format, a fresh nonce, its tag under the current secret, its bytes."""
    nonce = secrets.token_bytes(NONCE_BYTES)
    return b"".join((FORMAT, nonce, tag(secrets_.current, key, nonce, value), value))


def _parts(stored: bytes) -> tuple[memoryview, memoryview, bytes] | None:
    """(nonce, body, expected tag) of a format-2 value; None for anything else."""
    if len(stored) < HEADER_BYTES or not stored.startswith(FORMAT):
        return None
    view = memoryview(stored)
    nonce = view[len(FORMAT) : len(FORMAT) + NONCE_BYTES]
    return nonce, view[HEADER_BYTES:], bytes(view[len(FORMAT) + NONCE_BYTES : HEADER_BYTES])


def unseal(secrets_: CacheSecrets, key: str, stored: bytes) -> memoryview | None:
    """The value inside `stored` (a view, not a copy) if it is in format 2 and its tag
    checks under an accepted secret, else None."""
    parts = _parts(stored)
    if parts is None:
        return None
    nonce, body, expected = parts
    for secret in secrets_.accepted():
        if hmac.compare_digest(tag(secret, key, nonce, body), expected):
            return body
    return None


async def unseal_yielding(secrets_: CacheSecrets, key: str, stored: bytes) -> memoryview | None:
    """`unseal`, with the event loop free between pieces of a large value."""
    parts = _parts(stored)
    if parts is None:
        return None
    nonce, body, expected = parts
    for secret in secrets_.accepted():
        if hmac.compare_digest(await _tag_yielding(secret, key, nonce, body), expected):
            return body
    return None


class SealedBackend:
    """A backend whose values are tagged on the way in and checked on the way out
    (implements Backend around another one)."""

    def __init__(self, inner: Backend, secrets_: CacheSecrets, observer: CacheObserver | None = None) -> None:
        self.inner = inner
        self.name = inner.name
        self._secrets = secrets_
        self._observer = observer or NullObserver()
        # key -> the stored object last sealed or checked here, for an in-process inner
        # backend (which tells us when it lets a value go, so nothing is kept alive here)
        self._checked_objects: dict[str, bytes] = {}
        self._in_process = bool(getattr(inner, "in_process", False))
        if self._in_process:
            inner.on_remove = self._forget  # type: ignore[attr-defined]

    async def start(self) -> None:
        """Starts the inner backend."""
        await self.inner.start()

    async def get(self, key: str) -> memoryview | None:  # type: ignore[override]
        """The checked value under `key` (a view of the stored bytes); None when absent or
        rejected."""
        return await self._checked(key, await self.inner.get(key))

    async def set(self, key: str, value: bytes, ttl_seconds: int) -> bool:
        """Stores the tagged value."""
        sealed = seal(self._secrets, key, value)
        stored = await self.inner.set(key, sealed, ttl_seconds)
        if stored and self._in_process:
            self._checked_objects[key] = sealed
        return stored

    async def delete(self, key: str) -> None:
        """Deletes the value under `key`."""
        await self.inner.delete(key)

    async def lead(self, key: str) -> Leadership:
        """The inner backend's leadership, with a value another replica stored checked
        (a rejected one is deleted and leaves the caller to compute without a lease)."""
        leadership = await self.inner.lead(key)
        if leadership.value is None:
            return leadership
        return Leadership(value=await self._checked(key, leadership.value), lease=leadership.lease)

    def stored_bytes(self) -> float | None:
        """The inner backend's figure."""
        return self.inner.stored_bytes()

    async def close(self) -> None:
        """Closes the inner backend."""
        await self.inner.close()

    async def _checked(self, key: str, stored: bytes | None) -> memoryview | None:
        if stored is None:
            return None
        if self._checked_objects.get(key) is stored:  # this very object was sealed or checked here
            return memoryview(stored)[HEADER_BYTES:]
        if len(stored) <= _PIECE_BYTES:
            value = unseal(self._secrets, key, stored)
        else:
            value = await unseal_yielding(self._secrets, key, stored)
        if value is None:
            self._observer.rejected()
            await self.inner.delete(key)
        elif self._in_process and await self.inner.get(key) is stored:  # still held after the check
            self._checked_objects[key] = stored
        return value

    def _forget(self, key: str) -> None:
        """The in-process backend let the value under `key` go."""
        self._checked_objects.pop(key, None)
