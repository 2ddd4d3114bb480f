"""The hook registry: named points inside every layer of a loaded model, readable and
writable per batch row by one call at a time.

Points (L is the 0-based layer; shapes name their axes):

| name          | where                                                           | shape                            |
|---------------|-----------------------------------------------------------------|----------------------------------|
| `resid.pre`   | input of block L (the residual stream before it)                | [batch, pos, d_model]            |
| `attn.in`     | hidden states entering block L's attention module               | [batch, pos, d_model]            |
| `attn.mask`   | additive score mask before the softmax (float32; -inf blocks)   | [batch, 1 or head, query, key]   |
| `attn.q`      | post-rotary queries as the attention function gets them²        | [batch, head, query, head_dim]   |
| `attn.k`      | post-rotary keys as the attention function gets them²           | [batch, kv_head, key, head_dim]  |
| `attn.probs`  | softmax attention probabilities (float32), inside attention¹    | [batch, head, query, key]        |
| `attn.z`      | per-head attention output, before the output projection         | [batch, query, head, head_dim]   |
| `attn.out`    | output of block L's attention output projection                 | [batch, pos, d_model]            |
| `mlp.out`     | output of block L's MLP (its down projection, before residual)  | [batch, pos, d_model]            |
| `resid.post`  | output of block L (the residual stream after it)                | [batch, pos, d_model]            |

¹ With `HookSet.probability_rows` set, only those query rows, read-only (probe.py computes
just them; the layer's output comes from SDPA): [batch, head, rows, key].
² Read-only (a returned value is ignored), in the model's dtype, after any position
embedding the attention module applies (rotary included), `attn.q` before `attn.k` in
each call; keys have the model's key/value heads (fewer than the query heads under
grouped-query attention: query head h reads key head h // (head / kv_head)). With a
prefix (prefix.py) the keys include its recorded keys.

`attn.mask`, `attn.q`, `attn.k`, `attn.probs` and `attn.z` come from the registered attention function (see probe.py), so
the forward never turns to eager attention; the others from module hooks installed once
at load, inert unless a call has activated a HookSet in its context. `attn.z` is taken
at the input of the attention output projection where that input is the attention
function's output itself (checked at load), else inside the attention function.

An `attn.mask` hook sees the mask the layer applies (the model's boolean mask as 0/-inf, its
additive mask, or the causal mask when none is passed) and may return an edited one; the
layers it acts at compute probabilities explicitly (probe.py), the others keep SDPA.

A hook is ``hook(layer, value) -> value | None``: it may read the value, return a
replacement (None keeps it), add batch rows (a growing batch: see methods/layer_stack.py)
or raise StopForward to end the forward once it has what it needs. The active HookSet
lives in a ContextVar, so hooks on the shared model never act on another call's forward.

Two further switches of a HookSet shorten a causal model's forward where verified at
load: `prefix` runs the tail of an input on the keys and values of its recorded start
(prefix.py), and `last_position_only` runs the final MLP on the last position alone.

Cancellation checkpoints: inside `cancellation_checks(check)` (the data plane runs every
method in one), every block's output calls `check()` when the forward passes it and,
when it takes part in a backward, when its gradient arrives, so any forward or backward
of any method stops within one layer of a cancel (check raises).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
import threading
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .prefix import PrefixKeys

RESID_PRE = "resid.pre"
ATTN_IN = "attn.in"
ATTN_MASK = "attn.mask"
ATTN_Q = "attn.q"
ATTN_K = "attn.k"
ATTN_PROBS = "attn.probs"
ATTN_Z = "attn.z"
ATTN_OUT = "attn.out"
MLP_OUT = "mlp.out"
RESID_POST = "resid.post"
POINTS = (RESID_PRE, ATTN_IN, ATTN_MASK, ATTN_Q, ATTN_K, ATTN_PROBS, ATTN_Z, ATTN_OUT, MLP_OUT, RESID_POST)

# How a batch can grow mid-forward (methods/layer_stack.py), decided at load:
GROWTH_AT_PROJECTION = "projection"  # copies join at resid.pre and at attn.z, taken at the output projection
GROWTH_AT_LAYER_INPUT = "layer_input"  # copies join at resid.pre; attn.z inside the attention function
GROWTH_NONE = "none"  # the model cannot grow its batch: every row runs from the start

Hook = Callable[[int, torch.Tensor], "torch.Tensor | None"]
Check = Callable[[], None]

_check: ContextVar[Check | None] = ContextVar("introspect_cancellation_check", default=None)


@contextmanager
def cancellation_checks(check: Check) -> Iterator[None]:
    """Calls `check` at every layer of the forwards and backwards run inside the block
    (after each layer's attention and after the whole layer; in this context only);
    whatever it raises ends them."""
    token = _check.set(check)
    try:
        yield
    finally:
        _check.reset(token)


def _checkpoint(_: nn.Module, args: tuple[Any, ...], output: Any) -> None:
    """Block forward hook: the active check now, and again when the block's output
    gradient arrives in a backward."""
    check = _check.get()
    if check is None:
        return
    check()
    hidden = output if isinstance(output, torch.Tensor) else output[0]
    if isinstance(hidden, torch.Tensor) and hidden.requires_grad:
        hidden.register_hook(lambda _gradient: check())


class StopForward(Exception):
    """Raised by a hook once everything a call needs has been computed; `ModelHooks.active`
    ends the forward there without an error."""


@dataclass(frozen=True)
class HookSet:
    """What one call hooks: point -> hook, each optionally limited to some layers."""

    hooks: Mapping[str, Hook] = field(default_factory=dict)
    layers: Mapping[str, frozenset[int]] = field(default_factory=dict)  # point -> layers; absent: all
    prefix: PrefixKeys | None = None  # recording or serving a causal prefix's keys and values (prefix.py)
    # Only the last position of the final layer's output is read (a causal model's metric at
    # its last position): where verified at load, the final MLP runs on that position alone.
    last_position_only: bool = False
    # attn.probs hooks see only query rows [start, end) ([batch, head, end - start, key]),
    # read-only: only those rows are computed, the layer's output comes from SDPA.
    probability_rows: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        unknown = set(self.hooks) - set(POINTS)
        if unknown:
            raise ValueError(f"unknown hook points {sorted(unknown)}; the points are {POINTS}")

    def wants(self, point: str, layer: int) -> bool:
        """Whether the hook of `point` acts at `layer`."""
        if point not in self.hooks:
            return False
        chosen = self.layers.get(point)
        return chosen is None or layer in chosen

    def apply(self, point: str, layer: int, value: torch.Tensor) -> torch.Tensor:
        """`value` after the hook of `point` (itself when no hook acts there)."""
        if not self.wants(point, layer):
            return value
        replaced = self.hooks[point](layer, value)
        return value if replaced is None else replaced


@dataclass(frozen=True)
class LayerModules:
    """Where the points of every layer sit in one model (found once at load)."""

    blocks: tuple[nn.Module, ...]  # the layer (block) modules, in order
    attention: tuple[nn.Module, ...]  # the module calling the attention function, per layer
    projections: tuple[nn.Module, ...] | None  # attention output projections, when found
    mlps: tuple[nn.Module, ...] | None  # MLP output modules, when found


@dataclass
class _Active:
    registry: ModelHooks
    hookset: HookSet


_active: ContextVar[_Active | Discovery | None] = ContextVar("introspect_hooks", default=None)


class ModelHooks:
    """The hook points of one loaded model."""

    def __init__(self, modules: LayerModules, num_heads: int) -> None:
        self.modules = modules
        self.num_heads = num_heads
        self._layer_of_attention = {id(module): layer for layer, module in enumerate(modules.attention)}
        # How batches grow; attn.z is taken at the projection input when they grow there
        # (verified at load to equal the attention function's output), else in the function.
        self.growth = GROWTH_NONE
        # Whether forwards of a causal input's tail may reuse its prefix's keys and values
        # (prefix.py; verified at load).
        self.prefix_reuse = False
        # Whether the final MLP may run on the last position alone (HookSet.last_position_only;
        # verified at load).
        self.last_position_mlp = False
        self._handles: list[Any] = []

    @property
    def num_layers(self) -> int:
        """Number of layers with attention."""
        return len(self.modules.blocks)

    @property
    def z_at_projection(self) -> bool:
        """Whether attn.z hooks act at the output projection's input."""
        return self.growth == GROWTH_AT_PROJECTION

    @property
    def available(self) -> tuple[str, ...]:
        """The points this model offers (attn.out and mlp.out need their modules found)."""
        missing = {ATTN_OUT} if self.modules.projections is None else set()
        missing |= {MLP_OUT} if self.modules.mlps is None else set()
        return tuple(point for point in POINTS if point not in missing)

    def install(self) -> None:
        """Registers the module hooks (once, at load); they act only inside `active`."""
        for layer, block in enumerate(self.modules.blocks):
            self._pre(block, layer, RESID_PRE)
            self._post(block, layer, RESID_POST)
            # a cancel is noticed after each layer's attention and after the whole block
            self._handles.append(block.register_forward_hook(_checkpoint))
            self._handles.append(self.modules.attention[layer].register_forward_hook(_checkpoint))
            self._pre(self.modules.attention[layer], layer, ATTN_IN)
            if self.modules.projections is not None:
                self._projection_input(self.modules.projections[layer], layer)
                self._post(self.modules.projections[layer], layer, ATTN_OUT)
            if self.modules.mlps is not None:
                if layer == len(self.modules.blocks) - 1:
                    self._last_position_only(self.modules.mlps[layer])  # before mlp.out: edits see every position
                self._post(self.modules.mlps[layer], layer, MLP_OUT)

    def _current(self) -> HookSet | None:
        active = _active.get()
        return active.hookset if isinstance(active, _Active) and active.registry is self else None

    def _pre(self, module: nn.Module, layer: int, point: str) -> None:
        def hook(_: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
            hookset = self._current()
            if hookset is None or not hookset.wants(point, layer):
                return None
            if args:
                return (hookset.apply(point, layer, args[0]), *args[1:]), kwargs
            return args, {**kwargs, "hidden_states": hookset.apply(point, layer, kwargs["hidden_states"])}

        self._handles.append(module.register_forward_pre_hook(hook, with_kwargs=True))

    def _post(self, module: nn.Module, layer: int, point: str) -> None:
        def hook(_: nn.Module, args: tuple[Any, ...], output: Any) -> Any:
            hookset = self._current()
            if hookset is None or not hookset.wants(point, layer):
                return None
            if isinstance(output, torch.Tensor):
                return hookset.apply(point, layer, output)
            return (hookset.apply(point, layer, output[0]), *output[1:])

        self._handles.append(module.register_forward_hook(hook))

    def _last_position_only(self, mlp: nn.Module) -> None:
        """Under HookSet.last_position_only (and when verified at load), the final MLP's
        input [batch, pos, ...] is cut to the last position and its output padded back
        with zeros before it: the other positions are never read."""
        cut_lengths = threading.local()  # per thread: the lengths cut, for the padding

        def active() -> bool:
            hookset = self._current()
            return self.last_position_mlp and hookset is not None and hookset.last_position_only

        def cut(_: nn.Module, args: tuple[Any, ...]) -> Any:
            if not active() or not args:
                return None
            cut_lengths.__dict__.setdefault("stack", []).append(args[0].shape[1])
            return (args[0][:, -1:], *args[1:])

        def pad(_: nn.Module, args: tuple[Any, ...], output: Any) -> Any:
            lengths = cut_lengths.__dict__.get("stack")
            if not active() or not lengths:
                return None
            length = lengths.pop()
            last = output if isinstance(output, torch.Tensor) else output[0]  # [batch, 1, hidden]
            padded = torch.cat([last.new_zeros(last.shape[0], length - 1, *last.shape[2:]), last], dim=1)
            return padded if isinstance(output, torch.Tensor) else (padded, *output[1:])

        self._handles.append(mlp.register_forward_pre_hook(cut))
        self._handles.append(mlp.register_forward_hook(pad))

    def _projection_input(self, projection: nn.Module, layer: int) -> None:
        num_heads = self.num_heads

        def hook(_: nn.Module, args: tuple[Any, ...]) -> Any:
            hookset = self._current()
            if not self.z_at_projection or hookset is None or not hookset.wants(ATTN_Z, layer):
                return None
            inputs = args[0]  # [batch, query, heads * head_dim]
            batch, query, width = inputs.shape
            per_head = hookset.apply(ATTN_Z, layer, inputs.reshape(batch, query, num_heads, width // num_heads))
            return (per_head.reshape(per_head.shape[0], query, width), *args[1:])

        self._handles.append(projection.register_forward_pre_hook(hook))

    def layer_of(self, attention_module: nn.Module) -> int:
        """The layer of a module that calls the attention function."""
        return self._layer_of_attention[id(attention_module)]

    @contextmanager
    def active(self, hookset: HookSet) -> Iterator[HookSet]:
        """Activates `hookset` for forwards of this model run inside the block (in this
        context only). A StopForward raised by a hook ends the block quietly."""
        token = _active.set(_Active(self, hookset))
        try:
            yield hookset
        except StopForward:
            pass
        finally:
            _active.reset(token)


class SharedAttentionModule(Exception):
    """One attention module serves several layers (ALBERT-style parameter sharing)."""


class Discovery:
    """The load-time discovery forward: records the attention modules in the order the
    forward calls them (their layer order), with `hookset` acting at their layers."""

    def __init__(self, hookset: HookSet | None = None) -> None:
        self.modules: list[nn.Module] = []
        self.hookset = hookset or HookSet()

    def see(self, module: nn.Module) -> int:
        """Records `module` and returns its layer; SharedAttentionModule when one module
        serves two layers."""
        if any(seen is module for seen in self.modules):
            raise SharedAttentionModule(type(module).__name__)
        self.modules.append(module)
        return len(self.modules) - 1


@contextmanager
def discovering(discovery: Discovery) -> Iterator[Discovery]:
    """Runs the block with `discovery` active (the load-time forward of one model)."""
    token = _active.set(discovery)
    try:
        yield discovery
    finally:
        _active.reset(token)


def attention_call(module: nn.Module) -> tuple[HookSet, int, bool] | None:
    """For the attention function: the active hook set, the calling module's layer and
    whether attn.z is taken inside the function; None when no hooks are active here."""
    active = _active.get()
    if active is None:
        return None
    if isinstance(active, Discovery):
        return active.hookset, active.see(module), True
    registry = active.registry
    return active.hookset, registry.layer_of(module), not registry.z_at_projection
