"""What attribution patching reads from one pair, from one forward of each run and one
backward: the source run's activations, the patched run's activations and the gradient
of the patched run's metric with respect to them, at hook points of chosen layers; and,
from the same forwards, the pair's baseline (its metric bound on the clean run's outputs,
both runs scored), so the pair needs no other forward.

The source run is forwarded first, without gradients, its activations read at the hook
points; then the patched run with gradients. One after the other, not as one batch of two
rows: a batched graph would carry the source row through the backward too (every
operation's gradient is computed for the whole batch), a second backward's worth of
work for gradients nobody reads (on one CPU thread the pair takes about a fifth less
time apart; a small input on an accelerator, bound by kernel launches, could prefer the
batch); runs of different lengths (pairs with an alignment) could not share a batch
anyway (padding moves rotary positions of left-padded and masks of right-padded rows).
A causal LM computes logits from the metric's position on only: the unembedding of the
other positions would cost about a forward there (and another in the backward) for
nothing.

Gradients are taken with respect to a zero tensor added at each hook point (value + 0 is
the value itself), so that the graph keeps running through every hooked point and one
backward gives the gradients at all of them together; the model's parameters need no
gradient.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch

from .. import hooks
from ..inputs import EncodedBatch
from ..models import LoadedModel
from .patching import Check, EncodedPair, PatchingOptions, PatchingPair, bind_metric

Key = tuple[str, int]  # (hook point, layer)


@dataclass(frozen=True)
class PairGradients:
    """Activations of both runs and the patched run's metric gradient, per (point,
    layer), float32, batch row dropped: [positions, d_model] or, for attn.z,
    [positions, heads, head_dim] (positions of the run each tensor comes from); and the
    pair with its baseline, from the same forwards."""

    source: dict[Key, torch.Tensor]  # a_S
    patched: dict[Key, torch.Tensor]  # a_R
    gradients: dict[Key, torch.Tensor]  # d metric(R) / d a_R
    pair: PatchingPair  # the metric bound on the clean run's outputs, both runs scored


def other_run(run: str) -> str:
    """The other run of a pair: "clean" for "corrupted" and the other way round."""
    return "clean" if run == "corrupted" else "corrupted"


def run_input(pair: EncodedPair, run: str) -> EncodedBatch:
    """The input of run `run` ("clean" or "corrupted") of a pair with both."""
    chosen = pair.clean if run == "clean" else pair.corrupted
    assert chosen is not None
    return chosen


def pair_gradients(model: LoadedModel, options: PatchingOptions, pair: EncodedPair, patched_run: str,
                   points: Iterable[str], layers: Iterable[int], check: Check) -> PairGradients:
    """Reads the source activations, the patched activations and d metric / d patched at
    every hook point of `points` in every layer of `layers` (two forwards, one backward),
    binding the pair's metric and scoring both runs on the way."""
    chosen = tuple(points)
    hook_layers = {point: frozenset(layers) for point in chosen}
    source_run = other_run(patched_run)
    source_values: dict[Key, torch.Tensor] = {}  # [positions, ...] float32
    patched_values: dict[Key, torch.Tensor] = {}  # [positions, ...] float32
    zeros: dict[Key, torch.Tensor] = {}  # [1, positions, ...], requires grad

    def reader(point: str) -> hooks.Hook:
        def hook(layer: int, value: torch.Tensor) -> None:
            source_values[(point, layer)] = value[0].detach().float()

        return hook

    def differentiable(point: str) -> hooks.Hook:
        def hook(layer: int, value: torch.Tensor) -> torch.Tensor:
            zero = torch.zeros_like(value, requires_grad=True)
            patched_values[(point, layer)] = value[0].detach().float()
            zeros[(point, layer)] = zero
            return value + zero

        return hook

    readers = hooks.HookSet({point: reader(point) for point in chosen}, hook_layers)
    with model.hooks.active(readers), torch.no_grad():
        source_outputs = _metric_outputs(model, pair, source_run)
    check()
    gradient_hooks = hooks.HookSet({point: differentiable(point) for point in chosen}, hook_layers)
    with model.hooks.active(gradient_hooks), torch.enable_grad():
        patched_outputs = _metric_outputs(model, pair, patched_run)
        outputs = {source_run: source_outputs, patched_run: patched_outputs}
        metric = bind_metric(model, options, pair, outputs["clean"], _first(pair, "clean"))
        scores = {run: metric.scores(outputs[run], run_input(pair, run).attention_mask, run, _first(pair, run))[0]
                  for run in ("clean", "corrupted")}
    check()
    keys = sorted(zeros)
    grads = torch.autograd.grad(scores[patched_run], [zeros[key] for key in keys], allow_unused=True)
    gradients = {key: (torch.zeros_like(zeros[key][0]) if grad is None else grad[0]).float()
                 for key, grad in zip(keys, grads, strict=True)}
    scored = PatchingPair.scored(pair, metric, float(scores["clean"].detach()), float(scores["corrupted"].detach()))
    return PairGradients(source_values, patched_values, gradients, scored)


def _first(pair: EncodedPair, run: str) -> int:
    """The position of the first of the outputs _metric_outputs gives for run `run`."""
    return pair.metric_position(run) or 0


def _metric_outputs(model: LoadedModel, pair: EncodedPair, run: str) -> torch.Tensor:
    """The model's outputs [1, ...] on run `run`: a causal LM's logits from the metric's
    position on (positions _first(pair, run)..), else all of its outputs."""
    batch = run_input(pair, run)
    position = pair.metric_position(run)
    return model.outputs(batch.model_inputs(), last_positions=None if position is None else batch.width - position)
