"""Python values -> `Input` messages, shared by every RPC that takes inputs.

One input is a `str` (a text), a `tuple[str, str]` (a text pair), a sequence of ints (token
ids, used by the server exactly as given) or a ready `pb.Input`. A batch is a list (or any
other non-string sequence) of those.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import TypeAlias

import numpy as np

from introspect_contract import pb

InputLike: TypeAlias = str | tuple[str, str] | Sequence[int] | np.ndarray | pb.Input
"""One model input: text, text pair, token ids or an Input message."""
InputsLike: TypeAlias = InputLike | Sequence[InputLike]
"""One input, or a batch of them."""


def _is_token_id(value: object) -> bool:
    return isinstance(value, (numbers.Integral, np.integer)) and not isinstance(value, (bool, np.bool_))


def _single_input(value: object) -> pb.Input | None:
    """The Input for one input, or None when `value` is not one input."""
    if isinstance(value, pb.Input):
        copy = pb.Input()
        copy.CopyFrom(value)
        return copy
    if isinstance(value, str):
        return pb.Input(text=pb.TextInput(text=value))
    if isinstance(value, tuple) and len(value) == 2 and all(isinstance(part, str) for part in value):
        return pb.Input(text=pb.TextInput(text=value[0], text_pair=value[1]))
    if isinstance(value, np.ndarray):
        if value.ndim == 1 and value.size and np.issubdtype(value.dtype, np.integer):
            return pb.Input(token_ids=pb.TokenIds(ids=[int(token) for token in value]))
        return None
    if isinstance(value, Sequence) and value and all(_is_token_id(token) for token in value):
        return pb.Input(token_ids=pb.TokenIds(ids=[int(token) for token in value]))  # type: ignore[call-overload]
    return None


def make_input(value: InputLike) -> pb.Input:
    """Converts one input (text, (text, text_pair), token ids or an Input) to an Input.

    Raises TypeError for anything else, a batch included.
    """
    message = _single_input(value)
    if message is None:
        raise TypeError(
            "an input is a str, a (text, text_pair) tuple of two str, or a non-empty sequence of "
            f"int token ids; got {_describe(value)}"
        )
    return message


def make_inputs(inputs: InputsLike) -> list[pb.Input]:
    """Converts one input or a batch of inputs to a list of Input messages.

    `"text"`, `("text", "pair")`, `[101, 2023, 102]` and an `Input` are single inputs;
    a list of those is a batch (`["a", "b"]` is two texts, `[("q", "p")]` one pair). A
    tuple of str is always a pair, so one of another length is a TypeError.
    Raises ValueError for an empty batch and TypeError for values that are neither.
    """
    single = _single_input(inputs)
    if single is not None:
        return [single]
    if isinstance(inputs, (str, bytes)) or not isinstance(inputs, (Sequence, np.ndarray)):
        raise TypeError(f"inputs must be one input or a sequence of inputs, got {_describe(inputs)}")
    if len(inputs) == 0:
        raise ValueError("inputs must not be empty")
    if isinstance(inputs, tuple) and all(isinstance(item, str) for item in inputs):
        raise TypeError(f"a tuple of str is a (text, text_pair) pair of two; use a list for a batch, got {len(inputs)}")
    messages: list[pb.Input] = []
    for index, item in enumerate(inputs):
        message = _single_input(item)
        if message is None:
            raise TypeError(
                f"inputs[{index}]: an input is a str, a (text, text_pair) tuple of two str, or a "
                f"non-empty sequence of int token ids; got {_describe(item)}"
            )
        messages.append(message)
    return messages


def _describe(value: object) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text[:60]}{'...' if len(text) > 60 else ''}"
