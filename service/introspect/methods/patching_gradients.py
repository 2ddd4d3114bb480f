"""What attribution patching reads from one pair: the source run's activations, the
patched run's activations and the gradient of the patched run's metric with respect to
them, at hook points of chosen layers, from one forward of each run and one backward.

The two forwards share one batch of two rows [source, patched] when the runs are
equally long (a single input is never padded, so neither row has padding and the rows
cannot interact: every operation of the served models mixes positions of one row
only); runs of different lengths (pairs with an alignment) would need padding, which
moves rotary positions of left-padded or masks of right-padded rows, so they run one
after the other, the source run without gradients.

Gradients are taken with respect to a zero tensor added at each hook point (value +
0 is the value itself), so that the graph keeps running through every hooked point and
one backward gives the gradients at all of them together; the model's parameters need
no gradient.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace

import torch

from .. import hooks
from ..inputs import EncodedBatch
from ..models import LoadedModel
from .patching import Check, PatchingPair

Key = tuple[str, int]  # (hook point, layer)


@dataclass(frozen=True)
class PairGradients:
    """Activations of both runs and the patched run's metric gradient, per (point,
    layer), float32, batch row dropped: [positions, d_model] or, for attn.z,
    [positions, heads, head_dim] (positions of the run each tensor comes from)."""

    source: dict[Key, torch.Tensor]  # a_S
    patched: dict[Key, torch.Tensor]  # a_R
    gradients: dict[Key, torch.Tensor]  # d metric(R) / d a_R
    score: float  # the metric of the patched run, from this forward
    batched: bool  # whether the two runs shared one forward


def runs(pair: PatchingPair, patched_run: str) -> tuple[EncodedBatch, EncodedBatch]:
    """(source, patched) inputs: the clean run patches the corrupted one when denoising
    (patched_run "corrupted") and the other way round when noising."""
    assert pair.corrupted is not None
    if patched_run == "corrupted":
        return pair.clean, pair.corrupted
    return pair.corrupted, pair.clean


def pair_gradients(model: LoadedModel, pair: PatchingPair, patched_run: str, points: Iterable[str],
                   layers: Iterable[int], check: Check) -> PairGradients:
    """Reads the source activations, the patched activations and d metric / d patched at
    every hook point of `points` in every layer of `layers` (one backward)."""
    chosen = tuple(points)
    hook_layers = {point: frozenset(layers) for point in chosen}
    source, patched = runs(pair, patched_run)
    captured: dict[Key, torch.Tensor] = {}  # [rows, ...] as the forward saw it
    zeros: dict[Key, torch.Tensor] = {}  # [rows, ...], requires grad

    def differentiable(point: str) -> hooks.Hook:
        def hook(layer: int, value: torch.Tensor) -> torch.Tensor:
            zero = torch.zeros_like(value, requires_grad=True)
            captured[(point, layer)] = value.detach()
            zeros[(point, layer)] = zero
            return value + zero

        return hook

    batched = source.width == patched.width
    if batched:
        both = model.batch([source.inputs[0], patched.inputs[0]])  # rows: 0 source, 1 patched
        score = _backward_run(model, pair, patched_run, both, 1, chosen, hook_layers, differentiable)
        source_values = {key: value[0].float() for key, value in captured.items()}
        patched_values = {key: value[1].float() for key, value in captured.items()}
        row = 1
    else:
        source_values = _read(model, source, chosen, hook_layers)
        check()
        score = _backward_run(model, pair, patched_run, patched, 0, chosen, hook_layers, differentiable)
        patched_values = {key: value[0].float() for key, value in captured.items()}
        row = 0
    check()
    keys = sorted(zeros)
    grads = torch.autograd.grad(score, [zeros[key] for key in keys], allow_unused=True)
    gradients = {key: (torch.zeros_like(zeros[key][row]) if grad is None else grad[row]).float()
                 for key, grad in zip(keys, grads, strict=True)}
    return PairGradients(source_values, patched_values, gradients, float(score.detach()), batched)


def _backward_run(model: LoadedModel, pair: PatchingPair, patched_run: str, batch: EncodedBatch, row: int,
                  points: tuple[str, ...], layers: dict[str, frozenset[int]],
                  differentiable: Callable[[str], hooks.Hook]) -> torch.Tensor:
    """The patched run's metric (a 0-d tensor with a graph back to the hooked zeros).
    A metric at one position (next-token targets, KL) has logits computed from that
    position on only: the unembedding of the other positions would cost about a forward
    there and another in the backward, for nothing."""
    metric = pair.metric
    target = metric.target(patched_run)
    keep = None
    if target.position is not None:
        keep = batch.width - target.position  # the kept logits start at the target position
        shifted = replace(target, position=0)
        metric = replace(metric, **{f"{patched_run}_target": shifted})
    hookset = hooks.HookSet({point: differentiable(point) for point in points}, layers)
    with model.hooks.active(hookset), torch.enable_grad():
        outputs = model.outputs(batch.model_inputs(), last_positions=keep)
        return metric.scores(outputs[row:row + 1], batch.attention_mask[row:row + 1], patched_run)[0]


def _read(model: LoadedModel, batch: EncodedBatch, points: tuple[str, ...],
          layers: dict[str, frozenset[int]]) -> dict[Key, torch.Tensor]:
    """The activations of a one-row batch at the hooked points, float32, row dropped."""
    read: dict[Key, torch.Tensor] = {}

    def reader(point: str) -> hooks.Hook:
        def hook(layer: int, value: torch.Tensor) -> None:
            read[(point, layer)] = value[0].detach().float()

        return hook

    with model.hooks.active(hooks.HookSet({point: reader(point) for point in points}, layers)), torch.no_grad():
        model.run_trunk(batch.model_inputs())
    return read
