"""The drain of a graceful stop: a server interceptor that tracks the service's calls in
flight and, once closed, refuses new ones with UNAVAILABLE (retryable: another replica
serves them) while those in flight finish; at the end of the grace it cuts the calls
still running, which end UNAVAILABLE too (their handlers are cancelled, and with them
their work on the device workers)."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import grpc.aio

from .intercepting import HandlerInterceptor, with_behavior

Behavior = Callable[[Any, grpc.aio.ServicerContext], Any]
STOPPING = "the server is stopping; retry on another replica"
CUT = "the server stopped before this call finished (its grace ran out); retry on another replica"


class DrainInterceptor(HandlerInterceptor):
    """Tracks the calls of one service (other services, e.g. health, pass untouched)."""

    def __init__(self, service: str) -> None:
        self._prefix = f"/{service}/"
        self._closed = False
        self._cutting = False
        self._calls: set[asyncio.Task[Any]] = set()
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def in_flight(self) -> int:
        """Calls of the service running now."""
        return len(self._calls)

    def close(self) -> None:
        """Refuses every call that starts from now on."""
        self._closed = True

    def cut(self) -> int:
        """Cancels every call in flight: each ends UNAVAILABLE. Returns how many."""
        self._cutting = True
        calls = list(self._calls)
        for task in calls:
            task.cancel()
        return len(calls)

    async def idle(self, timeout: float) -> bool:
        """Waits until no call is in flight, at most `timeout` s; True if none is."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            return False
        return True

    def wrap(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        """Wraps the service's unary and server-streaming handlers."""
        if not method.startswith(self._prefix):
            return handler
        if handler.unary_stream is not None:
            return with_behavior(handler, functools.partial(self._stream, handler.unary_stream))
        if handler.unary_unary is not None:
            return with_behavior(handler, functools.partial(self._unary, handler.unary_unary))
        return handler

    async def _enter(self, context: grpc.aio.ServicerContext) -> asyncio.Task[Any]:
        """Registers the call's task (refuses the call once closed)."""
        if self._closed:
            await context.abort(grpc.StatusCode.UNAVAILABLE, STOPPING)
        task = asyncio.current_task()
        assert task is not None
        self._calls.add(task)
        self._idle.clear()
        return task

    def _leave(self, task: asyncio.Task[Any]) -> None:
        self._calls.discard(task)
        if not self._calls:
            self._idle.set()

    async def _cut_off(self, context: grpc.aio.ServicerContext) -> None:
        """Turns the cancellation of `cut` into UNAVAILABLE (another is re-raised)."""
        if not self._cutting:
            raise asyncio.CancelledError()
        await context.abort(grpc.StatusCode.UNAVAILABLE, CUT)

    async def _stream(self, behavior: Behavior, request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        task = await self._enter(context)
        try:
            async for message in behavior(request, context):
                yield message
        except asyncio.CancelledError:
            await self._cut_off(context)
        finally:
            self._leave(task)

    async def _unary(self, behavior: Behavior, request: Any, context: grpc.aio.ServicerContext) -> Any:
        task = await self._enter(context)
        try:
            return await behavior(request, context)
        except asyncio.CancelledError:
            await self._cut_off(context)
        finally:
            self._leave(task)
