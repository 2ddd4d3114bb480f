"""Domain errors: what went wrong, in words a caller can act on. No gRPC here.

The servicer maps each class to a status code in one place (`introspect.status`).
"""

from __future__ import annotations


class IntrospectError(Exception):
    """Base of every error a caller should see with its message."""


class InvalidInput(IntrospectError):
    """The request is malformed or asks for something the model cannot do."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.description = message


class ModelNotFound(IntrospectError):
    """The request names a model the server has not loaded."""


class Overloaded(IntrospectError):
    """The server's queue for the model's device is full; retry later."""


class ReaderStalled(IntrospectError):
    """The caller took no message for the stall timeout while results were waiting for
    it; the computation was stopped to free the device."""


class Unimplemented(IntrospectError):
    """The RPC or option is declared in the contract but not offered by this server."""


class Cancelled(Exception):
    """The caller went away or its deadline passed; the computation stops."""


def require(condition: bool, field: str, message: str) -> None:
    """Raises InvalidInput(field, message) unless `condition` holds."""
    if not condition:
        raise InvalidInput(field, message)
