"""The attention function every served model runs, registered with transformers'
attention interface as "introspect".

It is exact against the model's own eager attention, for every keyword the attention
interface passes that changes the result:

* masks: boolean (True attends) or additive float, via the mask interface (a mask
  function is registered under the same name: without it padded batches get wrong
  masks); without a mask a causal module gets the upper-left causal mask;
* grouped-query heads (key/value heads repeated over their query heads);
* sliding windows (they arrive in the mask);
* attention sinks (`s_aux`, gpt-oss): a learned logit per head appended as an extra key
  column before the softmax and dropped after it, so rows sum to less than 1;
* logit softcapping (`softcap`, Gemma 2): scores -> softcap * tanh(scores / softcap),
  before the mask;
* additive position biases (`position_bias`, MPNet- and MPT-style), added to the scores.

Without hooks, and without sinks or softcapping, the output comes from SDPA. When a call
reads or writes `attn.probs` or edits `attn.mask` at a layer (see hooks.py), or the model
needs sinks or softcapping,
probabilities are computed in float32 from the post-rotary query and key and the output
is probabilities x values, as eager attention computes it. `attn.z` hooks act on the
output here unless the registry takes them at the output projection. `attn.q` and `attn.k`
hooks read the query and key this function receives (post-rotary), before anything else.
"""

from __future__ import annotations

import math

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from . import hooks

ATTENTION_IMPLEMENTATION = "introspect"


def _layer_mask(
    module: torch.nn.Module,
    attention_mask: torch.Tensor | None,
    query_length: int,
    key_length: int,
    device: torch.device,
    is_causal: bool | None,
    rows: tuple[int, int] | None = None,
) -> torch.Tensor | None:
    """The mask a layer applies: the model's (boolean, True attends, or additive float)
    cut to the keys, else the upper-left causal mask [query, key] bool of a causal
    module; None when nothing is masked. With `rows` (start, end), only those query rows
    (a causal mask is built for them alone)."""
    start, end = rows if rows is not None else (0, query_length)
    if attention_mask is not None:
        mask = attention_mask[:, :, :, :key_length]
        return mask[:, :, start:end] if mask.shape[-2] > 1 else mask
    causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    if causal and query_length > 1:
        # upper-left causal: query i attends keys j <= i; [end - start, key] bool
        positions = torch.arange(start, end, device=device)[:, None]
        return torch.arange(key_length, device=device)[None, :] <= positions
    return None


def _masked(scores: torch.Tensor, mask: torch.Tensor | None, in_place: bool = False) -> torch.Tensor:
    """Scores with a `_layer_mask` applied: -inf where a boolean mask is False, plus an
    additive mask; `in_place` writes into `scores` (a tensor the caller owns)."""
    if mask is None:
        return scores
    if mask.dtype == torch.bool:
        return scores.masked_fill_(~mask, float("-inf")) if in_place else scores.masked_fill(~mask, float("-inf"))
    return scores.add_(mask.float()) if in_place else scores + mask.float()


