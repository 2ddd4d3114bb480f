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


def bilinear_resize(grid: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """[rows, columns] -> [height, width] float32, bilinear with half-pixel centres (torch's
    interpolate with align_corners=False; OpenCV's resize and so pytorch-grad-cam's)."""
    resized = torch.nn.functional.interpolate(grid.float()[None, None], size=(height, width), mode="bilinear",
                                              align_corners=False)
    return resized[0, 0]


def patch_centres(rows: int, columns: int, patch_height: int, patch_width: int) -> torch.Tensor:
    """Centres [rows * columns, 2] (y, x) in pixels of the patches, row-major."""
    y = (torch.arange(rows, dtype=torch.float64) + 0.5) * patch_height
    x = (torch.arange(columns, dtype=torch.float64) + 0.5) * patch_width
    return torch.stack(torch.meshgrid(y, x, indexing="ij"), dim=-1).reshape(-1, 2)


def mean_attention_distance(maps: torch.Tensor, first_patch: int, centres: torch.Tensor) -> torch.Tensor:
    """Mean attention distance per head [heads] of maps [heads, tokens, tokens]: over the
    patch queries, sum_k a(q, k) |centre(q) - centre(k)| over the patch keys, averaged
    (Dosovitskiy et al. 2021, fig. 7; attention to special tokens counts for nothing).
    `centres` [patches, 2] in pixels."""
    distances = torch.cdist(centres, centres).to(device=maps.device)  # [patches, patches] float64
    patch_maps = maps[:, first_patch:, first_patch:].double()  # [heads, patches, patches]
    return (patch_maps * distances).sum(dim=-1).mean(dim=-1).float()
