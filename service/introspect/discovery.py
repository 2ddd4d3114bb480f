"""What a model's forward looks like from inside, found once at load by short forwards,
and the proof that the introspect attention function serves it exactly.

* Attention modules and their layers: the order in which a forward calls the attention
  function. The block of each layer: the element of an nn.ModuleList enclosing its
  attention module (BertLayer, GPT2Block, LlamaDecoderLayer, ...).
* The attention output projection of each layer: the one leaf module with weights inside
  the block whose first argument is the attention function's output flattened to
  [batch, query, heads * head_dim] in place (same storage), as BertSelfOutput.dense,
  GPT2Attention.c_proj and LlamaAttention.o_proj are. Then attn.z hooks (and growing
  batches) act at its input, which must give what acting inside the function gives.
* The MLP output of each layer: a child of the block called mlp / feed_forward / ffn /
  block_sparse_moe, else the block's leaf linear map from the intermediate size back to
  the hidden size (BertOutput.dense).
* The final norm: the module outside the blocks whose first argument is the last block's
  output (same storage); with the output embeddings it turns the residual stream into
  logits, checked against the model's own logits (the logit lens needs it exact).
* Parity: on a padded batch of two inputs, the model's outputs without hooks and with
  every layer's probabilities computed, and those probabilities, must equal the model's
  own eager attention (`output_attentions=True`); a model that differs is refused.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from transformers import PreTrainedModel

from . import hooks
from .agreement import agree
from .kinds import ModelKind
from .prefix import PrefixKeys, verified_prefix_reuse

log = logging.getLogger(__name__)

_MLP_NAMES = ("mlp", "feed_forward", "ffn", "block_sparse_moe", "moe")
# Largest difference from eager accepted at load, relative to the largest reference value.
PARITY_TOLERANCE = {torch.float32: 1e-4, torch.float16: 3e-2, torch.bfloat16: 6e-2}


class DiscoveryError(Exception):
    """The model's forward does not have the shape introspect needs; the message says why."""


@dataclass(frozen=True)
class Unembedding:
    """The residual stream -> next-token logits: final norm, then the output embeddings."""

    final_norm: nn.Module | None
    head: nn.Module
    scale: float = 1.0  # logits multiplied by it (Cohere's logit_scale, 1 / Granite's logits_scaling)
    softcap: float | None = None  # final logit softcapping (Gemma 2): softcap * tanh(logits / softcap)

    def __call__(self, residual: torch.Tensor) -> torch.Tensor:
        """Logits [..., vocab] of residual stream states [..., d_model]."""
        normed = residual if self.final_norm is None else self.final_norm(residual)
        logits = self.head(normed)
        if self.scale != 1.0:
            logits = logits * self.scale
        return logits if self.softcap is None else torch.tanh(logits / self.softcap) * self.softcap


