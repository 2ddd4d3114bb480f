"""The result cache: stored streams keyed on everything a result depends on, replayed on
a hit, with single flight for identical requests in flight at the same time.

Backends: in-process memory (the default) or Redis (`--redis-url`). Nothing here knows
gRPC or torch: the RPC layer hands in keys and streams of serialized messages.
"""

from __future__ import annotations

from collections.abc import Callable

from urllib.parse import urlsplit

from ..config import Settings
from ..secret_files import StartupError, read_secret_lines
from .backend import Backend, CacheObserver, Leadership, Lease, NullObserver
from .integrity import CacheSecrets, SealedBackend
from .keys import result_key
from .memory import MemoryBackend
from .redis_backend import RedisBackend
from .result_cache import Outcome, Policy, ResultCache, Served

__all__ = [
    "Backend",
    "CacheObserver",
    "CacheSecrets",
    "Leadership",
    "Lease",
    "MemoryBackend",
    "NullObserver",
    "Outcome",
    "Policy",
    "RedisBackend",
    "ResultCache",
    "SealedBackend",
    "Served",
    "build_result_cache",
    "result_key",
]


def build_result_cache(settings: Settings, observer_for: Callable[[str], CacheObserver]) -> ResultCache | None:
    """The cache the settings ask for: Redis when `redis_url` is set, else the in-process
    LRU when `cache_bytes` > 0, else None (caching off). `observer_for(backend_name)`
    gives the observer that records what the cache does. Every value is tagged with the
    secret of `cache_secret_file`; without one the memory backend uses a random secret of
    this process, and Redis refuses (StartupError): replicas with secrets of their own
    would reject, and delete, each other's values. SecretFileError for a bad file."""
    backend: Backend
    if settings.redis_url:
        if not settings.cache_secret_file:
            raise StartupError(
                "--redis-url needs --cache-secret-file: values shared through Redis are checked with a secret "
                "every replica holds"
            )
        secrets = CacheSecrets.from_file(settings.cache_secret_file)
        observer = observer_for(RedisBackend.name)
        backend = RedisBackend(settings.redis_url, settings.cache_prefix, observer, password=_redis_password(settings))
    elif settings.cache_bytes > 0:
        secrets = CacheSecrets.from_file(settings.cache_secret_file) if settings.cache_secret_file else (
            CacheSecrets.random()
        )
        observer = observer_for(MemoryBackend.name)
        backend = MemoryBackend(settings.cache_bytes)
    else:
        return None
    return ResultCache(
        SealedBackend(backend, secrets, observer),
        ttl_seconds=settings.cache_ttl_seconds,
        max_value_bytes=settings.cache_max_value_bytes,
        observer=observer,
    )


def _redis_password(settings: Settings) -> str | None:
    """The password of `redis_password_file`, or None (none, or the one in the URL)."""
    if not settings.redis_password_file:
        return None
    if urlsplit(settings.redis_url).password is not None:
        raise StartupError("give the Redis password in --redis-url or in --redis-password-file, not both")
    lines = read_secret_lines(settings.redis_password_file, "Redis password file (--redis-password-file)", most=1)
    return lines[0].decode()
