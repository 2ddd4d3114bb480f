"""Domain errors -> gRPC status, in one place, for every RPC.

Callers get the code and a message that says what to fix; INVALID_ARGUMENT carries a
google.rpc.BadRequest naming the field, and so does RESOURCE_EXHAUSTED for a request over a
size or memory limit (the field to lower), and a google.rpc.RetryInfo for a caller over
its quota (when to retry). Anything unexpected is logged here and becomes
INTERNAL with a generic message: no stack traces or internals reach callers.

A call the caller has already left (cancelled, past its deadline: the handler is being
cancelled, or its generator closed mid-write) is not answered at all: grpc has ended it
as CANCELLED or DEADLINE_EXCEEDED, and nothing is logged as an incident.
"""

from __future__ import annotations

import asyncio
import datetime
import functools
import inspect
import logging
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.protobuf.message import Message
from google.rpc import code_pb2, error_details_pb2, status_pb2

from ..errors import (
    AllocatorFailure,
    Cancelled,
    FieldError,
    IntrospectError,
    InvalidInput,
    ModelNotFound,
    Overloaded,
    QuotaExceeded,
    ReaderStalled,
    ResourceExhausted,
    Unauthenticated,
    Unimplemented,
)

log = logging.getLogger(__name__)

_CODES: dict[type[IntrospectError], grpc.StatusCode] = {
    InvalidInput: grpc.StatusCode.INVALID_ARGUMENT,
    ModelNotFound: grpc.StatusCode.NOT_FOUND,
    Overloaded: grpc.StatusCode.RESOURCE_EXHAUSTED,
    ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    AllocatorFailure: grpc.StatusCode.RESOURCE_EXHAUSTED,
    ReaderStalled: grpc.StatusCode.RESOURCE_EXHAUSTED,
    QuotaExceeded: grpc.StatusCode.RESOURCE_EXHAUSTED,
    Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    Unimplemented: grpc.StatusCode.UNIMPLEMENTED,
}
_STATUS_DETAILS_KEY = "grpc-status-details-bin"
_MAX_MESSAGE_CHARACTERS = 1024
"""A status message (and a field violation's description) is cut to this: it travels in
trailing metadata twice (the message and the details), under gRPC's 8 KiB cap."""

Handler = TypeVar("Handler", bound=Callable[..., Any])


def status_of(error: BaseException) -> tuple[grpc.StatusCode, str, tuple[tuple[str, bytes], ...]]:
    """(code, message, trailing metadata) a caller should see for `error`."""
    for error_type, code in _CODES.items():
        if isinstance(error, error_type):
            message = _bounded(str(error))
            detail = status_pb2.Status(code=code.value[0], message=message)
            for extra in _details_of(error):
                packed = any_pb2.Any()
                packed.Pack(extra)
                detail.details.append(packed)
            return code, message, ((_STATUS_DETAILS_KEY, detail.SerializeToString()),)
    incident = uuid.uuid4().hex[:12]
    log.error("internal error (incident %s)", incident, exc_info=error)
    message = f"internal error (incident {incident}); the server log has the details"
    detail = status_pb2.Status(code=code_pb2.INTERNAL, message=message)
    return grpc.StatusCode.INTERNAL, message, ((_STATUS_DETAILS_KEY, detail.SerializeToString()),)


def _details_of(error: IntrospectError) -> list[Message]:
    """The google.rpc details that tell a caller what to do about `error`."""
    if isinstance(error, FieldError):
        violation = error_details_pb2.BadRequest.FieldViolation(
            field=_bounded(error.field), description=_bounded(error.description)
        )
        return [error_details_pb2.BadRequest(field_violations=[violation])]
    if isinstance(error, QuotaExceeded):
        delay = duration_pb2.Duration()
        delay.FromTimedelta(datetime.timedelta(seconds=max(error.retry_after, 0.001)))
        return [error_details_pb2.RetryInfo(retry_delay=delay)]
    return []


def _bounded(text: str) -> str:
    """`text`, cut to _MAX_MESSAGE_CHARACTERS."""
    if len(text) <= _MAX_MESSAGE_CHARACTERS:
        return text
    return text[: _MAX_MESSAGE_CHARACTERS - 3] + "..."


_CALLER_LEFT = (asyncio.CancelledError, GeneratorExit, Cancelled)


async def _abort(context: grpc.aio.ServicerContext, error: BaseException) -> None:
    if isinstance(error, _CALLER_LEFT):
        raise error
    if context.cancelled() or context.done():
        log.debug("%s after the call ended; the caller has gone", type(error).__name__, exc_info=error)
        raise asyncio.CancelledError() from error
    code, message, trailers = status_of(error)
    await context.abort(code, message, trailing_metadata=trailers)


def translate_errors(handler: Handler) -> Handler:
    """Wraps a unary or server-streaming servicer method so errors become statuses."""
    if inspect.isasyncgenfunction(handler):

        @functools.wraps(handler)
        async def streaming(self: Any, request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            try:
                async for message in handler(self, request, context):
                    yield message
            except grpc.aio.AbortError:
                raise
            except BaseException as error:
                await _abort(context, error)

        return streaming  # type: ignore[return-value]

    @functools.wraps(handler)
    async def unary(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await handler(self, request, context)
        except grpc.aio.AbortError:
            raise
        except BaseException as error:
            await _abort(context, error)

    return unary  # type: ignore[return-value]


