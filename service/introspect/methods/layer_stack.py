"""A growing batch through the stack of transformer layers, on the hook registry.

Editing heads of layer L cannot change anything before layer L's attention output
projection: the query, key and value projections, the attention probabilities and the
other heads' outputs of layer L are those of the clean input. `growing_batch` runs the
real model's forward on one clean row and adds copies of it at chosen layers; the copies
added at layer L join the batch

* at `resid.pre` of layer L, where they only extend the residual stream: `attn.in` of
  layer L cuts them off again, so the attention module sees the earlier rows alone,
* and at `attn.z` of layer L (taken at the output projection's input), as copies of the
  clean row's per-head outputs, edited there,

so they run the output projection, the rest of layer L and layers L+1..end only. The
masks and rotary position embeddings the model computes once for one row broadcast over
the grown batch. Driving the model's own forward (instead of calling layers by hand)
keeps this architecture-agnostic. Where the registry takes `attn.z` inside the attention
function (the projection could not be verified at load), the copies join at `resid.pre`
only and recompute layer L's attention; where the model cannot grow its batch at all
mid-forward (it reshapes with the batch size it started with, as GPT-BigCode does), every
row runs from the start (`ModelHooks.growth`, decided at load by `verified_growth`).

Activation patching (methods/patching_activation.py) also needs copies that run the whole
of layer L: a patch of the residual stream entering layer L changes layer L's attention.
Such copies (`layer_copies`) join at `resid.pre` of layer L and stay (no cut at
`attn.in`), ahead of that layer's head-edit copies, and further hooks (`edits`) replace
their values at `resid.pre`, `attn.out`, `mlp.out` or `resid.post` once they are in.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import replace

import torch

from .. import hooks
from ..agreement import agree
from ..prefix import PrefixKeys

HeadEdit = Callable[[int, torch.Tensor], torch.Tensor]
"""Edits one layer's per-head attention output [batch, query, heads, head_dim]."""


def growing_hooks(
    registry: hooks.ModelHooks,
    copies_at_layer: Mapping[int, int],
    edit: HeadEdit,
    layer_copies: Mapping[int, int] | None = None,
    edits: Mapping[str, hooks.Hook] | None = None,
) -> hooks.HookSet:
    """The hook set of a growing batch: `copies_at_layer[L]` copies of row 0 join at layer
    L's attention output projection (head edits), after the rows added at earlier layers,
    and `edit(layer, z)` edits every layer's attn.z exactly once, with all the rows the
    batch has there (those added at that layer included).

    `layer_copies[L]` further copies of row 0 join at `resid.pre` of layer L and run the
    whole of layer L (its attention included); at layer L they come before that layer's
    head-edit copies. `edits` (point -> hook, for resid.pre, attn.out, mlp.out and
    resid.post) act at every layer after the batch has grown there, on all its rows."""
    heads = {layer: copies for layer, copies in copies_at_layer.items() if copies}
    whole = {layer: copies for layer, copies in (layer_copies or {}).items() if copies}
    extra = dict(edits or {})
    if registry.growth == hooks.GROWTH_NONE:
        return hooks.HookSet({**extra, hooks.ATTN_Z: edit})
    at_projection = registry.z_at_projection
    joining = {layer: heads.get(layer, 0) + whole.get(layer, 0) for layer in heads.keys() | whole.keys()}
    edit_resid_pre = extra.pop(hooks.RESID_PRE, None)

    def grow(layer: int, hidden: torch.Tensor) -> torch.Tensor:
        if layer in joining:
            hidden = _with_copies_of_row_0(hidden, joining[layer])
        replaced = edit_resid_pre(layer, hidden) if edit_resid_pre is not None else None
        return hidden if replaced is None else replaced

    def cut(layer: int, hidden: torch.Tensor) -> torch.Tensor:
        return hidden[: hidden.shape[0] - heads[layer]]

    def z(layer: int, output: torch.Tensor) -> torch.Tensor:
        if at_projection and layer in heads:
            output = _with_copies_of_row_0(output, heads[layer])
        return edit(layer, output)

    points: dict[str, hooks.Hook] = {**extra, hooks.RESID_PRE: grow, hooks.ATTN_Z: z}
    layers = {} if edit_resid_pre is not None else {hooks.RESID_PRE: frozenset(joining)}
    if at_projection:
        points[hooks.ATTN_IN] = cut
        layers[hooks.ATTN_IN] = frozenset(heads)
    return hooks.HookSet(points, layers)


