"""Editing single attention heads, shared by head ablation and head importance.

Every edit is one formula at the `attn.z` hook point (hooks.py), on the per-head attention output
before the output projection, output [batch, query, heads, head_dim]:

    edited = output * keep + (1 - keep) * mean        (the `mean` term only for mean ablation)

with `keep` [batch, 1, heads, 1] per layer: 1 leaves a head as it is, 0 ablates it (zeroes
it, or replaces it by its mean output), and a differentiable gate of ones gives head
importance. Rows and heads never named keep exactly their output (x * 1 + 0 * mean == x).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace

import torch

from .. import hooks
from ..budget import Footprint, activation_bytes, output_bytes
from ..inputs import EncodedBatch
from ..errors import require
from ..models import LoadedModel, ModelDescription
from ..prefix import suffix_arguments
from ..targets import BoundTarget
from .layer_stack import HeadEdit


def check_head_refs(description: ModelDescription, heads: Sequence[tuple[int, int]]) -> None:
    """InvalidInput naming `heads[i].layer` or `heads[i].head` for the first (layer, head)
    pair out of the model's range."""
    for index, (layer, head) in enumerate(heads):
        require(0 <= layer < description.num_layers, f"heads[{index}].layer",
                f"layer {layer} out of range: the model has {description.num_layers} layers "
                f"(0..{description.num_layers - 1})")
        require(0 <= head < description.num_heads, f"heads[{index}].head",
                f"head {head} out of range: the model has {description.num_heads} heads per layer "
                f"(0..{description.num_heads - 1})")


def head_editor(
    keep: Mapping[int, torch.Tensor],
    means: torch.Tensor | None,
    on_layer: Callable[[int], None] | None = None,
) -> HeadEdit:
    """The attn.z hook for `keep[layer]` [rows, 1, heads, 1] (layers absent are not
    edited) and, for mean ablation, `means` [layers, heads, head_dim].

    A growing batch has fewer rows at early layers than `keep` describes: the first
    `batch` rows of `keep` apply. `on_layer(layer)` runs first (e.g. a cancellation check).
    """

    def edit(layer: int, output: torch.Tensor) -> torch.Tensor:
        if on_layer is not None:
            on_layer(layer)
        factors = keep.get(layer)
        if factors is None:
            return output
        factors = factors[: output.shape[0]].to(output.dtype)
        if means is None:
            return output * factors
        return output * factors + (1 - factors) * means[layer].to(output.dtype)[None, None]

    return edit


def ablation_keep(
    rows: int, num_heads: int, ablated: Sequence[tuple[int, int]], device: torch.device
) -> torch.Tensor:
    """keep [rows, 1, heads, 1]: ones, with 0 at each (row, head) in `ablated`."""
    keep = torch.ones(rows, 1, num_heads, 1, device=device)
    if ablated:
        row_index, head_index = zip(*ablated)
        keep[list(row_index), 0, list(head_index), 0] = 0.0
    return keep


@dataclass(frozen=True)
class ScoringForward:
    """How to run the model on one input to score a target and summarise the output.

    The input ends where later tokens can no longer change the target (a causal model's
    target position: ModelKind.relevant_length); for next-token targets only that
    position's logits are computed, and `target` is rebound to them.
    """

    model: LoadedModel
    arguments: Mapping[str, torch.Tensor]  # batch-1 model inputs
    attention_mask: torch.Tensor  # [1, tokens]
    target: BoundTarget

    @classmethod
    def create(cls, model: LoadedModel, batch: EncodedBatch, target: BoundTarget) -> ScoringForward:
        """The scoring forward of the first input of `batch`."""
        length = model.kind.relevant_length(target.position, batch.inputs[0].length)
        if batch.pixel_values is not None:
            return cls(model, batch.model_inputs(slice(0, 1)), batch.attention_mask[:1], target)
        arguments = {name: value[:1, :length] for name, value in batch.model_inputs().items()}
        if target.position is not None:
            target = replace(target, position=target.position - length + 1)  # -> the last position kept
        return cls(model, arguments, arguments["attention_mask"], target)

    def from_position(self, start: int) -> ScoringForward:
        """The forward of positions `start`.. of a causal model's input (its metric at the
        last position), to run with the prefix's keys and values (prefix.py)."""
        return replace(self, arguments=suffix_arguments(self.arguments, start))

    def outputs(self, rows: int = 1) -> torch.Tensor:
        """Runs the model on `rows` copies of the input: logits [batch, 1, vocab] at the
        target position (next-token targets), logits [batch, classes] (classifier) or
        last hidden states [batch, tokens, hidden] (encoder). A growing batch
        (layer_stack) may add rows."""
        arguments = {name: value.expand(rows, *value.shape[1:]) for name, value in self.arguments.items()}
        return self.model.outputs(arguments, last_positions=1 if self.target.position is not None else None)

    def score(self, outputs: torch.Tensor) -> torch.Tensor:
        """The target per row [batch] (float32)."""
        return self.target.score(outputs, self.attention_mask.expand(outputs.shape[0], -1))

    def summary(self, outputs: torch.Tensor) -> torch.Tensor:
        """The whole-output summary per row [batch, D] (see BoundTarget.output_summary)."""
        return self.target.output_summary(outputs, self.attention_mask.expand(outputs.shape[0], -1))


def head_means(model: LoadedModel, batches: Sequence[EncodedBatch]) -> torch.Tensor:
    """Every head's mean attention output over all real positions of the batches' inputs:
    [layers, heads, head_dim] float32. The forwards stop after the last attention layer."""
    description = model.description
    sums: dict[int, torch.Tensor] = {}
    count = 0
    for batch in batches:
        weights = batch.attention_mask.to(torch.float32)[:, :, None, None]  # [batch, tokens, 1, 1]
        count += int(batch.attention_mask.sum())

        def observe(layer: int, output: torch.Tensor, weights: torch.Tensor = weights) -> None:
            total = (output.float() * weights).sum(dim=(0, 1))  # [heads, head_dim]
            sums[layer] = sums[layer] + total if layer in sums else total

        def observe_then_stop_at_last(layer: int, output: torch.Tensor, observe=observe) -> None:
            observe(layer, output)
            if layer == description.num_layers - 1:
                raise hooks.StopForward()

        with model.hooks.active(hooks.HookSet({hooks.ATTN_Z: observe_then_stop_at_last})), torch.inference_mode():
            model.outputs(batch.model_inputs())
    return torch.stack([sums[layer] for layer in range(description.num_layers)]) / max(count, 1)


def forward_footprint(model: LoadedModel, tokens: int, rows: int, *, gradients: bool = False) -> Footprint:
    """What forwards of `rows` rows of `tokens` tokens need (budget.py), besides one clean
    row (the growing batch's row 0) in the fixed part."""
    description = model.description
    per_row = activation_bytes(description, tokens, gradients=gradients) + output_bytes(description, tokens)
    return Footprint(per_row, per_row, rows, "input", f"shorten the input ({tokens} tokens)", tokens_per_row=tokens)


def rows_per_forward(model: LoadedModel, tokens: int, rows: int, requested: int = 0) -> int:
    """How many of `rows` rows of `tokens` tokens one forward carries: `requested`
    lowered to the request's memory budget (0: as many as fit)."""
    return model.budget.fit(forward_footprint(model, tokens, rows), requested, cap=rows)
