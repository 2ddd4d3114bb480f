"""Who is calling: the caller's name for the call being served, in a ContextVar.

The authentication interceptor sets it at the start of each call (a call runs in its own
asyncio task, so names never leak between calls); the data plane reads it to queue the
call under its caller, the request metrics to label the call, and log lines of the call
show it. Only names travel here, never tokens. No gRPC in this module.
"""

from __future__ import annotations

import logging
from contextvars import ContextVar

ANONYMOUS = "anonymous"
"""The caller of every call when no tokens file is configured."""

_CURRENT: ContextVar[str | None] = ContextVar("introspect_caller", default=None)


def set_caller(name: str) -> None:
    """Names the caller of the call running in this context."""
    _CURRENT.set(name)


def current_caller() -> str:
    """The caller of the call running in this context ("anonymous" when none was set)."""
    return _CURRENT.get() or ANONYMOUS


class CallerLogFilter(logging.Filter):
    """Adds `caller` to every log record: the name of the call's caller, "-" outside calls."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Sets record.caller; passes every record on."""
        record.caller = _CURRENT.get() or "-"
        return True
