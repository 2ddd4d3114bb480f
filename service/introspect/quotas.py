"""Per-caller quotas: calls in flight (max_concurrency) and a token bucket of calls per
second (rate_per_second, burst). A call over either is refused with QuotaExceeded, which
says when to retry. No gRPC in this module."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from .errors import QuotaExceeded

CONCURRENCY_RETRY_SECONDS = 1.0
"""The retry hint of a call refused for concurrency: when one of the caller's calls ends
is not known ahead."""


@dataclass(frozen=True)
class Quota:
    """A caller's limits; 0 means unlimited."""

    max_concurrency: int = 0
    rate_per_second: float = 0.0
    burst: int = 0  # 0: max(1, ceil(rate_per_second))

    @property
    def bucket_size(self) -> int:
        """Calls the caller may make at once after a quiet spell."""
        return self.burst if self.burst > 0 else max(1, math.ceil(self.rate_per_second))


class TokenBucket:
    """`rate` tokens a second into a bucket of `size`; each call takes one."""

    def __init__(self, rate: float, size: int, clock: Callable[[], float] = time.monotonic) -> None:
        self._rate = rate
        self._size = size
        self._clock = clock
        self._tokens = float(size)
        self._updated = clock()

    def take(self) -> float:
        """Takes a token: 0.0 when one was there, else the seconds until one will be
        (nothing is taken then)."""
        now = self._clock()
        self._tokens = min(self._size, self._tokens + (now - self._updated) * self._rate)
        self._updated = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return 0.0
        return (1.0 - self._tokens) / self._rate


class _CallerState:
    def __init__(self, quota: Quota) -> None:
        self.quota = quota
        self.in_flight = 0
        self.bucket = TokenBucket(quota.rate_per_second, quota.bucket_size) if quota.rate_per_second > 0 else None


class Lease:
    """One admitted call; `release` when it ends (idempotent)."""

    def __init__(self, release: Callable[[], None]) -> None:
        self._release: Callable[[], None] | None = release

    def release(self) -> None:
        """Gives the caller's concurrency slot back."""
        if self._release is not None:
            self._release()
            self._release = None


class CallerQuotas:
    """The quota state of every caller, by name. A caller whose quota changes (a reloaded
    tokens file) gets a fresh bucket; its calls in flight still count."""

    def __init__(self) -> None:
        self._states: dict[str, _CallerState] = {}
        self._lock = threading.Lock()

    def admit(self, name: str, quota: Quota) -> Lease:
        """A lease for one call of `name`; raises QuotaExceeded when the caller already
        has max_concurrency calls in flight or its bucket is empty."""
        with self._lock:
            state = self._states.get(name)
            if state is None or state.quota != quota:
                fresh = _CallerState(quota)
                fresh.in_flight = state.in_flight if state else 0
                state = self._states[name] = fresh
            if quota.max_concurrency and state.in_flight >= quota.max_concurrency:
                raise QuotaExceeded(
                    f"caller {name!r} already has {state.in_flight} calls in flight, its limit; "
                    f"retry when one ends (in about {CONCURRENCY_RETRY_SECONDS:g}s)",
                    CONCURRENCY_RETRY_SECONDS,
                )
            wait = state.bucket.take() if state.bucket else 0.0
            if wait > 0:
                raise QuotaExceeded(
                    f"caller {name!r} is over its rate of {quota.rate_per_second:g} calls per second "
                    f"(burst {quota.bucket_size}); retry in {wait:.2f}s",
                    wait,
                )
            state.in_flight += 1

        def release() -> None:
            with self._lock:
                self._states[name].in_flight -= 1

        return Lease(release)
