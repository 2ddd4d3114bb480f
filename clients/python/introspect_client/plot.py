"""PNG plots of results (matplotlib, imported only when a plot is drawn).

Figures are drawn on matplotlib's Agg canvas directly, without pyplot, so plotting
neither needs a display nor changes the backend of a program that imports this module.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

# Inches per token along each axis, the bounds of a side of the heatmap area, and the
# font sizes of tick labels (a label per token while they fit at the smallest size).
_INCHES_PER_TOKEN = 0.32
_MIN_SIDE_INCHES = 4.0
_MAX_SIDE_INCHES = 24.0
_MIN_FONT, _MAX_FONT = 4.0, 10.0
_FONT_PER_CELL = 0.7  # label height as a fraction of a cell
_DPI = 100


def _matplotlib() -> tuple[Any, Any]:
    """(Figure, FigureCanvasAgg), or ImportError saying how to install matplotlib."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as error:  # pragma: no cover - matplotlib is a dev dependency
        raise ImportError("PNG output needs matplotlib: pip install 'introspect[plot]'") from error
    return Figure, FigureCanvasAgg


def _side_inches(count: int) -> float:
    """Length of the heatmap side holding `count` tokens."""
    return min(max(_INCHES_PER_TOKEN * count, _MIN_SIDE_INCHES), _MAX_SIDE_INCHES)


def _ticks(count: int) -> tuple[list[int], float]:
    """(positions to label, font size): every token while a label fits the smallest font,
    else every n-th."""
    cell_points = 72 * _side_inches(count) / max(count, 1)
    font = min(max(cell_points * _FONT_PER_CELL, _MIN_FONT), _MAX_FONT)
    step = max(1, math.ceil(font / (cell_points * _FONT_PER_CELL)))
    return list(range(0, count, step)), font


def attention_heatmap(
    matrix: np.ndarray,
    tokens: Sequence[str],
    title: str,
    path: str | os.PathLike[str],
    *,
    key_tokens: Sequence[str] | None = None,
    value_label: str = "attention probability",
) -> None:
    """Writes a heatmap of an attention matrix [query, keys] to the PNG file `path`.

    Query tokens label the rows (y axis, top to bottom), key tokens the columns (x axis);
    `key_tokens` defaults to `tokens`. The figure grows with the number of tokens, and a
    colorbar shows the values.
    """
    values = np.asarray(matrix, dtype=np.float32)
    if values.ndim != 2:
        raise ValueError(f"matrix must be 2-D [query, keys], got shape {values.shape}")
    keys = list(tokens if key_tokens is None else key_tokens)
    queries = list(tokens)
    if values.shape != (len(queries), len(keys)):
        raise ValueError(f"matrix of shape {values.shape} does not match {len(queries)} x {len(keys)} tokens")
    Figure, FigureCanvasAgg = _matplotlib()

    rows, row_font = _ticks(len(queries))
    columns, column_font = _ticks(len(keys))
    longest = max((len(token) for token in queries + keys), default=1)
    label_inches = min(0.6 * max(row_font, column_font) / 72 * longest + 0.5, 2.5)
    width = _side_inches(len(keys)) + label_inches + 1.8
    height = _side_inches(len(queries)) + label_inches + 1.0

    figure = Figure(figsize=(width, height), dpi=_DPI, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    finite = values[np.isfinite(values)]
    top = float(finite.max()) if finite.size else 1.0
    image = axes.imshow(values, cmap="viridis", vmin=0.0, vmax=top if top > 0 else 1.0, aspect="auto",
                        interpolation="nearest")
    axes.set_yticks(rows, [queries[i] for i in rows], fontsize=row_font)
    axes.set_xticks(columns, [keys[i] for i in columns], fontsize=column_font, rotation=90)
    axes.set_ylabel("query token")
    axes.set_xlabel("key token")
    axes.set_title(title, fontsize=12)
    colorbar = figure.colorbar(image, ax=axes, fraction=0.046, pad=0.02, shrink=min(1.0, 6.0 / height))
    colorbar.set_label(value_label)
    figure.savefig(os.fspath(path), format="png", dpi=_DPI)
