"""The Redis backend: values shared by every replica, with cross-replica single flight.

Failure is normal here: every operation has a short socket timeout, a failure is
counted and turns the cache off for `retry_after_seconds` (a circuit breaker), and the
request is computed instead. One log line says when Redis becomes unreachable and one
when it is back; a background probe notices the return without traffic. A command that
fails on a broken connection (e.g. one pooled before Redis restarted) is retried once on
a fresh one, and idle pooled connections are dropped when that happens and when Redis is
back, so that a restart is one "unreachable" and one "reachable again", not a flapping
breaker (timeouts are not retried: a frozen Redis would only cost twice as long).

Single flight across replicas: the first replica to miss sets a lock key with
SET NX PX (a lease) and renews it while it computes; the others poll for the value with
backoff while the lock exists. A replica that dies stops renewing, its lease expires,
and a waiting replica takes over: nobody waits on a dead one for longer than the lease.
A leader that ends without storing (error, cancellation, too large) leaves a short-lived
"released" marker so that waiters compute on their own instead of one after another.

Values are read with a blocking client on a thread, everything else with redis.asyncio
on the event loop: redis.asyncio reads a multi-megabyte reply through an asyncio
StreamReader in pieces of at most its 64 KiB limit (about 60 event-loop wake-ups and
four copies for 4 MB: 4-8 ms here), where the blocking client receives straight into its
buffer with the GIL released (2.5-3.5 ms); both parse with hiredis.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import redis
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.retry import Retry as BlockingRetry
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from .backend import CacheObserver, Leadership, NullObserver

log = logging.getLogger(__name__)

T = TypeVar("T")

_RELEASED = b"released"
# Renews the lease only while this replica still holds it.
_RENEW = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('pexpire', KEYS[1], ARGV[2])
end
return 0
"""
# Deletes the lock (value stored) or swaps it for the released marker, only if still ours.
_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  if ARGV[2] == '' then
    return redis.call('del', KEYS[1])
  end
  return redis.call('set', KEYS[1], ARGV[2], 'PX', ARGV[3])
end
return 0
"""


class _Unavailable:
    """Result of an operation that failed or was skipped while the breaker is open."""


UNAVAILABLE = _Unavailable()


def redact(url: str) -> str:
    """The URL without its password, for logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username or ''}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


