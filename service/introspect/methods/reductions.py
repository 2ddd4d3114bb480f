"""Reductions of attention probabilities, shared by attention maps and saliency."""

from __future__ import annotations

import torch


def head_mean(maps: torch.Tensor) -> torch.Tensor:
    """[heads, query, key] -> [1, query, key], mean over heads."""
    return maps.mean(dim=0, keepdim=True)


def head_max(maps: torch.Tensor) -> torch.Tensor:
    """[heads, query, key] -> [1, query, key], max over heads."""
    return maps.amax(dim=0, keepdim=True)


def residual_attention(mean_attention: torch.Tensor, residual_weight: float) -> torch.Tensor:
    """(1 - w) A + w I with rows renormalised: attention plus the residual connection.

    Abnar & Zuidema (2020), "Quantifying Attention Flow in Transformers", section 3.
    `mean_attention` is [query, key] with query == key.
    """
    identity = torch.eye(mean_attention.shape[-1], dtype=mean_attention.dtype, device=mean_attention.device)
    mixed = (1.0 - residual_weight) * mean_attention + residual_weight * identity
    return mixed / mixed.sum(dim=-1, keepdim=True)


def rollout_step(previous: torch.Tensor | None, layer_attention: torch.Tensor) -> torch.Tensor:
    """Rollout up to this layer: Ã_l · rollout_{l-1} (Abnar & Zuidema 2020, eq. 1)."""
    return layer_attention if previous is None else layer_attention @ previous
