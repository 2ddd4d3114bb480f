"""Shared prefixes: a causal model's forward of the tail of an input that reuses the keys
and values another forward of the whole input computed for the positions before it.

In a causal model nothing at position p reaches an earlier position, so a row whose
first change is at position p (a patched row in activation patching) has the same
hidden states, keys and values as the unchanged row at every position before p, at every
layer. Such rows need only run positions p.. (the suffix), attending to the recorded
keys and values of positions ..p-1 (the prefix), as a key-value cache serves generation.

The attention function (probe.py) does it, layer by layer, with `PrefixKeys`:

* `PrefixKeys.recording()` records row 0's post-rotary keys and values [1, kv_heads,
  tokens, head_dim] and the mask the model passed (or None: the plain causal mask), in a
  forward of the whole input;
* `recorded.from_position(start)` then serves forwards of the suffix: each layer's keys
  and values are the prefix's (expanded over the batch the layer sees) followed by the
  suffix's, and the mask is the recorded mask's rows of the suffix's queries, so sliding
  windows and any other position-dependent mask stay exact.

The suffix forward is given `position_ids` from `start` (`suffix_arguments`). Whether a
loaded model serves suffixes exactly is checked at load (`verified_prefix_reuse`): the
suffix's outputs, plain and in a growing batch, must equal those of the whole input;
otherwise every row runs from the first position.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch

from .agreement import agree


class PrefixUnsupported(Exception):
    """The attention call has an input a recorded prefix cannot serve (a position bias)."""


@dataclass
class _Record:
    keys: dict[int, torch.Tensor] = field(default_factory=dict)  # layer -> [1, kv_heads, tokens, head_dim]
    values: dict[int, torch.Tensor] = field(default_factory=dict)
    masks: dict[int, torch.Tensor | None] = field(default_factory=dict)  # layer -> [1, 1 or heads, tokens, tokens]


@dataclass(frozen=True)
class PrefixKeys:
    """Recorded keys, values and masks of one row, per layer; `start` None records them,
    else serves forwards of the positions from `start` on."""

    record: _Record
    start: int | None = None
    row: int = 0  # the batch row recorded

    @classmethod
    def recording(cls, row: int = 0) -> PrefixKeys:
        """An empty record of batch row `row`, filled by the next forward it is active in."""
        return cls(_Record(), row=row)

    def from_position(self, start: int) -> PrefixKeys:
        """The record serving forwards of positions `start`.. of the recorded input."""
        return PrefixKeys(self.record, start, self.row)

    def attend(self, layer: int, key: torch.Tensor, value: torch.Tensor, attention_mask: torch.Tensor | None,
               has_position_bias: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(key, value, mask) the attention of `layer` uses: as given while recording;
        with the prefix prepended and the recorded mask's suffix rows while serving.
        key, value [batch, kv_heads, query, head_dim]."""
        if has_position_bias:
            raise PrefixUnsupported("attention with a position bias")
        record = self.record
        if self.start is None:
            row = slice(self.row, self.row + 1)
            record.keys[layer] = key[row]
            record.values[layer] = value[row]
            mask_row = row if attention_mask is not None and attention_mask.shape[0] > 1 else slice(0, 1)
            record.masks[layer] = None if attention_mask is None else attention_mask[mask_row]
            return key, value, attention_mask
        start, batch = self.start, key.shape[0]
        total = start + key.shape[2]  # the suffix may end before the recorded input does
        prefix_keys = record.keys[layer][:, :, :start]
        prefix_values = record.values[layer][:, :, :start]
        key = torch.cat([prefix_keys.expand(batch, -1, -1, -1).to(key.dtype), key], dim=2)
        value = torch.cat([prefix_values.expand(batch, -1, -1, -1).to(value.dtype), value], dim=2)
        recorded_mask = record.masks[layer]
        if recorded_mask is not None:
            mask = recorded_mask[:, :, start:total, :total]
        else:  # the plain causal mask, offset: query i (position start + i) sees keys ..start + i
            mask = torch.ones(total - start, total, dtype=torch.bool, device=key.device).tril(start)[None, None]
        return key, value, mask


def suffix_arguments(arguments: Mapping[str, torch.Tensor], start: int) -> dict[str, torch.Tensor]:
    """A causal model's keyword arguments for positions `start`.. of a one-row input
    (input_ids, attention_mask, ... [1, tokens]), with their position_ids."""
    suffix = {name: value[:, start:] for name, value in arguments.items()}
    tokens = next(iter(arguments.values())).shape[1]
    device = next(iter(arguments.values())).device
    suffix["position_ids"] = torch.arange(start, tokens, device=device)[None]
    return suffix


GrownRun = Callable[[Mapping[str, torch.Tensor], PrefixKeys, "int | None"], torch.Tensor]


def verified_prefix_reuse(run: GrownRun, arguments: Mapping[str, torch.Tensor]) -> bool:
    """Whether forwards of a suffix with a recorded prefix give the whole input's outputs
    at the suffix's positions. `run(arguments, prefix, edit_from)` runs the model's
    forward with `prefix` active and returns its outputs [rows, tokens, ...]; with
    `edit_from` not None, in a growing batch whose copies of row 0 change positions
    `edit_from`.. of the given input only (its prefix stays row 0's). `arguments`: one
    unpadded row."""
    tokens = int(next(iter(arguments.values())).shape[1])
    if tokens < 2:
        return False
    start = tokens // 2
    try:
        for grow in (False, True):
            recorded = PrefixKeys.recording()
            whole = run(arguments, recorded, start if grow else None)[:, start:].float()
            suffix = run(suffix_arguments(arguments, start), recorded.from_position(start), 0 if grow else None).float()
            if not agree(whole, suffix):
                return False
    except Exception:  # noqa: BLE001 - a model that cannot run a suffix runs every row from the start
        return False
    return True