class RedisBackend:
    """Values in Redis under `prefix`, with TTLs, short timeouts and a circuit breaker."""

    name = "redis"

    def __init__(
        self,
        url: str,
        prefix: str,
        observer: CacheObserver | None = None,
        *,
        timeout_seconds: float = 0.25,
        retry_after_seconds: float = 1.0,
        lease_seconds: float = 5.0,
        max_wait_seconds: float = 60.0,
        probe_interval_seconds: float = 2.0,
        password: str | None = None,
    ) -> None:
        """`url`: redis:// or rediss:// (TLS; options such as ssl_ca_certs in its query),
        with an optional user and password (AUTH / ACL); `password` overrides none there."""
        self._url = redact(url)
        self._prefix = prefix
        self._observer = observer or NullObserver()
        options: dict[str, Any] = {
            "socket_timeout": timeout_seconds,
            "socket_connect_timeout": timeout_seconds,
            "socket_read_size": 256 * 1024,
            **({"password": password} if password is not None else {}),
        }
        self._client = aioredis.Redis.from_url(url, retry=Retry(NoBackoff(), 0), **options)
        # GETs of values, on a thread (see the module's docstring)
        self._reader = redis.Redis.from_url(url, retry=BlockingRetry(NoBackoff(), 0), **options)
        self._renew_script = self._client.register_script(_RENEW)
        self._release_script = self._client.register_script(_RELEASE)
        self._retry_after = retry_after_seconds
        self._lease_ms = int(lease_seconds * 1000)
        self._max_wait = max_wait_seconds
        self._probe_interval = probe_interval_seconds
        self._open_until = 0.0
        self._up = True
        self._used_memory: float | None = None
        self._probe_task: asyncio.Task[None] | None = None

    def value_key(self, key: str) -> str:
        """The Redis key of a value."""
        return f"{self._prefix}result:{key}"

    def lock_key(self, key: str) -> str:
        """The Redis key of a value's computation lock."""
        return f"{self._prefix}lock:{key}"

    async def start(self) -> None:
        """Starts the probe that samples memory use and notices Redis coming back."""
        self._observer.available(True)
        self._probe_task = asyncio.get_running_loop().create_task(self._probe_forever())

    async def get(self, key: str) -> bytes | None:
        """The value under `key`; None when absent or when Redis is unavailable."""
        value = await self._call("get", lambda: asyncio.to_thread(self._reader.get, self.value_key(key)))
        return value if isinstance(value, bytes) else None

    async def set(self, key: str, value: bytes, ttl_seconds: int) -> bool:
        """SET with EX `ttl_seconds`; False when Redis is unavailable."""
        expiry = ttl_seconds if ttl_seconds > 0 else None
        done = await self._call("set", lambda: self._client.set(self.value_key(key), value, ex=expiry))
        return not isinstance(done, _Unavailable) and bool(done)

    async def delete(self, key: str) -> None:
        """DEL of the value (skipped while Redis is unavailable)."""
        await self._call("delete", lambda: self._client.delete(self.value_key(key)))

    async def lead(self, key: str) -> Leadership:
        """Takes the lock for `key`, or waits (polling with backoff) for the replica that
        holds it to store the value; takes over when its lease lapses."""
        lock = self.lock_key(key)
        token = uuid.uuid4().hex
        delay = 0.005
        deadline = time.monotonic() + self._max_wait
        while True:
            acquired = await self._call("lock", lambda: self._client.set(lock, token, nx=True, px=self._lease_ms))
            if isinstance(acquired, _Unavailable):
                return Leadership()
            if acquired:
                lease = _RedisLease(self, lock, token)
                # Stored between our miss and the lock: nothing to compute.
                value = await self.get(key)
                if value is not None:
                    await lease.release(stored=True)
                    return Leadership(value=value)
                lease.start_renewing()
                return Leadership(lease=lease)
            found = await self._call("wait", lambda: self._client.mget(self.value_key(key), lock))
            if isinstance(found, _Unavailable):
                return Leadership()
            stored, holder = found
            if isinstance(stored, bytes):
                return Leadership(value=stored)
            if holder == _RELEASED or time.monotonic() > deadline:
                return Leadership()
            if holder is not None:
                await asyncio.sleep(delay)
                delay = min(delay * 1.5, 0.1)

    def stored_bytes(self) -> float | None:
        """Redis's used_memory as last sampled (the whole instance, meant for the cache)."""
        return self._used_memory

    async def close(self) -> None:
        """Stops the probe and closes the connection pool."""
        if self._probe_task is not None:
            self._probe_task.cancel()
            await asyncio.gather(self._probe_task, return_exceptions=True)
        await self._client.aclose()
        self._reader.close()

    async def _renew(self, lock: str, token: str) -> bool:
        renewed = await self._call("renew", lambda: self._renew_script(keys=[lock], args=[token, self._lease_ms]))
        return isinstance(renewed, _Unavailable) or bool(renewed)

    async def _release(self, lock: str, token: str, stored: bool) -> None:
        marker = "" if stored else _RELEASED.decode()
        await self._call("unlock", lambda: self._release_script(keys=[lock], args=[token, marker, self._lease_ms]))

    def _renew_interval(self) -> float:
        return self._lease_ms / 3000

    async def _probe_forever(self) -> None:
        while True:
            info = await self._call("probe", lambda: self._client.info("memory"), probing=True)
            if not isinstance(info, _Unavailable):
                self._used_memory = float(info.get("used_memory", 0))
            await asyncio.sleep(self._probe_interval)

    async def _call(
        self, operation: str, make: Callable[[], Awaitable[T]], probing: bool = False
    ) -> T | _Unavailable:
        """Runs one Redis operation; failures are counted, logged on the transition to
        down, and open the breaker. While it is open, only the probe tries Redis."""
        if not probing and time.monotonic() < self._open_until:
            return UNAVAILABLE
        try:
            try:
                result = await make()
            except (RedisConnectionError, ConnectionError):
                # A broken connection, maybe pooled before an outage: the others idle in
                # the pool are likely broken too. Once more on a fresh connection.
                await self._drop_idle_connections()
                result = await make()
        except (RedisError, OSError, TimeoutError) as error:
            self._failed(operation, error)
            return UNAVAILABLE
        if not self._up:
            self._up = True
            self._open_until = 0.0
            await self._drop_idle_connections()  # opened before or during the outage
            self._observer.available(True)
            log.info("redis cache at %s is reachable again; caching resumed", self._url)
        return result

    async def _drop_idle_connections(self) -> None:
        """Closes the pool's idle connections (those in use fail, and retry, on their own)."""
        await self._client.connection_pool.disconnect(inuse_connections=False)
        self._reader.connection_pool.disconnect(inuse_connections=False)

    def _failed(self, operation: str, error: BaseException) -> None:
        self._observer.error(operation)
        self._open_until = time.monotonic() + self._retry_after
        if self._up:
            self._up = False
            self._observer.available(False)
            log.warning(
                "redis cache at %s is unreachable (%s during %s: %s); computing results without it "
                "until it is back",
                self._url, type(error).__name__, operation, error,
            )


class _RedisLease:
    """A held lock, renewed in the background until released."""

    def __init__(self, backend: RedisBackend, lock: str, token: str) -> None:
        self._backend = backend
        self._lock = lock
        self._token = token
        self._renewing: asyncio.Task[Any] | None = None

    def start_renewing(self) -> None:
        """Renews the lease every third of its length until released or lost."""
        self._renewing = asyncio.get_running_loop().create_task(self._renew_forever())

    async def _renew_forever(self) -> None:
        while True:
            await asyncio.sleep(self._backend._renew_interval())
            if not await self._backend._renew(self._lock, self._token):
                return  # lost (flushed or expired): the value will still be stored

    async def release(self, stored: bool) -> None:
        """Stops renewing and deletes the lock (stored) or leaves the released marker."""
        if self._renewing is not None:
            self._renewing.cancel()
        await self._backend._release(self._lock, self._token, stored)
