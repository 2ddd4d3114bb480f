"""What the assemblers of every stream share: the stream's header, taken once and before
anything else, and the result fields it carries."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from google.protobuf.message import Message

from introspect_contract import pb
from .image_layout import ImageLayout, layout_of


def stream_fields(header: pb.StreamHeader) -> dict[str, Any]:
    """The model, fingerprint and cached flag of a stream, as result keyword arguments."""
    return {"model": header.model, "fingerprint": header.fingerprint, "cached": header.cached}


def input_fields(item: pb.TokenizedInput) -> dict[str, Any]:
    """One input as the model saw it (tokens, token_ids, truncated, original_length and
    the image layout, None for text), as result keyword arguments."""
    return {
        "tokens": list(item.tokens),
        "token_ids": [int(token) for token in item.token_ids],
        "truncated": item.truncated,
        "original_length": item.original_length,
        "image": layout_of(item),
    }


def token_count(item: pb.TokenizedInput) -> int:
    """Tokens the model saw: the token ids, or for image inputs (which have no ids) the
    token names (special tokens, then one per patch)."""
    return len(item.token_ids) or len(item.tokens)


def single_input_fields(header: pb.StreamHeader) -> dict[str, Any]:
    """The SingleInputResult fields of a stream on one input."""
    return stream_fields(header) | input_fields(header.inputs[0] if header.inputs else pb.TokenizedInput())


@dataclass
class SingleInputResult:
    """What the result of a call on one input holds besides its own values.

    Attributes:
        model, fingerprint, cached: which model (and weights) answered; cached when the
            stream was replayed from the server's result cache.
        tokens, token_ids, truncated, original_length: the input as the model saw it.
        image: how an image input became tokens (keyword-only); None for text.
    """

    model: str
    fingerprint: str
    cached: bool
    tokens: list[str]
    token_ids: list[int]
    truncated: bool
    original_length: int
    image: ImageLayout | None = field(default=None, kw_only=True)


class HeaderFirst:
    """Base of the stream assemblers: holds the stream's header, which must come once
    and before any other message."""

    def __init__(self) -> None:
        self._header: pb.StreamHeader | None = None

    def _payload_kind(self, message: Message) -> str | None:
        """The name of `message`'s payload; a header is taken here. ValueError for a
        second header, or for anything else before the first."""
        kind = message.WhichOneof("payload")
        if kind == "header":
            if self._header is not None:
                raise ValueError("the stream sent a second header")
            self._header = message.header  # type: ignore[attr-defined]
        elif kind is not None and self._header is None:
            raise ValueError(f"the stream sent {kind} before its header")
        return kind
