"""Python values -> `Input` messages, shared by every RPC that takes inputs.

One input is a `str` (a text), a `tuple[str, str]` (a text pair), a sequence of ints (token
ids, used by the server exactly as given), an image (a `pathlib.Path`, encoded `bytes`, a
PIL image or a 2-D/3-D uint8 or float numpy array of pixels; see `image_inputs`) or a ready
`pb.Input`. A batch is a list (or any other non-string sequence) of those. A `str` is
always text: a file is a `Path` (or the `image=` keyword of the client's methods).
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import TypeAlias

import numpy as np

from introspect_contract import pb
from .image_inputs import ImageLike, is_image, make_image_input

InputLike: TypeAlias = "str | tuple[str, str] | Sequence[int] | ImageLike | pb.Input"
"""One model input: text, text pair, token ids, an image or an Input message."""
InputsLike: TypeAlias = "InputLike | Sequence[InputLike]"
"""One input, or a batch of them."""


_INPUT_FORMS = (
    "a str, a (text, text_pair) tuple of two str, a non-empty sequence of int token ids, or an "
    "image (pathlib.Path, encoded bytes, PIL image, uint8/float pixel array)"
)


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
    if is_image(value):
        return make_image_input(value)
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
    """Converts one input (text, (text, text_pair), token ids, an image or an Input) to an
    Input (images: see `make_image_input`).

    Raises TypeError for anything else, a batch included.
    """
    message = _single_input(value)
    if message is None:
        raise TypeError(
            f"an input is {_INPUT_FORMS}; got {_describe(value)}"
        )
    return message


def make_inputs(inputs: InputsLike) -> list[pb.Input]:
    """Converts one input or a batch of inputs to a list of Input messages.

    `"text"`, `("text", "pair")`, `[101, 2023, 102]` and an `Input` are single inputs;
    a list of those is a batch (`["a", "b"]` is two texts, `[("q", "p")]` one pair, a
    [batch, channels, height, width] array as many images). A
    tuple of str is always a pair, so one of another length is a TypeError.
    Raises ValueError for an empty batch and TypeError for values that are neither.
    """
    single = _single_input(inputs)
    if single is not None:
        return [single]
    if isinstance(inputs, str) or not isinstance(inputs, (Sequence, np.ndarray)):
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
                f"inputs[{index}]: an input is {_INPUT_FORMS}; got {_describe(item)}"
            )
        messages.append(message)
    return messages


def chosen_input(inputs: InputsLike | None, image: ImageLike | None) -> InputsLike:
    """The input(s) of a call given either positionally or as `image=` (one image; a str
    is then a file path). TypeError unless exactly one of them is given."""
    if (inputs is None) == (image is None):
        raise TypeError("give the input either positionally or as image=, exactly one of them")
    if image is not None:
        return make_image_input(image)
    assert inputs is not None
    return inputs


def _describe(value: object) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text[:60]}{'...' if len(text) > 60 else ''}"
