"""Cache integrity: every stored value carries an HMAC-SHA256 tag over its key and bytes.

A value whose tag does not check under any accepted secret (flipped bytes, a value
written by someone without the secret, one moved to another key) is never served: it is
a miss, it is deleted, and it is counted (`CacheObserver.rejected`).

Secrets: values are written with the current secret and accepted with the current or the
previous one, so during a rolling secret change old and new replicas read each other's
values. HMAC-SHA256 was measured against keyed BLAKE2b and is about twice as fast here
(SHA extensions; tests/benchmarks/bench_mac.py).

Stored layout: the 32-byte tag, then the codec's value.

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

from ..secret_files import read_secret_lines
from .backend import Backend, CacheObserver, Leadership, NullObserver

TAG_BYTES = hashlib.sha256().digest_size
MIN_SECRET_BYTES = 16
"""Shortest secret a secret file may hold (a random 32-byte hex or base64 string is advised)."""

# Values at most this large are checked on the event loop, larger ones in a thread
# (hashlib releases the GIL while it hashes them).
_INLINE_BYTES = 256 * 1024
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


def tag(secret: bytes, key: str, value: bytes | memoryview) -> bytes:
    """HMAC-SHA256 over the length-prefixed key, then the value."""
    encoded = key.encode()
    mac = hmac.new(secret, _LENGTH.pack(len(encoded)), hashlib.sha256)
    mac.update(encoded)
    mac.update(value)
    return mac.digest()


def seal(secrets_: CacheSecrets, key: str, value: bytes) -> bytes:
    """The value as stored: its tag under the current secret, then its bytes."""
    return tag(secrets_.current, key, value) + value


def unseal(secrets_: CacheSecrets, key: str, stored: bytes) -> memoryview | None:
    """The value inside `stored` (a view, not a copy) if its tag checks under an accepted
    secret, else None."""
    if len(stored) < TAG_BYTES:
        return None
    body = memoryview(stored)[TAG_BYTES:]
    expected = stored[:TAG_BYTES]
    for secret in secrets_.accepted():
        if hmac.compare_digest(tag(secret, key, body), expected):
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
        sealed = seal(self._secrets, key, value) if len(value) <= _INLINE_BYTES else (
            await asyncio.to_thread(seal, self._secrets, key, value)
        )
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
            return memoryview(stored)[TAG_BYTES:]
        if len(stored) <= _INLINE_BYTES:
            value = unseal(self._secrets, key, stored)
        else:
            value = await asyncio.to_thread(unseal, self._secrets, key, stored)
        if value is None:
            self._observer.rejected()
            await self.inner.delete(key)
        elif self._in_process and await self.inner.get(key) is stored:  # still held after the check
            self._checked_objects[key] = stored
        return value

    def _forget(self, key: str) -> None:
        """The in-process backend let the value under `key` go."""
        self._checked_objects.pop(key, None)
