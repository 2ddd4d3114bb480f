"""Cached values: the response messages of one stream, exactly as sent, framed and compressed.

Layout: one format byte, then the body. The body is every message as a 4-byte
little-endian length followed by its bytes. Format 1 stores the body zstd-compressed;
format 0 stores it as is, chosen when compression saves less than a tenth: dense float
attention maps barely compress (about 8%), and decompressing them on every hit would
cost more time than the bytes saved.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

import zstandard

RAW, ZSTD = 0, 1
_LENGTH = struct.Struct("<I")
_MIN_SAVING = 0.10
_LEVEL = 1


class CorruptValue(ValueError):
    """A stored value does not decode; the cache treats it as a miss."""


def framed_size(messages: Sequence[bytes]) -> int:
    """Bytes the framed, uncompressed body of `messages` takes."""
    return sum(len(message) for message in messages) + _LENGTH.size * len(messages)


def message_cost(message: bytes) -> int:
    """Bytes one message adds to the framed body."""
    return len(message) + _LENGTH.size


def encode(messages: Sequence[bytes]) -> bytes:
    """Frames and (when it pays) compresses the messages of one stream."""
    body = b"".join(part for message in messages for part in (_LENGTH.pack(len(message)), message))
    compressed = zstandard.ZstdCompressor(level=_LEVEL).compress(body)
    if len(compressed) <= (1 - _MIN_SAVING) * len(body):
        return bytes((ZSTD,)) + compressed
    return bytes((RAW,)) + body


def is_compressed(value: bytes | memoryview) -> bool:
    """True when decoding `value` means decompressing (worth doing off the event loop)."""
    return bool(value) and value[0] == ZSTD


def decode(value: bytes | memoryview) -> list[bytes]:
    """The messages of a value made by `encode`; CorruptValue if it is not one."""
    return [bytes(frame) for frame in frames(value)]


def frames(value: bytes | memoryview) -> list[memoryview]:
    """The messages of a value made by `encode` as views into it (or into its decompressed
    body), every length checked before any is returned; CorruptValue if it is not one.
    Replaying copies each message only as it is sent."""
    if not value:
        raise CorruptValue("empty value")
    kind, payload = value[0], memoryview(value)[1:]
    if kind == ZSTD:
        try:
            body = memoryview(zstandard.ZstdDecompressor().decompress(payload))
        except zstandard.ZstdError as error:
            raise CorruptValue(f"bad zstd payload: {error}") from error
    elif kind == RAW:
        body = payload
    else:
        raise CorruptValue(f"unknown value format {kind}")
    messages = []
    position = 0
    while position < len(body):
        if position + _LENGTH.size > len(body):
            raise CorruptValue("truncated length prefix")
        (length,) = _LENGTH.unpack_from(body, position)
        position += _LENGTH.size
        if position + length > len(body):
            raise CorruptValue("truncated message")
        messages.append(body[position : position + length])
        position += length
    return messages
