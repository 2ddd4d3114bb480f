"""What the server's interceptors share: the handler the service resolved for a call,
offered to `wrap`, and handlers rebuilt around another behavior."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
import grpc.aio


class HandlerInterceptor(grpc.aio.ServerInterceptor):
    """A server interceptor that may replace the handler of each call: subclasses
    override `wrap`."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Any],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        """The service's handler of the call as `wrap` returns it; None for unknown methods."""
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        return self.wrap(handler_call_details.method, handler)

    def wrap(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        """The handler that serves `method` (the gRPC path, "/package.Service/Method");
        by default `handler` itself."""
        return handler


def with_behavior(
    handler: grpc.RpcMethodHandler,
    behavior: Callable[..., Any],
    response_serializer: Callable[[Any], bytes] | None = None,
    request_deserializer: Callable[[bytes], Any] | None = None,
) -> grpc.RpcMethodHandler:
    """A unary-unary or unary-stream handler like `handler` (its kind; its request
    deserializer and response serializer unless others are given) running `behavior`."""
    streaming = handler.unary_stream is not None
    build = grpc.unary_stream_rpc_method_handler if streaming else grpc.unary_unary_rpc_method_handler
    return build(
        behavior,
        request_deserializer=request_deserializer or handler.request_deserializer,
        response_serializer=response_serializer or handler.response_serializer,
    )
