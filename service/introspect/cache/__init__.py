"""The result cache: stored streams keyed on everything a result depends on, replayed on
a hit, with single flight for identical requests in flight at the same time.

Backends: in-process memory (the default) or Redis (`--redis-url`). Nothing here knows
gRPC or torch: the RPC layer hands in keys and streams of serialized messages.
"""

from __future__ import annotations

from collections.abc import Callable

from ..config import Settings
from .backend import Backend, CacheObserver, Leadership, Lease, NullObserver
from .keys import result_key
from .memory import MemoryBackend
from .redis_backend import RedisBackend
from .result_cache import Outcome, Policy, ResultCache, Served

__all__ = [
    "Backend",
    "CacheObserver",
    "Leadership",
    "Lease",
    "MemoryBackend",
    "NullObserver",
    "Outcome",
    "Policy",
    "RedisBackend",
    "ResultCache",
    "Served",
    "build_result_cache",
    "result_key",
]


def build_result_cache(settings: Settings, observer_for: Callable[[str], CacheObserver]) -> ResultCache | None:
    """The cache the settings ask for: Redis when `redis_url` is set, else the in-process
    LRU when `cache_bytes` > 0, else None (caching off). `observer_for(backend_name)`
    gives the observer that records what the cache does."""
    backend: Backend
    if settings.redis_url:
        observer = observer_for(RedisBackend.name)
        backend = RedisBackend(settings.redis_url, settings.cache_prefix, observer)
    elif settings.cache_bytes > 0:
        observer = observer_for(MemoryBackend.name)
        backend = MemoryBackend(settings.cache_bytes)
    else:
        return None
    return ResultCache(
        backend,
        ttl_seconds=settings.cache_ttl_seconds,
        max_value_bytes=settings.cache_max_value_bytes,
        observer=observer,
    )