def _zero_unattended_rows(probabilities: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """`probabilities` with the rows that had no key to attend to (NaN after the
    softmax) set to 0, in place. Only a mask blocking a whole row makes one, so the mask
    [batch, 1 or heads, rows, key] is searched, not the probabilities."""
    if mask is None:
        return probabilities
    blocked = ~mask.any(dim=-1, keepdim=True) if mask.dtype == torch.bool else torch.isneginf(mask).all(dim=-1, keepdim=True)
    return probabilities.masked_fill_(blocked, 0.0) if bool(blocked.any()) else probabilities


def additive_mask(
    module: torch.nn.Module,
    attention_mask: torch.Tensor | None,
    batch: int,
    query_length: int,
    key_length: int,
    device: torch.device,
    is_causal: bool | None = None,
) -> torch.Tensor:
    """The mask a layer applies as an additive float32 mask [batch, 1 or heads, query,
    key]: 0 attends, -inf blocks (an additive mask as the model passes it)."""
    mask = _layer_mask(module, attention_mask, query_length, key_length, device, is_causal)
    heads = 1 if mask is None or mask.dim() < 4 else mask.shape[1]
    return _masked(torch.zeros(batch, heads, query_length, key_length, device=device), mask)


def attention_probabilities(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None,
    is_causal: bool | None = None,
    softcap: float | None = None,
    sinks: torch.Tensor | None = None,
    position_bias: torch.Tensor | None = None,
    rows: tuple[int, int] | None = None,
) -> torch.Tensor:
    """Eager attention's probabilities in float32, [batch, heads, query, key], or with
    `rows` (start, end) only those query rows, [batch, heads, end - start, key], computed
    alone (memory linear in the rows).

    query [batch, heads, query, head_dim]; key [batch, kv_heads, key, head_dim];
    attention_mask as the model passes it, or as `additive_mask` gives it; sinks [heads]
    (one logit per head). Rows with no key to attend to (and no sink) are zeros, not NaN.
    """
    full_query_length = query.shape[2]
    if rows is not None:
        query = query[:, :, rows[0]:rows[1]]  # [batch, heads, rows, head_dim]
        if position_bias is not None and position_bias.shape[-2] > 1:
            position_bias = position_bias[..., rows[0]:rows[1], :]
    key = repeat_kv(key, query.shape[1] // key.shape[1])
    scale = scaling if scaling is not None else 1.0 / math.sqrt(query.shape[-1])
    scores = torch.matmul(query.float(), key.float().transpose(-1, -2)).mul_(scale)
    if softcap is not None:
        scores = torch.tanh(scores / softcap) * softcap
    if position_bias is not None:
        scores = scores + position_bias[..., : scores.shape[-1]].float()
    query_length, key_length = scores.shape[-2], scores.shape[-1]
    mask = _layer_mask(module, attention_mask, full_query_length, key_length, scores.device, is_causal, rows)
    scores = _masked(scores, mask, in_place=True)
    if sinks is not None:  # a finite sink logit in every row: no row is left with nothing to attend
        sink_column = sinks.float().reshape(1, -1, 1, 1).expand(scores.shape[0], -1, query_length, 1)
        with_sinks = torch.cat([scores, sink_column], dim=-1)
        return torch.softmax(with_sinks - with_sinks.amax(dim=-1, keepdim=True), dim=-1)[..., :-1]
    probabilities = torch.softmax(scores, dim=-1)
    if position_bias is not None:  # a bias may block keys too
        return torch.nan_to_num(probabilities, nan=0.0)
    return _zero_unattended_rows(probabilities, mask)


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
    """The registered attention function: output [batch, query, heads, head_dim]."""
    call = hooks.attention_call(module)
    softcap = kwargs.get("softcap")
    sinks = kwargs.get("s_aux")
    position_bias = kwargs.get("position_bias")
    hookset, layer, z_here = call if call is not None else (None, -1, False)
    if hookset is not None and hookset.prefix is not None:
        key, value, attention_mask = hookset.prefix.attend(layer, key, value, attention_mask,
                                                           position_bias is not None)
    if hookset is not None:  # read-only points: the post-rotary query and key as this function gets them
        if hookset.wants(hooks.ATTN_Q, layer):
            hookset.apply(hooks.ATTN_Q, layer, query)
        if hookset.wants(hooks.ATTN_K, layer):
            hookset.apply(hooks.ATTN_K, layer, key)
    reads_probabilities = hookset is not None and hookset.wants(hooks.ATTN_PROBS, layer)
    edits_mask = hookset is not None and hookset.wants(hooks.ATTN_MASK, layer)
    is_causal = kwargs.get("is_causal")
    causal = is_causal if isinstance(is_causal, bool) else None
    extras = {
        "softcap": softcap if isinstance(softcap, (int, float)) else None,
        "sinks": sinks if isinstance(sinks, torch.Tensor) else None,
        "position_bias": position_bias if isinstance(position_bias, torch.Tensor) else None,
    }
    if edits_mask:
        assert hookset is not None
        mask = additive_mask(module, attention_mask, query.shape[0], query.shape[2], key.shape[2], query.device,
                             causal)  # [batch, 1 or heads, query, key]
        attention_mask = hookset.apply(hooks.ATTN_MASK, layer, mask)
    if reads_probabilities and hookset is not None and hookset.probability_rows is not None:
        # read-only rows [start, end): [batch, heads, rows, key], the output as if unread
        rows = attention_probabilities(module, query, key, attention_mask, scaling, causal,
                                       rows=hookset.probability_rows, **extras)  # type: ignore[arg-type]
        hookset.apply(hooks.ATTN_PROBS, layer, rows)
        del rows
        reads_probabilities = False
    if reads_probabilities or edits_mask or softcap is not None or sinks is not None:
        probabilities = attention_probabilities(module, query, key, attention_mask, scaling, causal,
                                                **extras)  # type: ignore[arg-type]
        if reads_probabilities:
            assert hookset is not None
            probabilities = hookset.apply(hooks.ATTN_PROBS, layer, probabilities)
        value = repeat_kv(value, query.shape[1] // value.shape[1])
        # [batch, heads, query, head_dim] -> [batch, query, heads, head_dim], as SDPA returns
        output = torch.matmul(probabilities.to(value.dtype), value).transpose(1, 2).contiguous()
    else:
        output, _ = sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    if hookset is not None and z_here:
        output = hookset.apply(hooks.ATTN_Z, layer, output)
    return output, None


def register() -> None:
    """Registers the attention and mask functions under ATTENTION_IMPLEMENTATION (idempotent)."""
    AttentionInterface.register(ATTENTION_IMPLEMENTATION, introspect_attention)
    # Without a mask function for the custom name, padded batches get wrong masks.
    AttentionMaskInterface.register(ATTENTION_IMPLEMENTATION, sdpa_mask)


register()