@contextmanager
def growing_batch(
    registry: hooks.ModelHooks,
    copies_at_layer: Mapping[int, int],
    edit: HeadEdit,
    layer_copies: Mapping[int, int] | None = None,
    edits: Mapping[str, hooks.Hook] | None = None,
    prefix: PrefixKeys | None = None,
    last_position_only: bool = False,
) -> Iterator[int]:
    """Inside the block, a forward grows as `growing_hooks` says; the block gets the
    number of rows the forward must start with: 1, or every row where the model cannot
    grow its batch mid-forward (the edits then see all rows at every layer). `prefix`
    and `last_position_only` are the HookSet switches of the same name."""
    added = sum(copies_at_layer.values()) + sum((layer_copies or {}).values())
    rows = 1 if registry.growth != hooks.GROWTH_NONE else 1 + added
    hookset = replace(growing_hooks(registry, copies_at_layer, edit, layer_copies, edits), prefix=prefix,
                      last_position_only=last_position_only)
    with registry.active(hookset):
        yield rows


def probe_growth(registry: hooks.ModelHooks, from_position: int = 0) -> tuple[dict[int, int], HeadEdit]:
    """The growth the load-time checks run: one copy of row 0 joining at every layer, with
    head 0 of the copy zeroed at its layer, at query positions `from_position`.. (copies
    per layer, and the attn.z edit)."""
    layers = registry.num_layers
    keep = {layer: torch.ones(layers + 1, 1, registry.num_heads, 1) for layer in range(layers)}
    for layer in range(layers):
        keep[layer][layer + 1, 0, 0, 0] = 0.0

    def zero_head_0(layer: int, output: torch.Tensor) -> torch.Tensor:
        factors = keep[layer][: output.shape[0]].to(output)  # [rows, 1, heads, 1]
        if from_position == 0:
            return output * factors
        return torch.cat([output[:, :from_position], output[:, from_position:] * factors], dim=1)

    return dict.fromkeys(range(layers), 1), zero_head_0


def verified_growth(registry: hooks.ModelHooks, run: Callable[[int], torch.Tensor]) -> str:
    """The cheapest way of growing batches that gives exactly what running every row from
    the start gives, on one copy of row 0 per layer with head 0 of that copy zeroed at its
    layer. `run(rows)` runs the model's forward on `rows` copies of one input."""
    copies, zero_head_0 = probe_growth(registry)
    results = {}
    for growth in (hooks.GROWTH_NONE, hooks.GROWTH_AT_PROJECTION, hooks.GROWTH_AT_LAYER_INPUT):
        if growth == hooks.GROWTH_AT_PROJECTION and registry.modules.projections is None:
            continue
        registry.growth = growth
        try:
            with growing_batch(registry, copies, zero_head_0) as rows:
                results[growth] = run(rows).float()
        except Exception:  # noqa: BLE001 - a model that cannot grow this way is served another way
            continue
    registry.growth = hooks.GROWTH_NONE
    reference = results[hooks.GROWTH_NONE]
    for growth in (hooks.GROWTH_AT_PROJECTION, hooks.GROWTH_AT_LAYER_INPUT):
        grown = results.get(growth)
        if grown is not None and agree(reference, grown):
            return growth
    return hooks.GROWTH_NONE


def _with_copies_of_row_0(values: torch.Tensor, copies: int) -> torch.Tensor:
    """`values` [batch, ...] followed by `copies` copies of its row 0."""
    return torch.cat([values, values[:1].expand(copies, *values.shape[1:])])
