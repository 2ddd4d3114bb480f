"""Head importance: Michel, Levy & Neubig (2019), "Are Sixteen Heads Really Better than
One?": the gradient of the target with respect to a gate on every head's output, gates
at 1, for all heads from one forward and one backward pass.

With mean ablation the gate interpolates between the head's mean output (gate 0) and
its real output (gate 1), so the gradient is the first-order estimate of what
mean-ablating the head would do, as the zero gate's is for zero ablation.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .. import hooks
from .heads import ScoringForward, head_editor


def head_importance(
    forward: ScoringForward, means: torch.Tensor | None, on_layer: Callable[[int], None] | None = None
) -> tuple[float, torch.Tensor]:
    """(unablated target score, d target / d gate [layers, heads] float32)."""
    model = forward.model
    description = model.description
    gates = torch.ones(description.num_layers, description.num_heads, device=model.device, requires_grad=True)
    keep = {layer: gates[layer].view(1, 1, -1, 1) for layer in range(description.num_layers)}
    with model.hooks.active(hooks.HookSet({hooks.ATTN_Z: head_editor(keep, means, on_layer)})), torch.enable_grad():
        score = forward.score(forward.outputs())[0]
        (gradient,) = torch.autograd.grad(score, gates)
    return float(score.detach()), gradient.float()
