"""Protobuf requests -> query dataclasses (requests.py), by field name. Structural checks
only; what depends on the model is validated by the methods.

`decode(query_type, request)` fills each dataclass field from the request field of the
same name: an enum becomes its value's plain name (introspect_contract.enums), UNSPECIFIED
and an unset `optional` field leave the dataclass field's default, a repeated field
becomes a tuple, a sub-message becomes the dataclass (or fixed-length tuple of its
fields) the type hint names, and Input and Target go through the converters registered
for InputSpec and TargetSpec. An unknown enum number is InvalidInput naming the field and
the valid names, a NaN or infinite float InvalidInput naming the field. Adding a method needs no change here.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import types
import typing
from collections.abc import Callable
from typing import Any, TypeVar

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from introspect_contract import pb
from introspect_contract.enums import DTYPE, names_of

from ..errors import InvalidInput, require
from ..requests import ImageSpec, InputSpec, TargetSpec

Query = TypeVar("Query")
Converter = Callable[[Any, str], Any]
"""(message, field path) -> the plain value of a message field."""
_CONVERTERS: dict[type, Converter] = {}
_DEFAULT = object()  # leave the dataclass field's default
_FLOAT_TYPES = (FieldDescriptor.TYPE_FLOAT, FieldDescriptor.TYPE_DOUBLE)


def converts(plain_type: type) -> Callable[[Converter], Converter]:
    """Registers the decorated function as the converter of messages into `plain_type`."""

    def register(function: Converter) -> Converter:
        _CONVERTERS[plain_type] = function
        return function

    return register


@converts(InputSpec)
def input_spec(message: pb.Input, field: str) -> InputSpec:
    """Decodes one Input."""
    source = message.WhichOneof("source")
    if source == "text":
        return InputSpec(text=message.text.text, text_pair=message.text.text_pair or None)
    if source == "token_ids":
        return InputSpec(token_ids=tuple(int(token) for token in message.token_ids.ids))
    if source == "image":
        return InputSpec(image=image_spec(message.image, f"{field}.image"))
    raise InvalidInput(field, "set one of text, token_ids or image")


_PIXEL_DTYPES = ("uint8", "float32")
_PIXEL_BYTES = {"uint8": 1, "float32": 4}


def image_spec(message: pb.ImageInput, field: str) -> ImageSpec:
    """Decodes an ImageInput: encoded bytes, or a [channels, height, width] pixel tensor
    of uint8 or float32 whose bytes match its shape."""
    source = message.WhichOneof("source")
    if source == "encoded":
        require(len(message.encoded) > 0, f"{field}.encoded", "must not be empty: send a PNG, JPEG or WebP file")
        return ImageSpec(encoded=bytes(message.encoded))
    require(source == "pixels", field, "set encoded (PNG, JPEG or WebP bytes) or pixels")
    pixels = message.pixels
    dtype = DTYPE.name_of(pixels.dtype)
    require(dtype in _PIXEL_DTYPES, f"{field}.pixels.dtype",
            f"pixels are {' or '.join(_PIXEL_DTYPES)} (DTYPE_UINT8 0-255, DTYPE_FLOAT32 0-1)")
    shape = tuple(int(size) for size in pixels.shape)
    require(len(shape) == 3 and all(size > 0 for size in shape), f"{field}.pixels.shape",
            f"must be [channels, height, width], got {list(shape)}")
    expected = math.prod(shape) * _PIXEL_BYTES[dtype]
    require(len(pixels.data) == expected, f"{field}.pixels.data",
            f"{len(pixels.data)} bytes for {dtype} pixels of shape {list(shape)}: expected {expected}")
    return ImageSpec(pixel_shape=shape, pixel_dtype=dtype, pixel_data=bytes(pixels.data))


@converts(TargetSpec)
def target_spec(message: pb.Target, field: str = "target") -> TargetSpec | None:
    """Decodes a Target; None when no kind is set (methods then name the supported ones)."""
    kind = message.WhichOneof("kind")
    if kind is None:
        return None
    if kind == "next_token":
        chosen = message.next_token
        return TargetSpec(
            kind=kind,
            position=chosen.position if chosen.HasField("position") else -1,
            token_id=chosen.token_id if chosen.HasField("token_id") else None,
        )
    if kind == "logit_difference":
        chosen = message.logit_difference
        return TargetSpec(
            kind=kind,
            position=chosen.position if chosen.HasField("position") else -1,
            token_id=chosen.token_id,
            contrast_token_id=chosen.contrast_token_id,
        )
    if kind == "class_score":
        chosen = message.class_score
        return TargetSpec(
            kind=kind,
            class_index=chosen.class_index if chosen.HasField("class_index") else None,
            probability=chosen.probability,
        )
    if kind == "embedding_similarity":
        reference = message.embedding_similarity.reference
        return TargetSpec(kind=kind, reference=input_spec(reference, f"{field}.embedding_similarity.reference"))
    return TargetSpec(kind=kind)


def decode(query_type: type[Query], message: Message, path: str = "") -> Query:
    """The `query_type` dataclass filled from `message` by field name (see the module)."""
    hints = _hints(query_type)
    fields = message.DESCRIPTOR.fields_by_name
    values = {}
    for item in dataclasses.fields(query_type):  # type: ignore[arg-type]
        descriptor = fields.get(item.name)
        if descriptor is None:
            raise TypeError(f"{query_type.__name__}.{item.name} has no field in {message.DESCRIPTOR.full_name}")
        value = _field(message, descriptor, hints[item.name], f"{path}{item.name}")
        if value is _DEFAULT:
            if item.default is dataclasses.MISSING and item.default_factory is dataclasses.MISSING:
                value = None
            else:
                continue
        values[item.name] = value
    return query_type(**values)


@functools.cache
def _hints(query_type: type) -> dict[str, Any]:
    return typing.get_type_hints(query_type)


def _field(message: Message, descriptor: FieldDescriptor, hint: Any, path: str) -> Any:
    value = getattr(message, descriptor.name)
    if descriptor.is_repeated:
        element = _without_none(hint)
        element = typing.get_args(element)[0] if typing.get_args(element) else Any
        return tuple(_value(item, descriptor, element, f"{path}[{index}]") for index, item in enumerate(value))
    if descriptor.type != FieldDescriptor.TYPE_MESSAGE and descriptor.has_presence and not message.HasField(
        descriptor.name
    ):
        return _DEFAULT  # an unset `optional` scalar
    if descriptor.type == FieldDescriptor.TYPE_MESSAGE and _optional(hint) and not message.HasField(descriptor.name):
        return _DEFAULT  # an unset message whose plain field may be None
    if descriptor.enum_type is not None and value == 0:
        return _DEFAULT  # UNSPECIFIED
    return _value(value, descriptor, hint, path)


def _value(value: Any, descriptor: FieldDescriptor, hint: Any, path: str) -> Any:
    hint = _without_none(hint)
    if descriptor.enum_type is not None:
        names = names_of(descriptor.enum_type)
        name = names.name_of(value)
        if name is None:
            raise InvalidInput(path, f"unknown {names.descriptor.name} {value}; use one of {list(names.names)}")
        return name
    if descriptor.type in _FLOAT_TYPES:
        require(math.isfinite(value), path, f"must be a finite number, got {value}")
    if descriptor.type != FieldDescriptor.TYPE_MESSAGE:
        return value
    if hint in _CONVERTERS:
        return _CONVERTERS[hint](value, path)
    if dataclasses.is_dataclass(hint):
        return decode(hint, value, f"{path}.")  # type: ignore[arg-type]
    if typing.get_origin(hint) is tuple:  # a fixed-length tuple of the message's fields
        return tuple(getattr(value, field.name) for field in value.DESCRIPTOR.fields)
    raise TypeError(f"no conversion of {descriptor.message_type.full_name} into {hint}")


def _optional(hint: Any) -> bool:
    """Whether a type hint admits None (`X | None`)."""
    return typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in typing.get_args(hint)


def _without_none(hint: Any) -> Any:
    """X for `X | None`; `hint` itself otherwise."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        remaining = [argument for argument in typing.get_args(hint) if argument is not type(None)]
        if len(remaining) == 1:
            return remaining[0]
    return hint
