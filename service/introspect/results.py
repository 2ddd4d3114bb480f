"""Plain result dataclasses that methods emit and the gRPC layer encodes (no torch).

Arrays are numpy, already in their wire storage (see introspect_client.tensors).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class EncodedInput:
    """An input as the model sees it."""

    token_ids: tuple[int, ...]
    tokens: tuple[str, ...]
    token_type_ids: tuple[int, ...] | None
    truncated: bool
    original_length: int

    @property
    def length(self) -> int:
        """Number of tokens."""
        return len(self.token_ids)


@dataclass(frozen=True)
class StreamStart:
    """First item of every stream: which model, and the inputs as it saw them."""

    model: str
    fingerprint: str
    inputs: tuple[EncodedInput, ...]


@dataclass(frozen=True)
class WireArray:
    """A numpy array in the storage of wire dtype `dtype` (bfloat16 as uint16 bits)."""

    values: np.ndarray
    dtype: str


@dataclass(frozen=True)
class AttentionLayerResult:
    """One layer's attention result for one input."""

    input_index: int
    layer: int
    heads: tuple[int, ...]  # empty for views reduced over heads
    view: str
    values: WireArray  # [heads_or_1, query, keys_or_k]
    key_indices: WireArray | None  # int32 [heads_or_1, query, k] with top_k
