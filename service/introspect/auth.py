"""Callers and their bearer tokens: the tokens file, its reload, and the hash helper.

The tokens file (TOML, `--auth-tokens-file`) holds one table per caller, with the SHA-256
of its token (never the token) and, optionally, its quotas:

    [callers.alice]
    token_sha256 = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
    max_concurrency = 4      # calls in flight (0: unlimited)
    rate_per_second = 5.0    # token bucket refill (0: unlimited)
    burst = 10               # bucket size (0: max(1, ceil(rate_per_second)))

Quotas a caller does not set come from the --caller-* flags. The file is re-read when
its modification time, size or inode change (looked at no more than once a second);
a version that does not parse keeps the previous callers and logs one ERROR line.

`python -m introspect.auth hash` prints the SHA-256 of a token read from stdin.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
import sys
import time
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

from .callers import ANONYMOUS
from .quotas import Quota

log = logging.getLogger(__name__)

RELOAD_CHECK_SECONDS = 1.0
"""How often (at most) the tokens file's modification time is looked at."""
_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_HEX_DIGEST = re.compile(r"^[0-9a-f]{64}$")
_NOTHING_REJECTED = object()
_QUOTA_KEYS = {"max_concurrency": int, "rate_per_second": float, "burst": int}


class TokenFileError(ValueError):
    """The tokens file cannot be read or does not follow the format; the message names
    the file and what is wrong (never a token or a hash)."""


@dataclass(frozen=True)
class Caller:
    """A caller: its name (metrics label, logs) and its quotas."""

    name: str
    quota: Quota


def token_sha256(token: str) -> str:
    """The hex SHA-256 of a token's UTF-8 bytes: what the tokens file stores."""
    return hashlib.sha256(token.encode()).hexdigest()


class Authenticator(Protocol):
    """Tells who presents a bearer token (None: no token)."""

    def identify(self, token: str | None) -> Caller | None:
        """The caller, or None when the token is missing or unknown."""


class Anonymous:
    """No tokens file: every call, with or without a token, is the anonymous caller."""

    def __init__(self, quota: Quota) -> None:
        self._caller = Caller(ANONYMOUS, quota)

    def identify(self, token: str | None) -> Caller | None:
        """The anonymous caller."""
        return self._caller


def _quota(where: str, table: Mapping[str, Any], defaults: Quota) -> Quota:
    """The quotas a caller's table sets, the defaults for the rest."""
    values: dict[str, Any] = {}
    for key, kind in _QUOTA_KEYS.items():
        if key not in table:
            continue
        value = table[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and not isinstance(value, int)):
            raise TokenFileError(f"{where}: {key} must be a {'whole ' if kind is int else ''}number")
        if value < 0:
            raise TokenFileError(f"{where}: {key} must be >= 0")
        values[key] = kind(value)
    return replace(defaults, **values)


def parse_tokens(path: Path, text: bytes, defaults: Quota) -> dict[str, Caller]:
    """hex SHA-256 -> Caller, from the bytes of a tokens file; raises TokenFileError."""
    try:
        document = tomllib.loads(text.decode())
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as error:
        raise TokenFileError(f"tokens file {path}: not TOML ({error})") from None
    unknown = set(document) - {"callers"}
    callers = document.get("callers", {})
    if unknown or not isinstance(callers, dict):
        raise TokenFileError(f"tokens file {path}: expected only [callers.NAME] tables, found {sorted(unknown)}")
    by_hash: dict[str, Caller] = {}
    for name, table in callers.items():
        where = f"tokens file {path}: [callers.{name}]"
        if not _NAME.match(name) or name == ANONYMOUS:
            raise TokenFileError(f"{where}: a name is 1 to 64 of A-Z a-z 0-9 _ . - and not {ANONYMOUS!r}")
        if not isinstance(table, dict):
            raise TokenFileError(f"{where}: must be a table")
        extra = set(table) - {"token_sha256", *_QUOTA_KEYS}
        if extra:
            raise TokenFileError(f"{where}: unknown keys {sorted(extra)}")
        digest = table.get("token_sha256")
        if not isinstance(digest, str) or not _HEX_DIGEST.match(digest.lower()):
            raise TokenFileError(f"{where}: token_sha256 must be 64 hex digits (python -m introspect.auth hash)")
        if digest.lower() in by_hash:
            raise TokenFileError(f"{where}: the same token as [callers.{by_hash[digest.lower()].name}]")
        by_hash[digest.lower()] = Caller(name, _quota(where, table, defaults))
    return by_hash


def _signature(path: Path) -> tuple[int, int, int]:
    status = os.stat(path)
    return status.st_mtime_ns, status.st_size, status.st_ino


class TokenBook:
    """The callers of a tokens file, re-read when the file changes."""

    def __init__(self, path: Path, defaults: Quota, clock: Callable[[], float] = time.monotonic) -> None:
        """Reads the file now; raises TokenFileError if it is unreadable or malformed."""
        self._path = path
        self._defaults = defaults
        self._clock = clock
        self._signature, self._callers = self._read()
        self._rejected: object = _NOTHING_REJECTED
        self._checked = clock()

    @property
    def names(self) -> frozenset[str]:
        """Names of the callers the file holds now."""
        return frozenset(caller.name for caller in self._callers.values())

    def _read(self) -> tuple[tuple[int, int, int], dict[str, Caller]]:
        try:
            signature = _signature(self._path)
            text = self._path.read_bytes()
        except OSError as error:
            raise TokenFileError(f"tokens file {self._path}: cannot be read ({error.strerror or error})") from None
        return signature, parse_tokens(self._path, text, self._defaults)

    def refresh(self) -> None:
        """Re-reads the file if it changed since the last look (at most once a
        second); a version that fails keeps the previous callers, with one ERROR line."""
        now = self._clock()
        if now - self._checked < RELOAD_CHECK_SECONDS:
            return
        self._checked = now
        try:
            signature = _signature(self._path)
        except OSError:
            signature = None
        if signature == self._signature or signature == self._rejected:
            return
        try:
            self._signature, self._callers = self._read()
        except TokenFileError as error:
            log.error("%s; keeping the previous %d callers", error, len(self._callers))
            self._rejected = signature
            return
        self._rejected = _NOTHING_REJECTED
        log.info("tokens file %s reloaded: %d callers", self._path, len(self._callers))

    def identify(self, token: str | None) -> Caller | None:
        """The caller whose token hashes to that of `token` (every hash is compared, in
        constant time), or None."""
        self.refresh()
        if not token:
            return None
        presented = token_sha256(token)
        found = None
        for digest, caller in self._callers.items():
            if hmac.compare_digest(presented, digest):
                found = caller
        return found


def authenticator(tokens_file: str, defaults: Quota) -> Authenticator:
    """The TokenBook of `tokens_file`, or Anonymous when it is ''."""
    return TokenBook(Path(tokens_file).expanduser(), defaults) if tokens_file else Anonymous(defaults)


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m introspect.auth hash`: the SHA-256 of the token on stdin (one trailing
    newline is dropped), for a tokens file's token_sha256."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments != ["hash"]:
        print("usage: python -m introspect.auth hash < token", file=sys.stderr)
        return 2
    token = sys.stdin.read().removesuffix("\n").removesuffix("\r")
    if not token:
        print("no token on stdin", file=sys.stderr)
        return 2
    print(token_sha256(token))
    return 0


if __name__ == "__main__":
    sys.exit(main())
