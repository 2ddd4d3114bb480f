"""The result cache in front of every streaming RPC: policies, single flight, recording.

It deals in streams of serialized messages (bytes) and knows nothing of gRPC or torch.

- USE: a stored value is replayed. Otherwise, within this process, the first caller for
  a key computes and the others wait for it and replay its value (single flight);
  across replicas the backend's `lead` does the same with a lease. A follower whose
  leader ended without a value (failed, cancelled, too large) computes on its own.
- REFRESH: computes, streams, and overwrites the stored value.
- BYPASS: computes and streams; the cache is neither read nor written.

A computed stream goes to the caller as it is produced and is collected on the side,
only up to `max_value_bytes` (past that, collecting stops and nothing is stored). Only
a stream that completed is stored; compressing and storing happen after the caller has
its last message, while the key stays claimed so that repeats wait for the value
instead of computing again.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import AsyncIterator, Callable

from . import codec
from .backend import Backend, CacheObserver, Lease, NullObserver

log = logging.getLogger(__name__)

# Compressed values at most this large are decoded on the event loop, larger ones in a
# thread; uncompressed ones only need slicing.
_INLINE_DECODE_BYTES = 256 * 1024


class Policy(enum.Enum):
    """How one request uses the cache."""

    USE = "use"
    BYPASS = "bypass"
    REFRESH = "refresh"


class Outcome(enum.Enum):
    """What the cache did for one request (sent to the caller in metadata)."""

    HIT = "hit"
    MISS = "miss"
    BYPASS = "bypass"
    REFRESH = "refresh"


class _Flight:
    """A computation of one key in progress in this process."""

    def __init__(self) -> None:
        self._future: asyncio.Future[bytes | None] = asyncio.get_running_loop().create_future()

    def resolve(self, value: bytes | None) -> None:
        """Hands the value (None: no value) to every waiter; later calls do nothing."""
        if not self._future.done():
            self._future.set_result(value)

    async def wait(self) -> bytes | None:
        """The leader's value; a waiter's cancellation leaves the flight alone."""
        return await asyncio.shield(self._future)


class Served:
    """One request's stream as the cache serves it: iterate `messages()`, then always
    `close()` (in a finally), even when the stream was never started."""

    def __init__(self, outcome: Outcome) -> None:
        self.outcome = outcome

    @property
    def replayed(self) -> bool:
        """True when the messages come from the cache rather than from a computation."""
        return self.outcome is Outcome.HIT

    def messages(self) -> AsyncIterator[bytes]:  # pragma: no cover - every subclass overrides it
        """The stream's serialized messages."""
        raise NotImplementedError

    async def close(self) -> None:
        """Releases what the stream holds; a computation that did not complete is not stored."""


class _Replay(Served):
    """A stored stream: views of its checked messages, each copied out as it is sent (the
    first goes out before the rest are copied)."""

    def __init__(self, frames: list[memoryview]) -> None:
        super().__init__(Outcome.HIT)
        self._frames = frames

    async def messages(self) -> AsyncIterator[bytes]:  # type: ignore[override]
        for frame in self._frames:
            yield bytes(frame)


class _Computed(Served):
    """A computation streamed to the caller and, unless bypassed, collected for storing."""

    def __init__(
        self,
        outcome: Outcome,
        source: AsyncIterator[bytes],
        on_end: Callable[[list[bytes] | None], None] | None,
        max_value_bytes: int,
    ) -> None:
        super().__init__(outcome)
        self._source = source
        self._on_end = on_end
        self._max_value_bytes = max_value_bytes
        self._collected: list[bytes] | None = [] if on_end is not None else None
        self._size = 0

    async def messages(self) -> AsyncIterator[bytes]:  # type: ignore[override]
        async for message in self._source:
            if self._collected is not None:
                self._size += codec.message_cost(message)
                if self._size > self._max_value_bytes:
                    self._collected = None
                else:
                    self._collected.append(message)
            yield message
        self._end(complete=True)

    async def close(self) -> None:
        try:
            aclose = getattr(self._source, "aclose", None)
            if aclose is not None:
                await aclose()
        finally:
            self._end(complete=False)

    def _end(self, complete: bool) -> None:
        on_end, self._on_end = self._on_end, None
        if on_end is not None:
            on_end(self._collected if complete else None)


