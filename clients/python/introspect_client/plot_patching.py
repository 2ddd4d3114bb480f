"""Figures of patching results (matplotlib, imported only when one is drawn); each
function returns the Figure (`plot.save_figure` writes it).

- activation / attribution patching: one panel per (method, point): layer x position
  heatmaps (the clean input's tokens across) for the per-position points, layer x head
  heatmaps for `head`, and (layer, head) x position for `head_position`; normalized
  values with the target metric, raw ones with KL;
- direct logit attribution: layer x head at the last position, the MLPs as a last column;
- attention knockout: the change of the metric per window start.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .patching_results import POSITION_POINTS, PairPatching, PatchingMap, PatchingResult
from .plot import grid_panel, new_figure

_PANEL_WIDTH, _PANEL_HEIGHT = 7.0, 4.5
_MAX_COLUMNS = 2


def shown_pair(result: PatchingResult, pair: int | None = None) -> PairPatching:
    """The pair a figure shows: `pair`, else the mean over pairs when sent, else pair 0."""
    if pair is not None:
        return result.pairs[pair]
    return result.mean if result.mean is not None else result.pairs[0]


def _clean_tokens(result: PatchingResult, shown: PairPatching) -> list[str]:
    """Token labels of the shown pair's clean input (the mean: the first pair's)."""
    clean = shown.clean if shown.clean is not None else result.pairs[0].clean
    return list(clean.tokens) if clean is not None else []


def _panel_grid(values: np.ndarray) -> tuple[np.ndarray, list[str] | None]:
    """The 2-D grid a map is drawn as, and its row labels (None: layer numbers)."""
    if values.ndim == 3:  # head_position [layers, heads, positions] -> [(layer, head), positions]
        layers, heads, _ = values.shape
        return values.reshape(layers * heads, -1), [f"{layer}.{head}" for layer in range(layers)
                                                    for head in range(heads)]
    return values, None


def map_panel(figure: Any, axes: Any, item: PatchingMap, tokens: list[str]) -> None:
    """One map on `axes`: normalized values when it has them, else raw."""
    values = item.normalized if item.normalized is not None else item.values
    grid, row_labels = _panel_grid(values)
    per_position = item.point in POSITION_POINTS
    labels = [tokens[index] if index < len(tokens) else str(index) for index in range(grid.shape[1])]
    what = "normalized metric" if item.normalized is not None else "metric"
    grid_panel(
        figure, axes, grid, f"{item.method} patching, {item.point}", value_label=what,
        row_labels=row_labels, column_labels=labels if per_position else None,
        row_name="layer.head" if row_labels else "layer", column_name="clean token" if per_position else "head",
        title_size=10,
    )


def maps_figure(result: PatchingResult, shown: PairPatching, title: str) -> Any:
    """One panel per (method, point) of the shown pair."""
    if not shown.maps:
        raise ValueError("the result holds no patching maps")
    count = len(shown.maps)
    columns = min(count, _MAX_COLUMNS)
    rows = math.ceil(count / columns)
    figure = new_figure(columns * _PANEL_WIDTH, rows * _PANEL_HEIGHT + 0.5)
    grid = figure.subplots(rows, columns, squeeze=False)
    tokens = _clean_tokens(result, shown)
    for axes, item in zip(grid.flat, shown.maps.values()):
        map_panel(figure, axes, item, tokens)
    for axes in grid.flat[count:]:
        axes.set_visible(False)
    figure.suptitle(title, fontsize=12)
    return figure


def logit_attribution_figure(result: PatchingResult, shown: PairPatching, title: str) -> Any:
    """Each head's direct contribution at the last position, [layers, heads], with the
    MLPs' as a last column."""
    arrays = shown.logit_attribution
    if arrays is None:
        raise ValueError("the result holds no logit attribution")
    grid = np.concatenate([arrays.heads[:, :, -1], arrays.mlps[:, -1:]], axis=1)  # [layers, heads + 1]
    tokens = _clean_tokens(result, shown)
    figure = new_figure(_PANEL_WIDTH + 1.0, _PANEL_HEIGHT + 0.5)
    heads = arrays.heads.shape[1]
    last = f" (last token {tokens[-1]!r})" if tokens else ""
    grid_panel(figure, figure.add_subplot(), grid, f"{title}{last}", value_label="direct logit contribution",
               column_labels=[str(head) for head in range(heads)] + ["MLP"], column_name="head")
    return figure


def knockout_figure(shown: PairPatching, title: str) -> Any:
    """The change of the metric with each window's attention edges blocked, per window
    start."""
    knockout = shown.knockout
    if knockout is None:
        raise ValueError("the result holds no knockout")
    figure = new_figure(_PANEL_WIDTH, _PANEL_HEIGHT)
    axes = figure.add_subplot()
    axes.plot(knockout.window_starts, knockout.change, marker="o", color="tab:blue")
    axes.axhline(0.0, color="grey", linewidth=0.8)
    axes.set_xlabel(f"first layer of the window ({knockout.window} layer{'s' if knockout.window != 1 else ''})")
    axes.set_ylabel("change of the metric")
    axes.set_xticks(knockout.window_starts)
    axes.set_title(title, fontsize=11)
    return figure


def patching_figure(result: PatchingResult, *, pair: int | None = None, title: str | None = None) -> Any:
    """The figure of a patching result (the pair `pair`, else the mean over pairs when
    sent, else pair 0): maps, logit attribution or knockout, whichever it holds."""
    shown = shown_pair(result, pair)
    which = "mean over pairs" if shown.index == -1 else f"pair {shown.index}"
    if shown.maps:
        return maps_figure(result, shown, title or f"{result.model}: patching, {which}")
    if shown.logit_attribution is not None:
        return logit_attribution_figure(result, shown, title or f"{result.model}: direct logit attribution, {which}")
    return knockout_figure(shown, title or f"{result.model}: attention knockout, {which}")
