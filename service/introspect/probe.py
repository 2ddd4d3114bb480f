"""One hook point inside attention, for every architecture that uses transformers'
attention interface.

Models are loaded with ``attn_implementation="introspect"``. Without an active probe
session the function is plain SDPA. A session, scoped to one call with `probing()`, can

* receive the softmax probabilities [batch, heads, query, key] of chosen layers (computed
  in float32 from the post-rotary query and key, only for those layers), and
* edit the per-head attention output [batch, query, heads, head_dim] before the output
  projection (zero, gate or replace single heads per batch row).

The session lives in a ContextVar, so hook state on the shared model is never visible to
another request.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

ATTENTION_IMPLEMENTATION = "introspect"

ProbabilitiesCallback = Callable[[int, torch.Tensor], None]
"""Called with (layer, probabilities [batch, heads, query, key] float32)."""
OutputEditor = Callable[[int, torch.Tensor], torch.Tensor]
"""Called with (layer, output [batch, query, heads, head_dim]); returns the edited output."""


class StopForward(Exception):
    """Raised inside a forward pass once everything a request needs has been computed."""


@dataclass
class ProbeSession:
    """What one call wants from the attention layers of one forward pass."""

    layer_of_module: dict[int, int]
    capture_layers: frozenset[int] = frozenset()
    on_probabilities: ProbabilitiesCallback | None = None
    edit_output: OutputEditor | None = None
    stop_after_layer: int | None = None
    discovered_modules: list[torch.nn.Module] | None = field(default=None, repr=False)

    def layer_index(self, module: torch.nn.Module) -> int:
        """The 0-based layer of an attention module (discovered once at model load)."""
        if self.discovered_modules is not None:
            if not any(seen is module for seen in self.discovered_modules):
                self.discovered_modules.append(module)
            return next(i for i, seen in enumerate(self.discovered_modules) if seen is module)
        return self.layer_of_module[id(module)]


_active_session: ContextVar[ProbeSession | None] = ContextVar("introspect_probe", default=None)


@contextmanager
def probing(session: ProbeSession) -> Iterator[ProbeSession]:
    """Activates `session` for forward passes run inside the block, and always removes it."""
    token = _active_session.set(session)
    try:
        yield session
    finally:
        _active_session.reset(token)


def attention_probabilities(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None,
    is_causal: bool | None = None,
) -> torch.Tensor:
    """softmax(q k^T * scaling + mask) in float32, [batch, heads, query, key].

    Matches transformers' eager attention: boolean masks (True = attend) or additive
    float masks; without a mask, a causal module gets the upper-left causal mask SDPA
    would apply. Rows with no key to attend to are zeros, not NaN.
    """
    key = repeat_kv(key, query.shape[1] // key.shape[1])
    scale = scaling if scaling is not None else 1.0 / math.sqrt(query.shape[-1])
    scores = torch.matmul(query.float(), key.float().transpose(-1, -2)) * scale
    query_length, key_length = scores.shape[-2], scores.shape[-1]
    if attention_mask is not None:
        mask = attention_mask[:, :, :, :key_length]
        if mask.dtype == torch.bool:
            scores = scores.masked_fill(~mask, float("-inf"))
        else:
            scores = scores + mask.float()
    else:
        causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
        if causal and query_length > 1:
            allowed = torch.ones(query_length, key_length, dtype=torch.bool, device=scores.device).tril()
            scores = scores.masked_fill(~allowed, float("-inf"))
    probabilities = torch.softmax(scores, dim=-1)
    return torch.nan_to_num(probabilities, nan=0.0)


def introspect_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: object,
) -> tuple[torch.Tensor, None]:
    """The registered attention function: SDPA, plus whatever the active session asks."""
    session = _active_session.get()
    if session is None:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    layer = session.layer_index(module)
    if layer in session.capture_layers and session.on_probabilities is not None:
        is_causal = kwargs.get("is_causal")
        probabilities = attention_probabilities(
            module, query, key, attention_mask, scaling, is_causal if isinstance(is_causal, bool) else None
        )
        session.on_probabilities(layer, probabilities)
        value = repeat_kv(value, query.shape[1] // value.shape[1])
        # [batch, heads, query, head_dim] -> [batch, query, heads, head_dim], as SDPA returns
        output = torch.matmul(probabilities.to(value.dtype), value).transpose(1, 2).contiguous()
    else:
        output, _ = sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    if session.edit_output is not None:
        output = session.edit_output(layer, output)
    if session.stop_after_layer is not None and layer >= session.stop_after_layer:
        raise StopForward()
    return output, None


def register() -> None:
    """Registers the attention and mask functions under ATTENTION_IMPLEMENTATION (idempotent)."""
    AttentionInterface.register(ATTENTION_IMPLEMENTATION, introspect_attention)
    # Without a mask function for the custom name, padded batches get wrong masks.
    AttentionMaskInterface.register(ATTENTION_IMPLEMENTATION, sdpa_mask)


register()