class ResultCache:
    """Policies and single flight over one backend."""

    def __init__(
        self,
        backend: Backend,
        *,
        ttl_seconds: int,
        max_value_bytes: int,
        observer: CacheObserver | None = None,
    ) -> None:
        self.backend = backend
        self._ttl = ttl_seconds
        self._max_value_bytes = max_value_bytes
        self._observer = observer or NullObserver()
        self._flights: dict[str, _Flight] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        """Starts the backend's background work."""
        await self.backend.start()

    async def serve(
        self, key: str, policy: Policy, rpc: str, compute: Callable[[], AsyncIterator[bytes]]
    ) -> Served:
        """Decides how to answer one request and returns its stream. Followers of a
        computation in flight wait here for it to end."""
        if policy is Policy.BYPASS:
            return _Computed(Outcome.BYPASS, compute(), None, self._max_value_bytes)
        if policy is Policy.REFRESH:
            flight = None if key in self._flights else self._claim(key)
            return self._computed(Outcome.REFRESH, key, compute, flight, None)

        replay = await self._replay(await self.backend.get(key), rpc, coalesced=False)
        if replay is not None:
            return replay
        flight = self._flights.get(key)
        if flight is not None:
            replay = await self._replay(await flight.wait(), rpc, coalesced=True)
            if replay is not None:
                return replay
            self._observer.miss(rpc)
            return self._computed(Outcome.MISS, key, compute, None, None)

        flight = self._claim(key)
        try:
            leadership = await self.backend.lead(key)
        except BaseException:
            self._settle(key, flight, None)
            raise
        if leadership.value is not None:
            replay = await self._replay(leadership.value, rpc, coalesced=True)
            if replay is not None:
                self._settle(key, flight, leadership.value)
                return replay
        self._observer.miss(rpc)
        return self._computed(Outcome.MISS, key, compute, flight, leadership.lease)

    async def close(self) -> None:
        """Waits for pending stores, then closes the backend."""
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.backend.close()

    def _claim(self, key: str) -> _Flight:
        flight = _Flight()
        self._flights[key] = flight
        return flight

    def _settle(self, key: str, flight: _Flight, value: bytes | None) -> None:
        flight.resolve(value)
        if self._flights.get(key) is flight:
            del self._flights[key]

    def _computed(
        self,
        outcome: Outcome,
        key: str,
        compute: Callable[[], AsyncIterator[bytes]],
        flight: _Flight | None,
        lease: Lease | None,
    ) -> _Computed:
        def on_end(messages: list[bytes] | None) -> None:
            task = asyncio.get_running_loop().create_task(self._store(key, messages, flight, lease))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

        return _Computed(outcome, compute(), on_end, self._max_value_bytes)

    async def _store(
        self, key: str, messages: list[bytes] | None, flight: _Flight | None, lease: Lease | None
    ) -> None:
        value: bytes | None = None
        try:
            if messages is not None:
                value = await asyncio.to_thread(codec.encode, messages)
                if len(value) > self._max_value_bytes:
                    value = None
            if flight is not None:
                flight.resolve(value)
            if value is not None:
                stored = await self.backend.set(key, value, self._ttl)
                log.debug("stored %d bytes under %s: %s", len(value), key[:12], stored)
        except Exception:
            log.exception("could not store a result in the %s cache", self.backend.name)
            value = None
        finally:
            if lease is not None:
                await lease.release(stored=value is not None)
            if flight is not None:
                self._settle(key, flight, value)

    async def _replay(self, value: bytes | memoryview | None, rpc: str, coalesced: bool) -> _Replay | None:
        if value is None:
            return None
        try:
            if len(value) <= _INLINE_DECODE_BYTES or not codec.is_compressed(value):
                frames = codec.frames(value)
            else:
                frames = await asyncio.to_thread(codec.frames, value)
        except codec.CorruptValue as error:
            log.warning("ignoring an unreadable value in the %s cache: %s", self.backend.name, error)
            self._observer.error("decode")
            return None
        self._observer.hit(rpc, coalesced)
        return _Replay(frames)
