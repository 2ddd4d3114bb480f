"""Requests whose bytes do not parse answer INVALID_ARGUMENT naming the field, not UNKNOWN.

grpc.aio deserializes a request before any interceptor's behavior runs; a deserializer
that raises ends the call with UNKNOWN ("Unexpected <class 'DecodeError'>"), an ERROR
traceback in the log and no request metrics. `UndecodableInterceptor` gives every
unary-request method of the service a deserializer that returns an `Undecodable` in
place of such a request, and a behavior that answers it INVALID_ARGUMENT (with one
WARNING line) instead of calling the handlers behind it. Placed inside the metrics
interceptor, the refusal is counted like any other.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import grpc
import grpc.aio
from google.protobuf.descriptor import Descriptor, ServiceDescriptor
from google.protobuf.message import DecodeError, Message
from google.protobuf.message_factory import GetMessageClass

from ..errors import InvalidInput
from .intercepting import HandlerInterceptor, with_behavior
from .status import status_of
from .wireformat import locate

log = logging.getLogger(__name__)

Behavior = Callable[[Any, grpc.aio.ServicerContext], Any]


@dataclass(frozen=True)
class Undecodable:
    """Stands in for a request whose bytes are not a message of its type."""

    error: InvalidInput


def undecodable(descriptor: Descriptor, data: bytes) -> Undecodable:
    """The Undecodable for `data`, naming the field that does not parse when the wire
    format shows it."""
    found = locate(descriptor, data)
    if found is None:
        return Undecodable(InvalidInput("request", f"the bytes are not a {descriptor.full_name}"))
    field, problem = found
    return Undecodable(InvalidInput(field, problem))


def tolerant_deserializer(message_type: type[Message]) -> Callable[[bytes], Message | Undecodable]:
    """`message_type.FromString`, returning an Undecodable where that raises DecodeError."""

    def deserialize(data: bytes) -> Message | Undecodable:
        try:
            return message_type.FromString(data)
        except DecodeError:
            return undecodable(message_type.DESCRIPTOR, data)

    return deserialize


async def _refuse(rpc: str, request: Undecodable, context: grpc.aio.ServicerContext) -> None:
    log.warning("%s: refused an undecodable request: %s", rpc, request.error)
    code, message, trailers = status_of(request.error)
    await context.abort(code, message, trailing_metadata=trailers)


class UndecodableInterceptor(HandlerInterceptor):
    """Answers undecodable requests to one service's unary and server-streaming RPCs."""

    def __init__(self, service: ServiceDescriptor) -> None:
        self._prefix = f"/{service.full_name}/"
        self._request_types = {method.name: GetMessageClass(method.input_type) for method in service.methods}

    def wrap(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        """The service's handlers with the tolerant deserializer; others as they are."""
        rpc = method[len(self._prefix) :] if method.startswith(self._prefix) else None
        request_type = self._request_types.get(rpc) if rpc is not None else None
        if request_type is None:
            return handler
        deserializer = tolerant_deserializer(request_type)
        if handler.unary_stream is not None:
            return with_behavior(handler, functools.partial(_stream, rpc, handler.unary_stream),
                                 request_deserializer=deserializer)
        if handler.unary_unary is not None:
            return with_behavior(handler, functools.partial(_unary, rpc, handler.unary_unary),
                                 request_deserializer=deserializer)
        return handler


async def _stream(rpc: str, behavior: Behavior, request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
    if isinstance(request, Undecodable):
        await _refuse(rpc, request, context)
        return
    async for message in behavior(request, context):
        yield message


async def _unary(rpc: str, behavior: Behavior, request: Any, context: grpc.aio.ServicerContext) -> Any:
    if isinstance(request, Undecodable):
        await _refuse(rpc, request, context)
    return await behavior(request, context)
