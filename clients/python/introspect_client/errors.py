"""IntrospectError: every gRPC error of a call, with its code, message and field violations.

The server sends INVALID_ARGUMENT with a google.rpc.Status in the trailing metadata key
`grpc-status-details-bin`; its details hold a google.rpc.BadRequest naming the field.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import grpc
import grpc.aio
from google.rpc import error_details_pb2, status_pb2

STATUS_DETAILS_KEY = "grpc-status-details-bin"


class IntrospectError(Exception):
    """An RPC failed. `code` is the gRPC status code, `message` the server's description
    and `field_violations` the (field, description) pairs of a google.rpc.BadRequest
    detail (empty when the server sent none)."""

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        field_violations: list[tuple[str, str]] | None = None,
    ) -> None:
        self.code = code
        self.message = message
        self.field_violations: list[tuple[str, str]] = list(field_violations or [])
        super().__init__(f"{code.name}: {message}")

    def __reduce__(self) -> tuple[type[IntrospectError], tuple[grpc.StatusCode, str, list[tuple[str, str]]]]:
        return (type(self), (self.code, self.message, self.field_violations))


def field_violations_of(status: status_pb2.Status | None) -> list[tuple[str, str]]:
    """(field, description) of every BadRequest field violation packed in `status`."""
    violations: list[tuple[str, str]] = []
    if status is None:
        return violations
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad_request = error_details_pb2.BadRequest()
            detail.Unpack(bad_request)
            violations.extend((item.field, item.description) for item in bad_request.field_violations)
    return violations


def _status_from_metadata(metadata: object) -> status_pb2.Status | None:
    """The google.rpc.Status in trailing metadata (an aio Metadata or a sequence of pairs)."""
    if not metadata:
        return None
    for key, value in metadata:  # type: ignore[attr-defined]
        if key == STATUS_DETAILS_KEY and isinstance(value, bytes):
            status = status_pb2.Status()
            try:
                status.ParseFromString(value)
            except Exception:  # malformed detail: keep code and message only
                return None
            return status
    return None


def _status_of_sync_call(error: grpc.RpcError) -> status_pb2.Status | None:
    from grpc_status import rpc_status

    if not isinstance(error, grpc.Call):
        return None
    try:
        return rpc_status.from_call(error)
    except ValueError:  # the detail's code or message disagrees with the call's
        return None


def error_from_rpc(error: grpc.RpcError) -> IntrospectError:
    """Converts a grpc.RpcError (sync or aio) into an IntrospectError."""
    if isinstance(error, grpc.aio.AioRpcError):
        code, message = error.code(), error.details() or ""
        status = _status_from_metadata(error.trailing_metadata())
    elif isinstance(error, grpc.Call):
        code, message = error.code(), error.details() or ""
        status = _status_of_sync_call(error)
    else:  # pragma: no cover - every RpcError grpc raises is also a Call
        return IntrospectError(grpc.StatusCode.UNKNOWN, str(error))
    return IntrospectError(code, message, field_violations_of(status))


@contextlib.contextmanager
def translate_rpc_errors() -> Iterator[None]:
    """Re-raises any grpc.RpcError inside the block as IntrospectError. Works around
    `await` and `async for` too: the error surfaces in the awaiting frame."""
    try:
        yield
    except grpc.RpcError as error:
        raise error_from_rpc(error) from error
