"""Request metrics for every RPC of the service, recorded in one place: a server
interceptor that sees each call's RPC, model, status code, latency, time to first
message and bytes sent, whatever the handler; the request count also by caller (the name
the authentication interceptor, inside this one, gave the call; "anonymous" for calls
refused before that)."""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import grpc.aio

from ..callers import current_caller
from ..metrics import Metrics
from .intercepting import HandlerInterceptor, with_behavior

Behavior = Callable[[Any, grpc.aio.ServicerContext], Any]


def status_code_name(error: BaseException | None, context: grpc.aio.ServicerContext) -> str:
    """The status code a call ended with, as its name (e.g. "OK", "NOT_FOUND")."""
    if error is None or isinstance(error, grpc.aio.AbortError):
        code = context.code()
        if isinstance(code, grpc.StatusCode):
            return code.name
        return "OK" if error is None else "UNKNOWN"
    if isinstance(error, (asyncio.CancelledError, GeneratorExit)):
        remaining = context.time_remaining()
        return "DEADLINE_EXCEEDED" if remaining is not None and remaining <= 0 else "CANCELLED"
    return "UNKNOWN"


def message_bytes(message: object) -> int:
    """Serialized size of a response message (already serialized ones are bytes)."""
    if isinstance(message, (bytes, bytearray, memoryview)):
        return len(message)
    return int(message.ByteSize())  # type: ignore[attr-defined]


class _Call:
    """One call being measured."""

    def __init__(self, metrics: Metrics, rpc: str, model: str) -> None:
        self._metrics = metrics
        self._labels = (rpc, model)
        self._model = model
        self._started = time.perf_counter()
        self._first_seen = False
        self._bytes = 0
        metrics.in_flight.labels(model).inc()

    def sent(self, message: object) -> None:
        """Counts one response message."""
        if not self._first_seen:
            self._first_seen = True
            self._metrics.first_message.labels(*self._labels).observe(time.perf_counter() - self._started)
        self._bytes += message_bytes(message)

    def end(self, code: str) -> None:
        """Records the call's outcome."""
        metrics = self._metrics
        metrics.in_flight.labels(self._model).dec()
        metrics.duration.labels(*self._labels).observe(time.perf_counter() - self._started)
        metrics.requests.labels(*self._labels, code, current_caller()).inc()
        if self._bytes:
            metrics.response_bytes.labels(*self._labels).inc(self._bytes)


class MetricsInterceptor(HandlerInterceptor):
    """Measures every unary and server-streaming RPC of one service."""

    def __init__(self, metrics: Metrics, service: str, model_label: Callable[[str], str]) -> None:
        """`model_label(name)` turns a request's `model` field into the label (bounded:
        unknown names map to one label); requests without the field get ''."""
        self._metrics = metrics
        self._prefix = f"/{service}/"
        self._model_label = model_label

    def _model_of(self, request: Any) -> str:
        name = getattr(request, "model", None)
        return self._model_label(name) if isinstance(name, str) else ""

    def wrap(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        """Wraps the service's handlers; other services (health, reflection) pass as they are."""
        if not method.startswith(self._prefix):
            return handler
        rpc = method[len(self._prefix) :]
        if handler.unary_stream is not None:
            return with_behavior(handler, functools.partial(self._stream, rpc, handler.unary_stream))
        if handler.unary_unary is not None:
            return with_behavior(handler, functools.partial(self._unary, rpc, handler.unary_unary))
        return handler

    async def _stream(
        self, rpc: str, behavior: Behavior, request: Any, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[Any]:
        call = _Call(self._metrics, rpc, self._model_of(request))
        try:
            async for message in behavior(request, context):
                call.sent(message)
                yield message
        except BaseException as error:
            call.end(status_code_name(error, context))
            raise
        call.end(status_code_name(None, context))

    async def _unary(self, rpc: str, behavior: Behavior, request: Any, context: grpc.aio.ServicerContext) -> Any:
        call = _Call(self._metrics, rpc, self._model_of(request))
        try:
            response = await behavior(request, context)
        except BaseException as error:
            call.end(status_code_name(error, context))
            raise
        call.sent(response)
        call.end(status_code_name(None, context))
        return response
