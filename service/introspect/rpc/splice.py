"""Serialized messages that carry large tensors, built with one copy of the tensor bytes.

Setting `Tensor.data` and serializing copies a tensor's bytes three times (numpy ->
bytes, bytes -> the message, the message -> its serialization). Here the message is
serialized without its tensors, each tensor field is appended as its own wire-format
record (key, length, `Tensor{shape, dtype}`, then the data record pointing at the array's
memory), and the pieces are joined once. The result parses to the same message as
SerializeToString would give (fields may come in another order, which the wire format
allows).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from google.protobuf.message import Message
from introspect_contract import pb
from introspect_contract.tensors import WIRE_DTYPES, storage_array

_LENGTH_DELIMITED = 2
_TENSOR_DATA = pb.Tensor.DESCRIPTOR.fields_by_name["data"].number


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        low, value = value & 0x7F, value >> 7
        if not value:
            out.append(low)
            return bytes(out)
        out.append(low | 0x80)


def _record_head(field_number: int, length: int) -> bytes:
    """The key and length of a length-delimited field record."""
    return _varint(field_number << 3 | _LENGTH_DELIMITED) + _varint(length)


@dataclass(frozen=True)
class Spliced:
    """A serialized message in pieces (protobuf bytes and array memory), joined by
    `serialized`."""

    parts: tuple[bytes | memoryview, ...]

    @property
    def size(self) -> int:
        """Bytes of the serialized message."""
        return sum(len(part) if isinstance(part, bytes) else part.nbytes for part in self.parts)

    def within(self, field_number: int) -> Spliced:
        """This message as field `field_number` of an enclosing message that has no
        other field set."""
        return Spliced((_record_head(field_number, self.size), *self.parts))

    def serialized(self) -> bytes:
        """The message's bytes (the one copy of its tensors)."""
        return b"".join(self.parts)


def _tensor_parts(storage: np.ndarray, dtype: str) -> tuple[bytes, memoryview]:
    """A Tensor message's bytes without its data, then its data record: storage is an
    array already in wire storage (introspect_contract.tensors.to_wire_storage)."""
    array = storage_array(storage, dtype)
    data = memoryview(array).cast("B") if array.size else memoryview(b"")  # a view with a 0 in its shape cannot cast
    head = pb.Tensor(shape=list(storage.shape), dtype=WIRE_DTYPES[dtype]).SerializeToString()
    return head + _record_head(_TENSOR_DATA, data.nbytes), data


def with_tensors(message: Message, tensors: Mapping[str, tuple[np.ndarray, str]]) -> Spliced:
    """`message` (its tensor fields unset) with a Tensor in each field `tensors` names:
    field name -> (array in wire storage, wire dtype name)."""
    parts: list[bytes | memoryview] = [message.SerializeToString()]
    fields = message.DESCRIPTOR.fields_by_name
    for name, (storage, dtype) in tensors.items():
        head, data = _tensor_parts(storage, dtype)
        parts += [_record_head(fields[name].number, len(head) + data.nbytes) + head, data]
    return Spliced(tuple(parts))
