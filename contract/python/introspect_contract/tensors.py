"""Tensor wire format: shape + dtype + raw little-endian bytes (numpy only, no torch).

The server and every client share this codec. bfloat16 has no numpy dtype: it travels as
the upper 16 bits of float32 and decodes to float32.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from introspect_contract import pb
from introspect_contract.enums import DTYPE

WIRE_DTYPES: dict[str, int] = dict(DTYPE.numbers)
"""Wire dtype name -> Dtype number."""
DTYPE_NAMES: dict[int, str] = {value: name for name, value in WIRE_DTYPES.items()}
_NUMPY_STORAGE: dict[str, np.dtype] = {
    "float32": np.dtype("<f4"),
    "float16": np.dtype("<f2"),
    "bfloat16": np.dtype("<u2"),
    "int32": np.dtype("<i4"),
    "uint8": np.dtype("u1"),
}
ITEM_BYTES: dict[str, int] = {name: dtype.itemsize for name, dtype in _NUMPY_STORAGE.items()}


def float32_to_bfloat16_bits(values: np.ndarray) -> np.ndarray:
    """Rounds float32 values to bfloat16 (round half to even, as torch does) as uint16 bits."""
    bits = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32)
    rounding = ((bits >> 16) & 1) + np.uint32(0x7FFF)
    rounded = ((bits + rounding) >> 16).astype(np.uint16)
    is_nan = np.isnan(values)
    if is_nan.any():
        rounded[is_nan] = np.uint16(0x7FC0)
    return rounded


def bfloat16_bits_to_float32(bits: np.ndarray) -> np.ndarray:
    """Expands bfloat16 bit patterns (uint16) to float32 values."""
    return (bits.astype(np.uint32) << 16).view(np.float32)


def to_wire_storage(values: np.ndarray, dtype: str) -> np.ndarray:
    """Converts an array to the little-endian storage type of wire dtype `dtype`."""
    if dtype == "bfloat16":
        return float32_to_bfloat16_bits(values)
    return np.ascontiguousarray(values, dtype=_NUMPY_STORAGE[dtype])


def storage_array(storage: np.ndarray, dtype: str) -> np.ndarray:
    """An array already in wire storage (see to_wire_storage) as the contiguous
    little-endian array its Tensor's data holds (the array itself when it is one)."""
    return np.ascontiguousarray(storage, dtype=_NUMPY_STORAGE[dtype])


def encode_storage(storage: np.ndarray, dtype: str) -> pb.Tensor:
    """Wraps an array already in wire storage (see to_wire_storage) into a Tensor message."""
    return pb.Tensor(shape=list(storage.shape), dtype=WIRE_DTYPES[dtype], data=storage_array(storage, dtype).tobytes())


def encode_tensor(values: np.ndarray, dtype: str = "float32") -> pb.Tensor:
    """Encodes a numpy array as a Tensor message of wire dtype `dtype`."""
    return encode_storage(to_wire_storage(values, dtype), dtype)


def decode_tensor(tensor: pb.Tensor) -> np.ndarray:
    """Decodes a Tensor message to numpy (bfloat16 becomes float32, float16 stays float16)."""
    name = DTYPE_NAMES.get(tensor.dtype)
    if name is None:
        raise ValueError(f"unknown tensor dtype {tensor.dtype}")
    shape = tuple(int(size) for size in tensor.shape)
    storage = np.frombuffer(tensor.data, dtype=_NUMPY_STORAGE[name])
    expected = int(np.prod(shape, dtype=np.int64))
    if storage.size != expected:
        raise ValueError(f"tensor of shape {shape} carries {storage.size} elements, expected {expected}")
    storage = storage.reshape(shape)
    if name == "bfloat16":
        return bfloat16_bits_to_float32(storage)
    return storage.astype(storage.dtype.newbyteorder("="), copy=False)


def element_count(shape: Iterable[int]) -> int:
    """Number of elements of an array of `shape`."""
    return int(np.prod(list(shape), dtype=np.int64))
