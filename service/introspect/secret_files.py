"""Secrets read from files at start-up (mounted Kubernetes Secrets), and the one error
that stops the server before it serves.

A secret never appears in an error message, a log line or a metric: errors name the
file and what is wrong with it, never its content.
"""

from __future__ import annotations

from pathlib import Path


class StartupError(Exception):
    """A configuration problem found at start: the server logs the message as one line
    (no traceback) and exits with code 2."""


class SecretFileError(StartupError):
    """A secret file cannot be read or does not hold what it should."""


def read_secret_lines(path: Path | str, what: str, *, most: int, min_length: int = 1) -> list[bytes]:
    """The non-blank lines of the secret file `path` (lines starting with `#` are
    comments), stripped, as UTF-8 bytes: between one and `most` of them, each at least
    `min_length` bytes long. `what` names the file's purpose in errors, e.g. "cache secret
    file (--cache-secret-file)"; SecretFileError when the file is unreadable or malformed."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        reason = error.strerror if isinstance(error, OSError) and error.strerror else type(error).__name__
        raise SecretFileError(f"cannot read the {what} {path}: {reason}") from None
    lines = [line.strip() for line in text.splitlines()]
    secrets = [line.encode() for line in lines if line and not line.startswith("#")]
    if not 1 <= len(secrets) <= most:
        expected = "one line" if most == 1 else f"1 to {most} lines"
        raise SecretFileError(f"the {what} {path} holds {len(secrets)} secret lines; expected {expected}")
    for number, secret in enumerate(secrets, 1):
        if len(secret) < min_length:
            raise SecretFileError(
                f"secret {number} in the {what} {path} is {len(secret)} bytes long; it must be at least {min_length}"
            )
    return secrets
