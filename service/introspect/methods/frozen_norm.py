"""A final norm frozen at its scale on one input: the linear map direct logit attribution
reads every residual-stream component through (Elhage et al. 2021, "A Mathematical
Framework for Transformer Circuits"; TransformerLens's "fold LayerNorm" with the scale
cached from the run).

    LayerNorm  x -> (x - mean(x)) * gamma / sigma_p + beta     sigma_p = sqrt(var(r_p) + eps)
    RMSNorm    x -> x * gamma / rms_p                          rms_p = sqrt(mean(r_p^2) + eps)

with sigma_p, rms_p taken from the final residual stream r_p at each position p, so the
map is linear in x (beta aside) and applied to r_p it is the norm itself; `freeze`
checks that on the input and refuses a norm it does not reproduce.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..errors import InvalidInput


@dataclass(frozen=True)
class FrozenNorm:
    """x [..., positions, d_model] -> centre(x) * gain + shift, centre subtracting the
    mean over d_model for a LayerNorm."""

    centred: bool
    gain: torch.Tensor  # [positions, d_model] float32: gamma / scale_p
    shift: torch.Tensor  # [d_model] float32: beta (zeros without one)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """The frozen norm of x [..., positions, d_model] (float32)."""
        x = x.float()
        if self.centred:
            x = x - x.mean(dim=-1, keepdim=True)
        return x * self.gain + self.shift

    def readout(self, direction: torch.Tensor) -> torch.Tensor:
        """u [positions, d_model] with (self(x) - shift) . direction == x . u at every
        position: centring is symmetric, so it moves onto the direction."""
        u = self.gain * direction.float()
        return u - u.mean(dim=-1, keepdim=True) if self.centred else u


def _parameter(norm: nn.Module, name: str, width: int, device: torch.device) -> torch.Tensor:
    value = getattr(norm, name, None)
    return torch.zeros(width, device=device) if value is None else value.detach().float()


def freeze(norm: nn.Module | None, residual: torch.Tensor, tolerance: float) -> FrozenNorm:
    """The norm frozen at its scale on `residual` [positions, d_model] (the final residual
    stream). INVALID_ARGUMENT naming the model when the norm is neither a LayerNorm nor an
    RMSNorm, or the frozen map does not reproduce norm(residual) within `tolerance`."""
    positions, width = residual.shape
    r = residual.float()
    if norm is None:
        return FrozenNorm(False, torch.ones(positions, width, device=r.device), torch.zeros(width, device=r.device))
    name = type(norm).__name__
    eps = getattr(norm, "eps", getattr(norm, "variance_epsilon", None))
    layer_norm = isinstance(norm, nn.LayerNorm) or name.endswith("LayerNorm")
    rms_norm = isinstance(norm, nn.RMSNorm) or name.endswith("RMSNorm")
    if not (layer_norm or rms_norm) or not isinstance(eps, (int, float)):
        raise InvalidInput("model", f"its final norm {name} is neither a LayerNorm nor an RMSNorm with an eps: "
                                    "direct logit attribution cannot freeze it to a linear map")
    gamma = getattr(norm, "weight", None)
    gamma = torch.ones(width, device=r.device) if gamma is None else gamma.detach().float()
    if layer_norm:
        scale = torch.sqrt(r.var(dim=-1, unbiased=False, keepdim=True) + eps)  # [positions, 1]
        frozen = FrozenNorm(True, gamma / scale, _parameter(norm, "bias", width, r.device))
    else:
        scale = torch.sqrt(r.pow(2).mean(dim=-1, keepdim=True) + eps)
        frozen = FrozenNorm(False, gamma / scale, torch.zeros(width, device=r.device))
    with torch.no_grad():
        expected = norm(residual[None])[0].float()
    error = float((frozen(r) - expected).abs().max())
    if error > tolerance * max(1.0, float(expected.abs().max())):
        form = "(x - mean) * weight / sigma + bias" if layer_norm else "x * weight / rms"
        raise InvalidInput("model", f"its final norm {name} is not {form} on this input (off by {error:.3g}): "
                                    "direct logit attribution cannot freeze it exactly")
    return frozen
