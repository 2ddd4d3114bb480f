"""When two forwards of the same work agree: the load-time checks (growing batches,
shared prefixes, the last-position final MLP) compare a shortcut's outputs with the
plain forward's by this one rule."""

from __future__ import annotations

import torch


def agree(reference: torch.Tensor, other: torch.Tensor) -> bool:
    """Same shape, and within sqrt(eps) of the reference's dtype, scaled by its largest
    magnitude (at least 1), at every element."""
    tolerance = torch.finfo(reference.dtype).eps ** 0.5 * max(1.0, float(reference.abs().max()))
    return other.shape == reference.shape and torch.allclose(other, reference, rtol=0, atol=tolerance)