def probe_inputs(model: PreTrainedModel, pad_token_id: int, vocab_size: int) -> dict[str, torch.Tensor]:
    """A right-padded batch of two inputs (7 and 4 tokens) for load-time forwards."""
    lengths = (7, 4)
    ids = torch.full((2, max(lengths)), pad_token_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, length in enumerate(lengths):
        ids[row, :length] = (torch.arange(length) * 7 + 3 + row) % max(vocab_size, 1)
        mask[row, :length] = 1
    return {"input_ids": ids.to(model.device), "attention_mask": mask.to(model.device)}


def probe_images(model: PreTrainedModel, process: Callable[[np.ndarray], np.ndarray]) -> dict[str, torch.Tensor]:
    """A batch of two different processed images for load-time forwards (`process`: the
    model's image processor, pixels [height, width, 3] uint8 -> [3, height, width])."""
    generator = np.random.default_rng(0)
    images = [generator.integers(0, 256, size=(48 + 16 * row, 64, 3), dtype=np.uint8) for row in range(2)]
    pixels = torch.from_numpy(np.stack([process(image) for image in images]))
    return {"pixel_values": pixels.to(device=model.device, dtype=model.dtype)}


def layer_modules(model: PreTrainedModel, kind: ModelKind, inputs: dict[str, torch.Tensor],
                  intermediate_size: int | None, hidden_size: int) -> hooks.LayerModules:
    """Finds the attention modules, blocks, output projections and MLPs of every layer."""
    single = {name: value[:1] for name, value in inputs.items()}
    z_outputs: dict[int, torch.Tensor] = {}  # kept alive: no other tensor may reuse their storage
    discovery = hooks.Discovery(hooks.HookSet({hooks.ATTN_Z: lambda layer, z: z_outputs.__setitem__(layer, z)}))
    try:
        with hooks.discovering(discovery), torch.inference_mode():
            kind.outputs(model, single)
    except hooks.SharedAttentionModule as shared:
        raise DiscoveryError(f"one attention module ({shared}) serves several layers (parameter sharing, "
                             "as in ALBERT): its layers cannot be told apart") from None
    attention = tuple(discovery.modules)
    if not attention:
        raise DiscoveryError(f"{type(model).__name__} does not use transformers' attention interface, so its "
                             "attention cannot be read or edited exactly")
    names = {id(module): name for name, module in model.named_modules()}
    blocks = [_enclosing_list_element(model, names[id(module)]) for module in attention]
    if any(block is None for block in blocks) or len({id(block) for block in blocks}) != len(blocks):
        raise DiscoveryError("its attention modules do not sit one per element of a layer list")
    found_blocks = tuple(block for block in blocks if block is not None)
    projections = _projections(model, kind, single, found_blocks)
    mlps = _mlps(found_blocks, intermediate_size, hidden_size)
    return hooks.LayerModules(blocks=found_blocks, attention=attention, projections=projections, mlps=mlps)


def _enclosing_list_element(root: nn.Module, name: str) -> nn.Module | None:
    """The innermost strict ancestor of submodule `name` that is an element of an nn.ModuleList."""
    parts = name.split(".")
    for end in range(len(parts) - 2, 0, -1):
        if parts[end].isdigit() and isinstance(root.get_submodule(".".join(parts[:end])), nn.ModuleList):
            return root.get_submodule(".".join(parts[: end + 1]))
    return None


def _is_weighted_leaf(module: nn.Module) -> bool:
    return next(module.children(), None) is None and next(module.parameters(recurse=False), None) is not None


@contextmanager
def _temporary_hooks(register: Sequence[Callable[[], Any]]) -> Iterator[None]:
    handles = [add() for add in register]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _projections(model: PreTrainedModel, kind: ModelKind, inputs: dict[str, torch.Tensor],
                 blocks: Sequence[nn.Module]) -> tuple[nn.Module, ...] | None:
    outputs: dict[int, torch.Tensor] = {}
    receivers: list[list[nn.Module]] = [[] for _ in blocks]

    def observe(layer: int, module: nn.Module, args: tuple[Any, ...]) -> None:
        output = outputs.get(layer)
        if output is None or not args or not isinstance(args[0], torch.Tensor):
            return
        batch, query, heads, head_dim = output.shape
        if args[0].data_ptr() == output.data_ptr() and args[0].shape == (batch, query, heads * head_dim):
            receivers[layer].append(module)

    adders = [
        (lambda module=module, layer=layer: module.register_forward_pre_hook(
            lambda module, args, layer=layer: observe(layer, module, args)))
        for layer, block in enumerate(blocks)
        for module in block.modules()
        if _is_weighted_leaf(module)
    ]
    discovery = hooks.Discovery(hooks.HookSet({hooks.ATTN_Z: lambda layer, z: outputs.__setitem__(layer, z)}))
    with _temporary_hooks(adders), hooks.discovering(discovery), torch.inference_mode():
        kind.outputs(model, inputs)
    found = tuple(candidates[0] for candidates in receivers if len(candidates) == 1)
    if len(found) != len(blocks) or len({id(module) for module in found}) != len(blocks):
        return None
    return found


def _mlps(blocks: Sequence[nn.Module], intermediate_size: int | None, hidden_size: int) -> tuple[nn.Module, ...] | None:
    found = []
    for block in blocks:
        named = [getattr(block, name) for name in _MLP_NAMES if isinstance(getattr(block, name, None), nn.Module)]
        if not named and intermediate_size:
            named = [
                module for module in block.modules()
                if isinstance(module, nn.Linear) and module.in_features == intermediate_size
                and module.out_features == hidden_size
            ]
        if len(named) != 1:
            return None
        found.append(named[0])
    return tuple(found)


def verify_growth(registry: hooks.ModelHooks, kind: ModelKind, model: PreTrainedModel,
                  inputs: dict[str, torch.Tensor]) -> str:
    """How batches of head edits grow through this model (see methods/layer_stack.py)."""
    from .methods.layer_stack import verified_growth  # the growing batch is the thing verified

    def run(rows: int) -> torch.Tensor:
        single = {name: value[:1].expand(rows, *value.shape[1:]) for name, value in inputs.items()}
        with torch.inference_mode():
            return kind.outputs(model, single)

    return verified_growth(registry, run)


def _first_row(inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Row 0 of the padded probe batch, without its padding ([1, real tokens])."""
    length = int(inputs["attention_mask"][0].sum())
    return {name: value[:1, :length] for name, value in inputs.items()}


def verify_prefix_reuse(registry: hooks.ModelHooks, kind: ModelKind, model: PreTrainedModel,
                        inputs: dict[str, torch.Tensor]) -> bool:
    """Whether a causal model's forwards of an input's tail can reuse the keys and values
    of the positions before it (prefix.py), plain and in a growing batch as it grows."""
    if not kind.causal or "input_ids" not in inputs or "attention_mask" not in inputs:
        return False
    from .methods.layer_stack import growing_batch, probe_growth  # the growing batch is part of what is verified

    row = _first_row(inputs)

    def run(arguments: Mapping[str, torch.Tensor], prefix: PrefixKeys, edit_from: int | None) -> torch.Tensor:
        with torch.inference_mode():
            if edit_from is None:
                with registry.active(hooks.HookSet(prefix=prefix)):
                    return kind.outputs(model, arguments)
            copies, zero_head_0 = probe_growth(registry, edit_from)
            with growing_batch(registry, copies, zero_head_0, prefix=prefix) as rows:
                return kind.outputs(model, {name: value.expand(rows, *value.shape[1:])
                                            for name, value in arguments.items()})

    return verified_prefix_reuse(run, row)


def verify_last_position_mlp(registry: hooks.ModelHooks, kind: ModelKind, model: PreTrainedModel,
                             inputs: dict[str, torch.Tensor]) -> bool:
    """Whether a causal LM's last-position logits stay the same when its final MLP runs
    on the last position alone (HookSet.last_position_only)."""
    if not (kind.causal and kind.has_lm_head and registry.modules.mlps is not None and "attention_mask" in inputs):
        return False
    row = _first_row(inputs)
    registry.last_position_mlp = True
    try:
        with torch.inference_mode():
            reference = kind.outputs(model, row, last_positions=1).float()
            with registry.active(hooks.HookSet(last_position_only=True)):
                cut = kind.outputs(model, row, last_positions=1).float()
    except Exception:  # noqa: BLE001 - a model whose MLP cannot be cut runs it on every position
        return False
    finally:
        registry.last_position_mlp = False
    return agree(reference, cut)


def unembedding(model: PreTrainedModel, kind: ModelKind, registry: hooks.ModelHooks,
                inputs: dict[str, torch.Tensor]) -> Unembedding | None:
    """The final norm and output embeddings of a model with an LM head, when they turn
    the last block's output into exactly the model's logits; else None."""
    head = model.get_output_embeddings() if kind.has_lm_head else None
    if head is None:
        return None
    single = {name: value[:1] for name, value in inputs.items()}
    last = registry.num_layers - 1
    residual: list[torch.Tensor] = []
    norms: list[nn.Module] = []
    block_ids = {id(module) for block in registry.modules.blocks for module in block.modules()}

    def watch(module: nn.Module, args: tuple[Any, ...]) -> None:
        if residual and args and isinstance(args[0], torch.Tensor) and args[0].data_ptr() == residual[0].data_ptr():
            norms.append(module)

    adders = [
        (lambda module=module: module.register_forward_pre_hook(watch))
        for module in model.modules()
        if id(module) not in block_ids and module is not head and next(module.children(), None) is None
        and not isinstance(module, (nn.Dropout, nn.Identity))
    ]
    keep = hooks.HookSet({hooks.RESID_POST: lambda layer, value: residual.append(value)}, {hooks.RESID_POST: frozenset({last})})
    with _temporary_hooks(adders), registry.active(keep), torch.inference_mode():
        logits = kind.outputs(model, single)
    if not residual:
        return None
    config = model.config
    softcap = getattr(config, "final_logit_softcapping", None)
    scale = float(getattr(config, "logit_scale", None) or 1.0) / float(getattr(config, "logits_scaling", None) or 1.0)
    if len(norms) > 1:
        return None
    candidate = Unembedding(norms[0] if norms else None, head, scale, softcap if softcap else None)
    with torch.inference_mode():
        lens = candidate(residual[0]).float()
    reference = logits.float()
    tolerance = PARITY_TOLERANCE.get(model.dtype, 1e-4) * max(1.0, float(reference.abs().max()))
    if lens.shape != reference.shape or float((lens - reference).abs().max()) > tolerance:
        return None
    return candidate


def check_parity(model: PreTrainedModel, kind: ModelKind, registry: hooks.ModelHooks,
                 inputs: dict[str, torch.Tensor], implementation: str) -> int:
    """Raises DiscoveryError unless outputs and attention probabilities through the hooks
    equal the model's eager attention on a padded batch of texts, or a batch of images
    (real positions only); returns the tokens the maps run over."""
    captured: dict[int, torch.Tensor] = {}
    capture = hooks.HookSet({hooks.ATTN_PROBS: lambda layer, probs: captured.__setitem__(layer, probs)})
    with torch.inference_mode():
        plain = kind.outputs(model, inputs).float()
        with registry.active(capture):
            with_maps = kind.outputs(model, inputs).float()
        model.set_attn_implementation("eager")
        try:
            eager, eager_maps = kind.eager_reference(model, inputs)
        finally:
            model.set_attn_implementation(implementation)
    eager = eager.float()
    batch = eager.shape[0]
    if not captured or any(probs.shape[0] != batch for probs in captured.values()):
        raise DiscoveryError("its attention maps do not have one row per input (windowed attention?)")
    tokens = next(iter(captured.values())).shape[-1]
    mask = inputs.get("attention_mask")
    mask = mask.bool() if mask is not None else torch.ones(batch, tokens, dtype=torch.bool, device=eager.device)
    tolerance = PARITY_TOLERANCE.get(model.dtype, 1e-4)
    rows = mask if eager.dim() == 3 else torch.ones(eager.shape[0], dtype=torch.bool, device=eager.device)
    for what, ours in (("outputs", plain), ("outputs with attention maps", with_maps)):
        difference = float((ours[rows] - eager[rows]).abs().max())
        scale = max(1.0, float(eager[rows].abs().max()))
        if not difference <= tolerance * scale:
            raise DiscoveryError(f"its {what} differ from its own eager attention by {difference:.3g} "
                                 "(an attention feature introspect does not reproduce)")
    if len(eager_maps) != len(captured):
        raise DiscoveryError(f"eager attention returned {len(eager_maps)} attention maps for {len(captured)} "
                             "attention layers")
    pair = mask[:, None, :, None] & mask[:, None, None, :]  # [batch, 1, query, key]: real positions
    for layer, eager_map in enumerate(eager_maps):
        ours = captured[layer]
        if ours.shape != eager_map.shape:
            raise DiscoveryError(f"layer {layer}: attention maps of shape {tuple(ours.shape)}, eager gives "
                                 f"{tuple(eager_map.shape)}")
        difference = float(((ours - eager_map.float()).abs() * pair).max())
        if not difference <= tolerance:
            raise DiscoveryError(f"layer {layer}: attention maps differ from eager attention by {difference:.3g}")
    return int(tokens)
