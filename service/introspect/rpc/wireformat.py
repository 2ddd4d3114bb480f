"""Where serialized protobuf bytes stop parsing: the field path a caller should fix.

`locate(descriptor, data)` walks the wire format itself (tags, varints, lengths), so it
can name the field the protobuf runtime only reports as "Error parsing message": a string
that is not UTF-8 (`inputs[0].text.text`), a length running past the end, a group or a
reserved wire type. Unknown fields are skipped, as the runtime skips them.
"""

from __future__ import annotations

from google.protobuf.descriptor import Descriptor, FieldDescriptor

_VARINT, _FIXED64, _LENGTH, _FIXED32 = 0, 1, 2, 5
_FIXED_SIZES = {_FIXED64: 8, _FIXED32: 4}
_MAX_VARINT_BYTES = 10


class _Truncated(Exception):
    """The bytes end inside a tag or value."""


def _varint(data: bytes, position: int) -> tuple[int, int]:
    """(value, next position) of the varint at `position`."""
    value = 0
    for index in range(_MAX_VARINT_BYTES):
        if position + index >= len(data):
            raise _Truncated
        byte = data[position + index]
        value |= (byte & 0x7F) << (7 * index)
        if byte < 0x80:
            return value, position + index + 1
    raise _Truncated


def _name(path: str, field: FieldDescriptor | None, number: int, seen: dict[int, int]) -> str:
    """The path of this occurrence of field `number` (repeated fields indexed)."""
    name = field.name if field is not None else f"#{number}"
    prefix = f"{path}.{name}" if path else name
    indexed = (FieldDescriptor.TYPE_MESSAGE, FieldDescriptor.TYPE_STRING)
    if field is not None and field.is_repeated and field.type in indexed:
        index = seen.get(number, 0)
        seen[number] = index + 1
        return f"{prefix}[{index}]"
    return prefix


def locate(descriptor: Descriptor, data: bytes, path: str = "") -> tuple[str, str] | None:
    """(field path, what is wrong) of the first field of `data` that cannot be a
    `descriptor` message; None when the walk finds nothing wrong."""
    position = 0
    seen: dict[int, int] = {}
    while position < len(data):
        try:
            key, position = _varint(data, position)
        except _Truncated:
            return path or "request", "the bytes end inside a field tag"
        number, wire_type = key >> 3, key & 7
        field = descriptor.fields_by_number.get(number) if number > 0 else None
        name = _name(path, field, number, seen)
        if number == 0:
            return path or "request", "field number 0 is not a field"
        try:
            if wire_type == _VARINT:
                _, position = _varint(data, position)
                continue
            if wire_type in _FIXED_SIZES:
                position += _FIXED_SIZES[wire_type]
                if position > len(data):
                    raise _Truncated
                continue
            if wire_type != _LENGTH:
                return name, f"wire type {wire_type} is not used by this contract"
            length, start = _varint(data, position)
            position = start + length
            if position > len(data):
                raise _Truncated
        except _Truncated:
            return name, "the bytes end inside this field's value"
        problem = _inside(field, data[start:position], name)
        if problem is not None:
            return problem
    return None


def _inside(field: FieldDescriptor | None, value: bytes, name: str) -> tuple[str, str] | None:
    """What is wrong inside one length-delimited value of `field`."""
    if field is None:
        return None
    if field.type == FieldDescriptor.TYPE_STRING:
        try:
            value.decode("utf-8")
        except UnicodeDecodeError as error:
            return name, f"not valid UTF-8 (byte {error.start})"
        return None
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        return locate(field.message_type, value, name)
    return None
