"""The stack of transformer layers of a loaded model, and a growing batch through it.

A head ablation at layer L cannot change anything before layer L. `growing_batch` runs
the real model's forward on one clean row and, at the input of chosen layers, appends
copies of the clean row's hidden states [1, tokens, hidden] to the batch: the rows added
at layer L share the clean computation of layers 0..L-1 and only run layers L..end.
Driving the model's own forward (instead of calling layers by hand) keeps what it
computes around the layers -- masks, rotary position embeddings, final norm and output
head -- architecture-agnostic; those are computed for one row and broadcast.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

import torch
from torch import nn

from ..models import LoadedModel

_LAYERS: weakref.WeakKeyDictionary[nn.Module, tuple[nn.Module, ...]] = weakref.WeakKeyDictionary()
# The growth of the call running in this context; hooks of other calls stay inert.
_active_growth: ContextVar[object | None] = ContextVar("introspect_growth", default=None)


class LayerStackError(RuntimeError):
    """The model's attention modules do not sit one per element of a layer ModuleList."""


def layer_modules(model: LoadedModel) -> tuple[nn.Module, ...]:
    """The transformer layer (block) module of every attention layer, in layer order.

    Each attention module the probe discovered lies inside one element of an
    nn.ModuleList (BertLayer, GPT2Block, LlamaDecoderLayer, ...); that element is its
    layer. Cached per model.
    """
    cached = _LAYERS.get(model.model)
    if cached is not None:
        return cached
    names = {id(module): name for name, module in model.model.named_modules()}
    layers: list[nn.Module | None] = [None] * len(set(model.layer_of_module.values()))
    for module_id, layer in model.layer_of_module.items():
        layers[layer] = _enclosing_list_element(model.model, names[module_id])
    if any(layer is None for layer in layers) or len({id(layer) for layer in layers}) != len(layers):
        raise LayerStackError(f"{type(model.model).__name__}: cannot find one layer module per attention layer")
    found = tuple(layer for layer in layers if layer is not None)
    _LAYERS[model.model] = found
    return found


def _enclosing_list_element(root: nn.Module, name: str) -> nn.Module | None:
    """The innermost strict ancestor of submodule `name` that is an element of an nn.ModuleList."""
    parts = name.split(".")
    for end in range(len(parts) - 2, 0, -1):
        if parts[end].isdigit() and isinstance(root.get_submodule(".".join(parts[:end])), nn.ModuleList):
            return root.get_submodule(".".join(parts[: end + 1]))
    return None


def _grow_hidden_states(
    args: tuple[Any, ...], kwargs: dict[str, Any], copies: int
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """Appends `copies` copies of row 0 of the layer's hidden states (first positional
    argument or the `hidden_states` keyword)."""
    if args:
        hidden = args[0]
        grown = torch.cat([hidden, hidden[:1].expand(copies, *hidden.shape[1:])])
        return (grown, *args[1:]), kwargs
    hidden = kwargs["hidden_states"]
    grown = torch.cat([hidden, hidden[:1].expand(copies, *hidden.shape[1:])])
    return args, {**kwargs, "hidden_states": grown}


@contextmanager
def growing_batch(
    model: LoadedModel, copies_at_layer: Mapping[int, int], on_layer: Callable[[int], None] | None = None
) -> Iterator[None]:
    """Inside the block, a forward of a one-row batch grows by `copies_at_layer[L]` copies
    of its row 0 at the input of layer L. Rows are appended in layer order, after the
    rows added at earlier layers. `on_layer(L)` is called before every layer (e.g. to
    check for cancellation). The hooks are removed when the block exits and act only
    on forwards run in this context.
    """
    marker = object()

    def pre_hook(layer: int, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if _active_growth.get() is not marker:
            return None
        if on_layer is not None:
            on_layer(layer)
        copies = copies_at_layer.get(layer, 0)
        return _grow_hidden_states(args, kwargs, copies) if copies else None

    handles = [
        module.register_forward_pre_hook(
            lambda module, args, kwargs, layer=layer: pre_hook(layer, module, args, kwargs), with_kwargs=True
        )
        for layer, module in enumerate(layer_modules(model))
    ]
    token = _active_growth.set(marker)
    try:
        yield
    finally:
        _active_growth.reset(token)
        for handle in handles:
            handle.remove()
