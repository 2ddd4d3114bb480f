"""Domain errors: what went wrong, in words a caller can act on. No gRPC here.

The servicer maps each class to a status code in one place (`introspect.status`).
"""

from __future__ import annotations


class IntrospectError(Exception):
    """Base of every error a caller should see with its message."""


class FieldError(IntrospectError):
    """An error a caller fixes by changing one field of the request (named in `field`)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.description = message


class InvalidInput(FieldError):
    """The request is malformed or asks for something the model cannot do."""


class ResourceExhausted(FieldError):
    """The request is well formed but larger than the server takes (a size limit, or more
    memory than one request may use); `field` names what to lower."""


class ModelNotFound(IntrospectError):
    """The request names a model the server has not loaded."""


class Overloaded(IntrospectError):
    """The server's queue for the model's device is full; retry later."""


class AllocatorFailure(IntrospectError):
    """The device ran out of memory for this request (the estimate missed); the server
    freed what it held and keeps serving."""
class ReaderStalled(IntrospectError):
    """The caller took no message for the stall timeout while results were waiting for
    it; the computation was stopped to free the device."""


class Unauthenticated(IntrospectError):
    """The call carries no bearer token, or one the tokens file does not hold. The
    message never says which."""


class QuotaExceeded(IntrospectError):
    """The caller is over its rate or concurrency quota; `retry_after` says (in seconds)
    when a retry may succeed."""

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Unimplemented(IntrospectError):
    """The RPC or option is declared in the contract but not offered by this server."""


class Cancelled(Exception):
    """The caller went away or its deadline passed; the computation stops."""


SHOWN_CHARACTERS = 64
"""How much of a caller's string an error message repeats."""


def shown(text: str, limit: int = SHOWN_CHARACTERS) -> str:
    """`text` quoted for an error message, cut to its first `limit` characters so that a
    caller's long string cannot outgrow the status (gRPC caps metadata at 8 KiB)."""
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}... ({len(text)} characters)"


def require(condition: bool, field: str, message: str) -> None:
    """Raises InvalidInput(field, message) unless `condition` holds."""
    if not condition:
        raise InvalidInput(field, message)
