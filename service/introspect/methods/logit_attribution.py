"""Direct logit attribution (Elhage et al. 2021, "A Mathematical Framework for Transformer
Circuits"; Wang et al. 2022, "Interpretability in the Wild"): each component's direct
contribution to a logit difference, through the residual stream, at every position of
the clean input.

The final residual stream decomposes into the components written to it,

    r_p = embeddings_p + sum over layers (attn.out_p + mlp.out_p)
    attn.out_p = sum over heads O(z_p with only that head kept) - (heads - 1) O(0)

(O the layer's output projection, O(0) its bias), and the logit difference is linear in
it once the final norm is frozen at its scale on this input (frozen_norm.py):

    logit[token] - logit[contrast] = frozen_norm(r_p) . d + b,   d = s (W_U[token] - W_U[contrast])

(s the unembedding's scale, b = s (b_U[token] - b_U[contrast])), so each component's
contribution is (frozen_norm(component) - shift) . d, and `bias` is shift . d + b. Each
step is checked on the input, and a model it does not hold for is refused naming why:
residuals that are scaled or normed before they add up (parallel blocks do decompose),
a final norm the freeze does not reproduce, a softcapped unembedding.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn

from .. import hooks
from ..budget import Footprint
from ..discovery import PARITY_TOLERANCE
from ..errors import InvalidInput, require
from ..models import LoadedModel, ModelDescription
from ..requests import PatchingQuery
from ..results import LogitAttributionResult
from .frozen_norm import FrozenNorm, freeze
from .heads import forward_footprint
from .patching import Check, PatchingOptions, PatchingPair, PatchingTechnique, float_array, register


def prepare(description: ModelDescription, query: PatchingQuery) -> None:
    """A logit difference target with the target metric; every layer and position (the
    contributions add up to the logit difference only all together)."""
    require(query.target is not None and query.target.kind == "logit_difference", "target",
            "direct logit attribution attributes a logit difference: send a logit_difference target")
    require(query.metric == "target", "metric", "direct logit attribution attributes the target, not a KL divergence")
    require(not query.layers, "layers", "direct logit attribution reports every layer (the contributions add up "
                                        "to the logit difference only all together): send no layers")
    require(not query.positions, "positions", "direct logit attribution reports every position: send no positions")


@dataclass(frozen=True)
class Components:
    """What the clean forward wrote to the residual stream (one input, batch axis gone)."""

    embeddings: torch.Tensor  # [positions, d_model]: resid.pre of layer 0
    z: list[torch.Tensor]  # per layer [positions, heads, head_dim]
    attention: list[torch.Tensor]  # per layer [positions, d_model]: attn.out
    mlps: list[torch.Tensor]  # per layer [positions, d_model]: mlp.out
    final: torch.Tensor  # [positions, d_model]: resid.post of the last layer
    logits: torch.Tensor  # [positions, vocab]


def _served_parts(model: LoadedModel) -> tuple[tuple[nn.Module, ...], torch.Tensor, torch.Tensor | None, float]:
    """(output projections, W_U [vocab, d_model], b_U [vocab] or None, scale), or
    INVALID_ARGUMENT naming the model when it lacks one of them."""
    name = model.name
    unembedding = model.unembedding
    if unembedding is None:
        raise InvalidInput("model", f"model {name!r} has no unembedding (an LM head that reproduces its logits from "
                                    "the last layer): direct logit attribution reads components through it")
    projections = model.hooks.modules.projections
    if projections is None or model.hooks.modules.mlps is None:
        raise InvalidInput("model", f"model {name!r}: its attention output projections or MLP outputs were not found,"
                                    " so its components cannot be read apart")
    if unembedding.softcap is not None:
        raise InvalidInput("model", f"model {name!r} softcaps its logits (tanh, nonlinear): the logit difference is "
                                    "not a sum of component contributions")
    weight = getattr(unembedding.head, "weight", None)
    if not isinstance(weight, torch.Tensor) or weight.shape != (model.description.vocab_size,
                                                                 model.description.hidden_size):
        raise InvalidInput("model", f"model {name!r}: its output embeddings {type(unembedding.head).__name__} have "
                                    "no [vocab, hidden] weight to read directions from")
    bias = getattr(unembedding.head, "bias", None)
    return projections, weight.detach(), bias.detach() if isinstance(bias, torch.Tensor) else None, unembedding.scale


def _collect(model: LoadedModel, pair: PatchingPair) -> Components:
    """One clean forward, reading every component (the forward's own memory is budgeted)."""
    tokens = pair.clean.inputs[0].length
    description = model.description
    kept = tokens * description.hidden_size * 4 * (3 * description.num_layers + 2)
    model.budget.require(forward_footprint(model, tokens, 1), rows=1)
    model.budget.require(Footprint(kept, 0, 1, "pairs", f"shorten the clean input ({tokens} tokens)"))
    last = description.num_layers - 1
    seen: dict[str, dict[int, torch.Tensor]] = {point: {} for point in hooks.POINTS}

    def keep(point: str) -> hooks.Hook:
        def read(layer: int, value: torch.Tensor) -> None:
            seen[point][layer] = value[0]

        return read

    points = (hooks.RESID_PRE, hooks.ATTN_Z, hooks.ATTN_OUT, hooks.MLP_OUT, hooks.RESID_POST)
    hookset = hooks.HookSet({point: keep(point) for point in points},
                            {hooks.RESID_PRE: frozenset({0}), hooks.RESID_POST: frozenset({last})})
    with model.hooks.active(hookset), torch.no_grad():
        logits = model.outputs(pair.clean.model_inputs())[0]
    layers = range(description.num_layers)
    per_layer = {point: [seen[point][layer] for layer in layers] for point in (hooks.ATTN_Z, hooks.ATTN_OUT,
                                                                                hooks.MLP_OUT)}
    return Components(seen[hooks.RESID_PRE][0], per_layer[hooks.ATTN_Z], per_layer[hooks.ATTN_OUT],
                      per_layer[hooks.MLP_OUT], seen[hooks.RESID_POST][last], logits)


def _require_close(value: torch.Tensor, expected: torch.Tensor, tolerance: float, name: str, why: str) -> None:
    error = float((value.float() - expected.float()).abs().max())
    if error > tolerance * max(1.0, float(expected.float().abs().max())):
        raise InvalidInput("model", f"model {name!r}: {why} (off by {error:.3g}), so direct logit attribution "
                                    "cannot attribute it exactly")


def _head_contributions(model: LoadedModel, projection: nn.Module, z: torch.Tensor, attention: torch.Tensor,
                        readout: torch.Tensor, tolerance: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(per head [heads, positions], the projection's bias [positions]) contributions of
    one layer: the projection run on z [positions, heads, head_dim] with one head kept
    per row, minus its bias projection(0); checked to add up to attn.out."""
    positions, heads, head_dim = z.shape
    width = readout.shape[-1]
    with torch.no_grad():
        bias = projection(torch.zeros(1, 1, heads * head_dim, dtype=z.dtype, device=z.device))[0, 0]  # [d_model]
        itemsize = z.element_size()
        footprint = Footprint(0, positions * (heads * head_dim + 2 * width) * itemsize, heads, "pairs",
                              f"shorten the clean input ({positions} tokens)")
        rows = model.budget.fit(footprint, cap=heads)
        contributions, total = [], torch.zeros(positions, width, device=z.device)
        for first in range(0, heads, rows):
            chosen = torch.arange(first, min(first + rows, heads), device=z.device)
            only = torch.zeros(len(chosen), positions, heads, head_dim, dtype=z.dtype, device=z.device)
            only[torch.arange(len(chosen)), :, chosen] = z[:, chosen].transpose(0, 1)
            parts = (projection(only.reshape(len(chosen), positions, heads * head_dim)) - bias).float()
            total += parts.sum(dim=0)  # [positions, d_model]
            contributions.append((parts * readout).sum(dim=-1))  # [rows, positions]
    _require_close(total + bias.float(), attention, tolerance, model.name,
                   "its attention output is not the sum of its heads through the output projection")
    return torch.cat(contributions), (bias.float() * readout).sum(dim=-1)


def _tolerance(model: LoadedModel, terms: int) -> float:
    """Relative tolerance of a check: the load-time parity tolerance of the model's dtype,
    growing with the square root of the rounded terms a sum adds."""
    return PARITY_TOLERANCE.get(model.model.dtype, 1e-4) * math.sqrt(terms)


def attribute(model: LoadedModel, pair: PatchingPair, check: Check) -> LogitAttributionResult:
    """The direct logit attribution of the pair's clean input, every position."""
    projections, unembedding, unembedding_bias, scale = _served_parts(model)
    target = pair.metric.clean_target
    assert target.token_id is not None and target.contrast_token_id is not None
    parts = _collect(model, pair)
    check()
    num_layers = model.description.num_layers
    written = parts.embeddings.float() + sum(a.float() + m.float() for a, m in zip(parts.attention, parts.mlps))
    _require_close(written, parts.final, _tolerance(model, 2 * num_layers + 1), model.name,
                   "its last residual stream is not the embeddings plus every attention and MLP output "
                   "(scaled or normed residual branches)")
    assert model.unembedding is not None  # _served_parts refused a model without one
    frozen: FrozenNorm = freeze(model.unembedding.final_norm, parts.final, _tolerance(model, 1))
    direction = scale * (unembedding[target.token_id].float() - unembedding[target.contrast_token_id].float())
    readout = frozen.readout(direction)  # [positions, d_model]
    heads, attention_biases = [], []
    for layer in range(num_layers):
        check()
        per_head, bias = _head_contributions(model, projections[layer], parts.z[layer], parts.attention[layer],
                                             readout, _tolerance(model, model.description.num_heads + 1))
        heads.append(per_head)
        attention_biases.append(bias)
    mlps = torch.stack([(mlp.float() * readout).sum(dim=-1) for mlp in parts.mlps])  # [layers, positions]
    embeddings = (parts.embeddings.float() * readout).sum(dim=-1)  # [positions]
    constant = (frozen.shift * direction).sum()
    if unembedding_bias is not None:
        constant = constant + scale * (unembedding_bias[target.token_id] - unembedding_bias[target.contrast_token_id])
    bias = constant.expand(embeddings.shape[0])  # [positions]
    logits = parts.logits.float()
    difference = logits[:, target.token_id] - logits[:, target.contrast_token_id]  # [positions]
    head_values = torch.stack(heads)  # [layers, heads, positions]
    bias_values = torch.stack(attention_biases)  # [layers, positions]
    total = head_values.sum(dim=(0, 1)) + bias_values.sum(dim=0) + mlps.sum(dim=0) + embeddings + bias
    _require_close(total, difference, _tolerance(model, 2 * num_layers + 2), model.name,
                   "its logit difference is not the frozen final norm and unembedding of its residual stream")
    return LogitAttributionResult(pair.index, float_array(head_values), float_array(mlps), float_array(bias_values),
                                  float_array(embeddings), float_array(bias), float_array(difference))


def run(model: LoadedModel, options: PatchingOptions, pair: PatchingPair, check: Check) -> Iterator[object]:
    """One LogitAttributionResult for the pair (its clean input only)."""
    yield attribute(model, pair, check)


TECHNIQUE = register(PatchingTechnique("direct_logit_attribution", prepare, run, needs_corrupted=False))
