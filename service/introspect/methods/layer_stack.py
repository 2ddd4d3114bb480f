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
only and recompute layer L's attention.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager

import torch

from .. import hooks

HeadEdit = Callable[[int, torch.Tensor], torch.Tensor]
"""Edits one layer's per-head attention output [batch, query, heads, head_dim]."""


def growing_hooks(registry: hooks.ModelHooks, copies_at_layer: Mapping[int, int], edit: HeadEdit) -> hooks.HookSet:
    """The hook set of a growing batch: `copies_at_layer[L]` copies of row 0 join at layer
    L, after the rows added at earlier layers, and `edit(layer, z)` edits every layer's
    attn.z exactly once, with all the rows the batch has there (those added at that layer
    included)."""
    growing = {layer: copies for layer, copies in copies_at_layer.items() if copies}
    at_projection = registry.z_at_projection

    def grow(layer: int, hidden: torch.Tensor) -> torch.Tensor:
        return _with_copies_of_row_0(hidden, growing[layer])

    def cut(layer: int, hidden: torch.Tensor) -> torch.Tensor:
        return hidden[: hidden.shape[0] - growing[layer]]

    def z(layer: int, output: torch.Tensor) -> torch.Tensor:
        if at_projection and layer in growing:
            output = _with_copies_of_row_0(output, growing[layer])
        return edit(layer, output)

    points: dict[str, hooks.Hook] = {hooks.RESID_PRE: grow, hooks.ATTN_Z: z}
    layers = {hooks.RESID_PRE: frozenset(growing)}
    if at_projection:
        points[hooks.ATTN_IN] = cut
        layers[hooks.ATTN_IN] = frozenset(growing)
    return hooks.HookSet(points, layers)


@contextmanager
def growing_batch(registry: hooks.ModelHooks, copies_at_layer: Mapping[int, int], edit: HeadEdit) -> Iterator[None]:
    """Inside the block, a forward of a one-row batch grows as `growing_hooks` says."""
    with registry.active(growing_hooks(registry, copies_at_layer, edit)):
        yield


def one_copy_per_layer(registry: hooks.ModelHooks, at_projection: bool) -> hooks.HookSet:
    """The load-time check of growing at the projections: one copy of row 0 per layer,
    head 0 of each copy zeroed at its layer (`at_projection` is the registry's setting
    under test)."""

    def zero_head_0_of_last_row(_layer: int, output: torch.Tensor) -> torch.Tensor:
        edited = output.clone()
        edited[-1, :, 0] = 0
        return edited

    assert registry.z_at_projection == at_projection
    return growing_hooks(registry, dict.fromkeys(range(registry.num_layers), 1), zero_head_0_of_last_row)


def _with_copies_of_row_0(values: torch.Tensor, copies: int) -> torch.Tensor:
    """`values` [batch, ...] followed by `copies` copies of its row 0."""
    return torch.cat([values, values[:1].expand(copies, *values.shape[1:])])
