"""How well attribution patching matches exact activation patching at one patch point
(Syed et al. 2023, "Attribution Patching Outperforms Automated Circuit Discovery",
compare the two the same way): the Pearson correlation of the estimated and the exact
metric changes over every spot of the point (all its layers, positions and heads), and
their largest absolute difference.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from ..results import PatchingCorrelationResult, PatchingLayerResult


def correlations(pair_index: int, estimated: Iterable[PatchingLayerResult], exact: Iterable[PatchingLayerResult],
                 baseline: float, points: tuple[str, ...]) -> list[PatchingCorrelationResult]:
    """One result per point of `points`: the two methods' values are paired by (point,
    layer) and compared as changes from `baseline` (the patched run's metric); spots
    either method leaves NaN (positions without a counterpart) are left out. Pearson is
    NaN when fewer than two spots remain or either side does not vary."""
    exact_by_key = {(result.point, result.layer): result.values.values for result in exact}
    ours: dict[str, list[np.ndarray]] = {point: [] for point in points}
    theirs: dict[str, list[np.ndarray]] = {point: [] for point in points}
    for result in estimated:
        other = exact_by_key.get((result.point, result.layer))
        if other is None or result.point not in ours:
            continue
        ours[result.point].append(result.values.values.astype(np.float64).ravel() - baseline)
        theirs[result.point].append(other.astype(np.float64).ravel() - baseline)
    return [_correlation(pair_index, point, ours[point], theirs[point]) for point in points]


def _correlation(pair_index: int, point: str, estimated: list[np.ndarray],
                 exact: list[np.ndarray]) -> PatchingCorrelationResult:
    first = np.concatenate(estimated) if estimated else np.zeros(0)  # [spots]
    second = np.concatenate(exact) if exact else np.zeros(0)  # [spots]
    kept = np.isfinite(first) & np.isfinite(second)
    first, second = first[kept], second[kept]
    difference = float(np.max(np.abs(first - second))) if first.size else float("nan")
    return PatchingCorrelationResult(pair_index, point, pearson(first, second), difference)


def pearson(first: np.ndarray, second: np.ndarray) -> float:
    """Pearson's r of two equally long vectors; NaN for fewer than two entries or a
    vector without variance."""
    if first.size < 2:
        return float("nan")
    first, second = first - first.mean(), second - second.mean()
    scale = float(np.sqrt(np.sum(first * first) * np.sum(second * second)))
    return float(np.sum(first * second) / scale) if scale > 0 else float("nan")
