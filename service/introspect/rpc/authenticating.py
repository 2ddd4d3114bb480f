"""Authentication and per-caller quotas of the service's calls: a server interceptor.

Every call of the Introspection service presents `authorization: Bearer <token>`
metadata; a missing or unknown token answers UNAUTHENTICATED, with one message whatever
went wrong. A known caller is named for the rest of the call (introspect.callers: logs,
metrics, the device queue) and admitted against its quotas (RESOURCE_EXHAUSTED with a
google.rpc.RetryInfo when over). Other services (health, reflection) stay open unless
`guard_others`: then they need a known token too (no quotas).
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import grpc
import grpc.aio

from ..auth import Authenticator, Caller
from ..callers import set_caller
from ..errors import IntrospectError, Unauthenticated
from ..quotas import CallerQuotas, Lease
from .intercepting import with_behavior
from .status import status_of

Behavior = Callable[[Any, grpc.aio.ServicerContext], Any]
UNAUTHENTICATED = "a valid bearer token is required (metadata authorization: Bearer <token>)"
_SCHEME = "bearer "


def bearer_token(metadata: Sequence[tuple[str, Any]] | None) -> str | None:
    """The token of the call's `authorization: Bearer <token>` metadata, or None."""
    for key, value in metadata or ():
        if key == "authorization" and isinstance(value, str) and value[: len(_SCHEME)].lower() == _SCHEME:
            return value[len(_SCHEME) :].strip() or None
    return None


async def _refuse(context: grpc.aio.ServicerContext, error: IntrospectError) -> None:
    code, message, trailers = status_of(error)
    await context.abort(code, message, trailing_metadata=trailers)


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Identifies the caller of every call of one service and admits it to its quotas."""

    def __init__(
        self, authenticator: Authenticator, quotas: CallerQuotas, service: str, guard_others: bool = False
    ) -> None:
        self._authenticator = authenticator
        self._quotas = quotas
        self._prefix = f"/{service}/"
        self._guard_others = guard_others

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Any],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        """The service's handlers behind authentication and quotas; other services'
        handlers as they are, or refusing unknown callers with `guard_others`."""
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        if handler_call_details.method.startswith(self._prefix):
            if handler.unary_stream is not None:
                return with_behavior(handler, functools.partial(self._stream, handler.unary_stream))
            if handler.unary_unary is not None:
                return with_behavior(handler, functools.partial(self._unary, handler.unary_unary))
            return handler
        if self._guard_others and self._identify(handler_call_details.invocation_metadata) is None:
            return _refusing(handler)
        return handler

    def _identify(self, metadata: Sequence[tuple[str, Any]] | None) -> Caller | None:
        return self._authenticator.identify(bearer_token(metadata))

    async def _admit(self, context: grpc.aio.ServicerContext) -> Lease:
        """Names the caller and takes its quota lease; aborts the call otherwise."""
        caller = self._identify(context.invocation_metadata())
        if caller is None:
            await _refuse(context, Unauthenticated(UNAUTHENTICATED))
        assert caller is not None
        set_caller(caller.name)
        try:
            return self._quotas.admit(caller.name, caller.quota)
        except IntrospectError as error:
            await _refuse(context, error)
            raise

    async def _stream(self, behavior: Behavior, request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        lease = await self._admit(context)
        try:
            async for message in behavior(request, context):
                yield message
        finally:
            lease.release()

    async def _unary(self, behavior: Behavior, request: Any, context: grpc.aio.ServicerContext) -> Any:
        lease = await self._admit(context)
        try:
            return await behavior(request, context)
        finally:
            lease.release()


def _refusing(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    """A handler of `handler`'s kind that answers UNAUTHENTICATED."""

    async def refuse(request: Any, context: grpc.aio.ServicerContext) -> None:
        await _refuse(context, Unauthenticated(UNAUTHENTICATED))

    serializers = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(refuse, **serializers)
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(refuse, **serializers)
    if handler.stream_unary is not None:
        return grpc.stream_unary_rpc_method_handler(refuse, **serializers)
    return grpc.stream_stream_rpc_method_handler(refuse, **serializers)
