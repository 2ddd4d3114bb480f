"""Text inputs: text or token ids -> token ids the model sees -> padded batch tensors.

The model wrapper (models.py) owns one processor per modality it takes; this is the text
one (the model's own tokenizer, never loaded with remote code).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

from .errors import InvalidInput, require
from .requests import InputSpec
from .results import EncodedInput

if TYPE_CHECKING:
    from .models import ModelDescription

_UNBOUNDED_TOKENIZER_LIMIT = 1_000_000


@dataclass(frozen=True)
class EncodedBatch:
    """Inputs batched on the model's device: token ids right-padded, or processed images
    stacked. `attention_mask` marks real tokens either way (all ones for images, which
    the model is not given)."""

    inputs: tuple[EncodedInput, ...]
    input_ids: torch.Tensor | None  # [batch, tokens]; None for images
    attention_mask: torch.Tensor  # [batch, tokens], 1 for real tokens
    token_type_ids: torch.Tensor | None  # [batch, tokens]
    pixel_values: torch.Tensor | None = None  # [batch, 3, height, width]; images only

    @property
    def width(self) -> int:
        """Tokens per row (the longest input's length)."""
        return int(self.attention_mask.shape[1])

    def model_inputs(self, rows: slice = slice(None)) -> dict[str, torch.Tensor]:
        """Keyword arguments for the model's forward (of the given rows)."""
        if self.pixel_values is not None:
            return {"pixel_values": self.pixel_values[rows]}
        assert self.input_ids is not None
        arguments = {"input_ids": self.input_ids[rows], "attention_mask": self.attention_mask[rows]}
        if self.token_type_ids is not None:
            arguments["token_type_ids"] = self.token_type_ids[rows]
        return arguments


class TextProcessor:
    """A model's tokenizer, safe to use from several threads (fast tokenizers are not:
    "Already borrowed"), with the special token ids methods need."""

    modality = "text"

    def __init__(self, tokenizer: PreTrainedTokenizerBase, uses_token_types: bool = True) -> None:
        self.tokenizer = tokenizer
        self.uses_token_types = uses_token_types
        self._lock = threading.Lock()

    @property
    def pad_token_id(self) -> int:
        """The id used for padding: the tokenizer's pad, else EOS, else 0."""
        for candidate in (self.tokenizer.pad_token_id, self.tokenizer.eos_token_id):
            if candidate is not None:
                return int(candidate)
        return 0

    @property
    def mask_token_id(self) -> int | None:
        """The mask token's id, if the tokenizer has one."""
        return self.tokenizer.mask_token_id

    @property
    def has_pad_token(self) -> bool:
        """Whether the tokenizer has a pad token of its own."""
        return self.tokenizer.pad_token_id is not None

    @property
    def special_ids(self) -> frozenset[int]:
        """Ids of the special tokens ([CLS], [SEP], BOS, ...)."""
        return frozenset(int(token) for token in self.tokenizer.all_special_ids)

    def max_tokens(self, position_limit: int) -> int:
        """The longest input: the model's position limit, or the tokenizer's if smaller."""
        limit = getattr(self.tokenizer, "model_max_length", 0) or 0
        return min(position_limit, limit) if 0 < limit < _UNBOUNDED_TOKENIZER_LIMIT else position_limit

    def tokens(self, ids: Sequence[int]) -> tuple[str, ...]:
        """The tokenizer's string for each id; `<id N>` for an id it has no string for
        (embedding tables are often padded past the tokenizer's vocabulary)."""
        with self._lock:
            return self._tokens(ids)

    def _tokens(self, ids: Sequence[int]) -> tuple[str, ...]:
        strings = self.tokenizer.convert_ids_to_tokens(list(ids))
        return tuple(f"<id {token}>" if string is None else str(string) for token, string in zip(ids, strings))

    def encode(self, spec: InputSpec, truncate: bool, field: str, description: ModelDescription) -> EncodedInput:
        """Tokenizes one input, enforcing the model's length limit (or truncating if
        allowed) and vocabulary."""
        with self._lock:
            return self._encode(spec, truncate, field, description)

    def _encode(self, spec: InputSpec, truncate: bool, field: str, description: ModelDescription) -> EncodedInput:
        limit, vocab_size, name = description.max_tokens, description.vocab_size, description.name
        tokenizer = self.tokenizer
        token_type_ids: tuple[int, ...] | None = None
        if spec.token_ids is not None:
            ids = spec.token_ids
            require(len(ids) > 0, f"{field}.token_ids", "must not be empty")
            bad = [token for token in ids if not 0 <= token < vocab_size]
            require(not bad, f"{field}.token_ids", f"ids {bad[:5]} are outside the vocabulary [0, {vocab_size})")
            original_length = len(ids)
            if original_length > limit and truncate:
                ids = ids[:limit]
        else:
            require(bool(spec.text and spec.text.strip()), f"{field}.text", "must not be empty")
            encoding = tokenizer(spec.text, spec.text_pair or None, add_special_tokens=True, truncation=False)
            ids = tuple(int(token) for token in encoding["input_ids"])
            original_length = len(ids)
            if original_length > limit and truncate:
                encoding = tokenizer(
                    spec.text, spec.text_pair or None, add_special_tokens=True, truncation=True, max_length=limit
                )
                ids = tuple(int(token) for token in encoding["input_ids"])
            if "token_type_ids" in encoding and self.uses_token_types:
                token_type_ids = tuple(int(value) for value in encoding["token_type_ids"])
        if len(ids) > limit:
            raise InvalidInput(
                field,
                f"input has {len(ids)} tokens but model {name!r} accepts at most {limit}; "
                "shorten it or set truncate=true",
            )
        return EncodedInput(
            token_ids=tuple(ids),
            tokens=self._tokens(ids),
            token_type_ids=token_type_ids,
            truncated=len(ids) < original_length,
            original_length=original_length,
        )


def batch_inputs(encoded: Sequence[EncodedInput], pad_token_id: int, device: torch.device,
                 dtype: torch.dtype = torch.float32) -> EncodedBatch:
    """Right-pads encoded token inputs, or stacks processed images (`dtype`: the model's
    weights'), into tensors on `device`."""
    width = max(item.length for item in encoded)
    mask = torch.zeros((len(encoded), width), dtype=torch.long)
    for row, item in enumerate(encoded):
        mask[row, : item.length] = 1
    if any(item.pixel_values is not None for item in encoded):
        return _image_batch(encoded, mask, device, dtype)
    ids = torch.full((len(encoded), width), pad_token_id, dtype=torch.long)
    with_types = any(item.token_type_ids is not None for item in encoded)
    types = torch.zeros((len(encoded), width), dtype=torch.long) if with_types else None
    for row, item in enumerate(encoded):
        ids[row, : item.length] = torch.tensor(item.token_ids, dtype=torch.long)
        if types is not None and item.token_type_ids is not None:
            types[row, : item.length] = torch.tensor(item.token_type_ids, dtype=torch.long)
    return EncodedBatch(
        inputs=tuple(encoded),
        input_ids=ids.to(device),
        attention_mask=mask.to(device),
        token_type_ids=types.to(device) if types is not None else None,
    )


def _image_batch(encoded: Sequence[EncodedInput], mask: torch.Tensor, device: torch.device,
                 dtype: torch.dtype) -> EncodedBatch:
    sizes = {item.pixel_values.shape for item in encoded if item.pixel_values is not None}
    if len(sizes) != 1 or any(item.pixel_values is None for item in encoded):
        raise InvalidInput("inputs", "images of one batch must all be images of one processed size")
    pixels = torch.from_numpy(np.stack([item.pixel_values for item in encoded]))  # type: ignore[misc]
    return EncodedBatch(
        inputs=tuple(encoded),
        input_ids=None,
        attention_mask=mask.to(device),
        token_type_ids=None,
        pixel_values=pixels.to(device=device, dtype=dtype),
    )
