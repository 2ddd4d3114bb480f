"""The stack of transformer layers of a loaded model, and a growing batch through it.

Editing heads of layer L cannot change anything before layer L's attention output
projection: the query, key and value projections, the attention probabilities and the
other heads' outputs of layer L are those of the clean input. `growing_batch` runs the
real model's forward on one clean row and adds copies of it at chosen layers; the copies
added at layer L join the batch

* at the input of layer L, where they only extend the residual stream: the attention
  module of layer L gets the earlier rows alone (its hidden states input is cut back),
* and at the input of layer L's attention output projection, as copies of the clean
  row's per-head outputs [1, tokens, heads * head_dim], edited there,

so they run the output projection, the rest of layer L and layers L+1..end only. The
masks and rotary position embeddings the model computes once for one row broadcast
over the grown batch. Driving the model's own forward (instead of calling layers by
hand) keeps all of this architecture-agnostic.

The projection of each layer is found, and the scheme checked, by short discovery
forwards (see output_projections); where that fails, the copies join at the layer input
only and recompute layer L's attention.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

import torch
from torch import nn

from .. import probe
from ..models import CAUSAL_LM, LoadedModel

log = logging.getLogger(__name__)

_LAYERS: weakref.WeakKeyDictionary[nn.Module, tuple[nn.Module, ...]] = weakref.WeakKeyDictionary()
_PROJECTIONS: weakref.WeakKeyDictionary[nn.Module, tuple[nn.Module, ...] | None] = weakref.WeakKeyDictionary()
# The call whose hooks are on the shared model in this context; hooks of other calls stay inert.
_active_call: ContextVar[object | None] = ContextVar("introspect_layer_stack", default=None)

Hook = Callable[..., Any]


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


def _attention_modules(model: LoadedModel) -> tuple[nn.Module, ...]:
    """The module the probe sees calling the attention function, per layer (BertSelfAttention,
    GPT2Attention, LlamaAttention, ...)."""
    layer_of = model.layer_of_module
    return tuple(sorted((module for module in model.model.modules() if id(module) in layer_of),
                        key=lambda module: layer_of[id(module)]))


def output_projections(model: LoadedModel) -> tuple[nn.Module, ...] | None:
    """The attention output projection of every layer, in layer order, or None where they
    cannot be found or growing the batch at them does not work. Cached per model.

    Found by a short forward: the probe records the per-head attention output
    [batch, query, heads, head_dim] of every layer, and the projection of layer L is the
    one leaf module with weights inside layer L's module whose first argument is that
    output flattened to [batch, query, heads * head_dim] in place (same storage), as
    BertSelfOutput.dense, GPT2Attention.c_proj and LlamaAttention.o_proj are. Then one
    forward grown at the projections must match one grown at the layer inputs.
    """
    if model.model in _PROJECTIONS:
        return _PROJECTIONS[model.model]
    found = _find_projections(model)
    if found is not None and not _projection_growth_works(model, found):
        found = None
    _PROJECTIONS[model.model] = found
    return found


def _find_projections(model: LoadedModel) -> tuple[nn.Module, ...] | None:
    layers = layer_modules(model)
    outputs: dict[int, torch.Tensor] = {}  # kept alive, so that no other tensor reuses their storage
    receivers: list[list[nn.Module]] = [[] for _ in layers]

    def record(layer: int, output: torch.Tensor) -> torch.Tensor:
        outputs[layer] = output
        return output

    def observe(layer: int, module: nn.Module, args: tuple[Any, ...]) -> None:
        output = outputs.get(layer)
        if output is None or not args or not isinstance(args[0], torch.Tensor):
            return
        batch, query, heads, head_dim = output.shape
        if args[0].data_ptr() == output.data_ptr() and args[0].shape == (batch, query, heads * head_dim):
            receivers[layer].append(module)

    hooks = [
        (module, lambda module, args, layer=layer: observe(layer, module, args), False)
        for layer, layer_module in enumerate(layers)
        for module in layer_module.modules()
        if next(module.children(), None) is None and next(module.parameters(recurse=False), None) is not None
    ]
    with _hooked(hooks), probe.probing(model.probe_session(edit_output=record)):
        _short_forward(model)
    projections = tuple(found[0] for found in receivers if len(found) == 1)
    if len(projections) != len(layers) or len({id(module) for module in projections}) != len(layers):
        return None
    return projections


def _projection_growth_works(model: LoadedModel, projections: Sequence[nn.Module]) -> bool:
    """Whether a short forward grown at `projections` (one copy per layer, head 0 of the
    copy zeroed at its layer) runs and gives what growing at the layer inputs gives."""

    def zero_head_0_of_last_row(_layer: int, output: torch.Tensor) -> torch.Tensor:
        edited = output.clone()
        edited[-1, :, 0] = 0
        return edited

    one_per_layer = dict.fromkeys(range(len(projections)), 1)
    results = []
    for candidate in (projections, None):
        try:
            with _growing(model, candidate, one_per_layer, zero_head_0_of_last_row):
                results.append(_short_forward(model).float())
        except Exception as error:  # noqa: BLE001 - any failure means: grow at the layer inputs
            log.info("model %s: growing the batch at the attention output projections fails (%r)", model.name, error)
            return False
    grown, reference = results
    tolerance = torch.finfo(model.model.dtype).eps ** 0.5 * max(1.0, float(reference.abs().max()))
    if grown.shape == reference.shape and bool(torch.allclose(grown, reference, rtol=0, atol=tolerance)):
        return True
    log.info("model %s: growing the batch at the attention output projections changes the results", model.name)
    return False


def _short_forward(model: LoadedModel) -> torch.Tensor:
    """The first output (logits or last hidden states) of the model on two padding tokens."""
    ids = torch.full((1, 2), model.tokenizer.pad_token_id or 0, device=model.device)
    options = {"use_cache": False} if model.description.kind == CAUSAL_LM else {}
    with torch.inference_mode():
        return model.model(input_ids=ids, attention_mask=torch.ones_like(ids), **options)[0]


@contextmanager
def growing_batch(model: LoadedModel, copies_at_layer: Mapping[int, int], edit: probe.OutputEditor) -> Iterator[None]:
    """Inside the block, a forward of a one-row batch grows by `copies_at_layer[L]` copies
    of its row 0 at layer L, appended after the rows added at earlier layers, and
    `edit(layer, output)` edits the per-head attention output [batch, query, heads,
    head_dim] of every layer exactly once, with all the rows the batch has there (those
    added at that layer included). The block runs under a probe session with that edit;
    hooks are removed when it exits and act only on forwards run in this context.
    """
    with _growing(model, output_projections(model), copies_at_layer, edit):
        yield


@contextmanager
def _growing(
    model: LoadedModel,
    projections: Sequence[nn.Module] | None,
    copies_at_layer: Mapping[int, int],
    edit: probe.OutputEditor,
) -> Iterator[None]:
    """growing_batch, with the copies joining at `projections` or, where None, at the layer inputs only."""
    growing = {layer: copies for layer, copies in copies_at_layer.items() if copies}
    num_heads = model.description.num_heads
    layers, attention = layer_modules(model), _attention_modules(model)

    def grow_layer_input(layer: int, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        return _map_hidden_states(args, kwargs, lambda hidden: _with_copies_of_row_0(hidden, growing[layer]))

    def cut_attention_input(layer: int, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        return _map_hidden_states(args, kwargs, lambda hidden: hidden[: hidden.shape[0] - growing[layer]])

    def grow_projection_input(layer: int, args: tuple[Any, ...]) -> tuple[Any, ...]:
        inputs = args[0]
        batch, tokens, width = inputs.shape
        per_head = _with_copies_of_row_0(inputs.reshape(batch, tokens, num_heads, -1), growing[layer])
        return (edit(layer, per_head).reshape(per_head.shape[0], tokens, width), *args[1:])

    hooks: list[tuple[nn.Module, Hook, bool]] = []
    for layer in growing:
        hooks.append((layers[layer], lambda _, args, kwargs, layer=layer: grow_layer_input(layer, args, kwargs), True))
        if projections is not None:
            hooks += [
                (attention[layer], lambda _, args, kwargs, layer=layer: cut_attention_input(layer, args, kwargs), True),
                (projections[layer], lambda _, args, layer=layer: grow_projection_input(layer, args), False),
            ]
    edited_at_projection = frozenset(growing) if projections is not None else frozenset()

    def probe_edit(layer: int, output: torch.Tensor) -> torch.Tensor:
        return output if layer in edited_at_projection else edit(layer, output)

    with _hooked(hooks), probe.probing(model.probe_session(edit_output=probe_edit)):
        yield


@contextmanager
def _hooked(hooks: Sequence[tuple[nn.Module, Hook, bool]]) -> Iterator[None]:
    """Forward pre-hooks (module, hook, with_kwargs) registered for the block, acting only
    on forwards run in this context."""
    marker = object()

    def scoped(hook: Hook) -> Hook:
        return lambda *arguments: hook(*arguments) if _active_call.get() is marker else None

    handles = [module.register_forward_pre_hook(scoped(hook), with_kwargs=kwargs) for module, hook, kwargs in hooks]
    token = _active_call.set(marker)
    try:
        yield
    finally:
        _active_call.reset(token)
        for handle in handles:
            handle.remove()


def _map_hidden_states(
    args: tuple[Any, ...], kwargs: dict[str, Any], change: Callable[[torch.Tensor], torch.Tensor]
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """The arguments of a layer or attention module with its hidden states (first
    positional argument or the `hidden_states` keyword) changed."""
    if args:
        return (change(args[0]), *args[1:]), kwargs
    return args, {**kwargs, "hidden_states": change(kwargs["hidden_states"])}


def _with_copies_of_row_0(values: torch.Tensor, copies: int) -> torch.Tensor:
    """`values` [batch, ...] followed by `copies` copies of its row 0."""
    return torch.cat([values, values[:1].expand(copies, *values.shape[1:])])
