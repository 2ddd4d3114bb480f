"""What every cache backend offers, and how the cache reports what happens to it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


class Lease(Protocol):
    """A cross-replica claim to compute one key, renewed while held."""

    async def release(self, stored: bool) -> None:
        """Gives the claim up; `stored` says whether the value is now in the backend."""


@dataclass(frozen=True)
class Leadership:
    """Answer to `Backend.lead`: a value another replica computed meanwhile, or a lease to
    compute it here, or neither (compute without coordination: the backend is unavailable,
    or the replica that held the claim ended without a value)."""

    value: bytes | None = None
    lease: Lease | None = None


class Backend(Protocol):
    """Storage of cached values. Never raises for the backend's own failures: a failed
    read is a miss, a failed write is dropped, and both are reported to the observer."""

    name: str

    async def start(self) -> None:
        """Starts background work (health probing); called once on the serving loop."""

    async def get(self, key: str) -> bytes | None:
        """The value stored under `key`, or None."""

    async def set(self, key: str, value: bytes, ttl_seconds: int) -> bool:
        """Stores `value` for `ttl_seconds` (<= 0: no expiry); False if it was not stored."""

    async def delete(self, key: str) -> None:
        """Removes the value under `key`, if any."""

    async def lead(self, key: str) -> Leadership:
        """Claims the computation of `key` across replicas, waiting while another replica
        holds the claim and is alive."""

    def stored_bytes(self) -> float | None:
        """Bytes the backend holds now, or None when unknown."""

    async def close(self) -> None:
        """Stops background work and closes connections."""


class CacheObserver(Protocol):
    """Receives what the cache does; the metrics module implements it per backend."""

    def hit(self, rpc: str, coalesced: bool) -> None:
        """A stream was served without computing (`coalesced`: shared from a computation
        in flight rather than read from storage)."""

    def miss(self, rpc: str) -> None:
        """A stream had to be computed."""

    def error(self, operation: str) -> None:
        """A backend operation failed (or timed out)."""

    def available(self, up: bool) -> None:
        """The backend became reachable (True) or unreachable (False)."""

    def rejected(self) -> None:
        """A stored value failed its integrity check (it was deleted, and is a miss)."""


class NullObserver:
    """An observer that records nothing."""

    def hit(self, rpc: str, coalesced: bool) -> None:
        """Ignored."""

    def miss(self, rpc: str) -> None:
        """Ignored."""

    def error(self, operation: str) -> None:
        """Ignored."""

    def available(self, up: bool) -> None:
        """Ignored."""

    def rejected(self) -> None:
        """Ignored."""
