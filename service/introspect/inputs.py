"""Inputs: text or token ids -> token ids the model sees -> padded batch tensors."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .errors import InvalidInput, require
from .models import LoadedModel
from .requests import InputSpec
from .results import EncodedInput


@dataclass(frozen=True)
class EncodedBatch:
    """Inputs right-padded into one batch on the model's device."""

    inputs: tuple[EncodedInput, ...]
    input_ids: torch.Tensor  # [batch, tokens]
    attention_mask: torch.Tensor  # [batch, tokens], 1 for real tokens
    token_type_ids: torch.Tensor | None  # [batch, tokens]

    def model_inputs(self) -> dict[str, torch.Tensor]:
        """Keyword arguments for the model's forward."""
        arguments = {"input_ids": self.input_ids, "attention_mask": self.attention_mask}
        if self.token_type_ids is not None:
            arguments["token_type_ids"] = self.token_type_ids
        return arguments


def pad_token_id(model: LoadedModel) -> int:
    """The id used for padding: the tokenizer's pad, else EOS, else 0."""
    tokenizer = model.tokenizer
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if candidate is not None:
            return int(candidate)
    return 0


def encode_input(model: LoadedModel, spec: InputSpec, truncate: bool, field: str) -> EncodedInput:
    """Tokenizes one input, enforcing the model's length limit (or truncating if allowed).
    Safe to call from any thread."""
    with model.tokenizer_lock:
        return _encode_input(model, spec, truncate, field)


def _encode_input(model: LoadedModel, spec: InputSpec, truncate: bool, field: str) -> EncodedInput:
    description = model.description
    limit = description.max_tokens
    tokenizer = model.tokenizer
    token_type_ids: tuple[int, ...] | None = None
    if spec.token_ids is not None:
        ids = spec.token_ids
        require(len(ids) > 0, f"{field}.token_ids", "must not be empty")
        bad = [token for token in ids if not 0 <= token < description.vocab_size]
        require(not bad, f"{field}.token_ids", f"ids {bad[:5]} are outside the vocabulary [0, {description.vocab_size})")
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
        if "token_type_ids" in encoding and getattr(model.model.config, "type_vocab_size", 0):
            token_type_ids = tuple(int(value) for value in encoding["token_type_ids"])
    if len(ids) > limit:
        raise InvalidInput(
            field,
            f"input has {len(ids)} tokens but model {description.name!r} accepts at most {limit}; "
            "shorten it or set truncate=true",
        )
    return EncodedInput(
        token_ids=tuple(ids),
        tokens=tuple(str(token) for token in tokenizer.convert_ids_to_tokens(list(ids))),
        token_type_ids=token_type_ids,
        truncated=len(ids) < original_length,
        original_length=original_length,
    )


def batch_inputs(model: LoadedModel, encoded: Sequence[EncodedInput]) -> EncodedBatch:
    """Right-pads encoded inputs into tensors on the model's device."""
    width = max(item.length for item in encoded)
    padding = pad_token_id(model)
    ids = torch.full((len(encoded), width), padding, dtype=torch.long)
    mask = torch.zeros((len(encoded), width), dtype=torch.long)
    with_types = any(item.token_type_ids is not None for item in encoded)
    types = torch.zeros((len(encoded), width), dtype=torch.long) if with_types else None
    for row, item in enumerate(encoded):
        ids[row, : item.length] = torch.tensor(item.token_ids, dtype=torch.long)
        mask[row, : item.length] = 1
        if types is not None and item.token_type_ids is not None:
            types[row, : item.length] = torch.tensor(item.token_type_ids, dtype=torch.long)
    device = model.device
    return EncodedBatch(
        inputs=tuple(encoded),
        input_ids=ids.to(device),
        attention_mask=mask.to(device),
        token_type_ids=types.to(device) if types is not None else None,
    )


def encode_batch(model: LoadedModel, specs: Sequence[InputSpec], truncate: bool, field: str = "inputs") -> EncodedBatch:
    """Encodes and pads several inputs."""
    require(len(specs) > 0, field, "at least one input is required")
    return batch_inputs(model, [encode_input(model, spec, truncate, f"{field}[{i}]") for i, spec in enumerate(specs)])
