"""The in-process backend: an LRU over a byte budget, with a time to live."""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable

from .backend import Leadership


class MemoryBackend:
    """Values in this process's memory, least recently used evicted first once the
    budget (counted in value bytes) is reached. Needs no setup; not shared by replicas."""

    name = "memory"
    in_process = True
    """`get` returns the very bytes object `set` stored: nothing outside this process can
    alter a value (integrity.SealedBackend checks each stored object once)."""

    def __init__(self, budget_bytes: int, clock: Callable[[], float] = time.monotonic) -> None:
        self._budget = budget_bytes
        self._clock = clock
        self._entries: OrderedDict[str, tuple[bytes, float]] = OrderedDict()
        self._bytes = 0
        self.on_remove: Callable[[str], None] | None = None
        """Told the key of every value that leaves: evicted, expired, replaced, deleted."""

    async def start(self) -> None:
        """Nothing runs in the background."""

    async def get(self, key: str) -> bytes | None:
        """The live value under `key`, now the most recently used; None if absent or expired."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        value, expires_at = entry
        if expires_at <= self._clock():
            self._remove(key)
            return None
        self._entries.move_to_end(key)
        return value

    async def set(self, key: str, value: bytes, ttl_seconds: int) -> bool:
        """Stores `value`, evicting the least recently used values to make room; values
        larger than the whole budget are not stored."""
        if len(value) > self._budget:
            return False
        self._remove(key)
        while self._entries and self._bytes + len(value) > self._budget:
            self._remove(next(iter(self._entries)))
        expires_at = self._clock() + ttl_seconds if ttl_seconds > 0 else math.inf
        self._entries[key] = (value, expires_at)
        self._bytes += len(value)
        return True

    async def delete(self, key: str) -> None:
        """Drops the value under `key`."""
        self._remove(key)

    async def lead(self, key: str) -> Leadership:
        """One process only: the result cache's in-process single flight is enough."""
        return Leadership()

    def stored_bytes(self) -> float:
        """Value bytes held now (expired values count until evicted or read)."""
        return float(self._bytes)

    async def close(self) -> None:
        """Drops every value."""
        for key in list(self._entries):
            self._remove(key)

    def _remove(self, key: str) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            self._bytes -= len(entry[0])
            if self.on_remove is not None:
                self.on_remove(key)
