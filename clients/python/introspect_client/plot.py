"""PNG plots of results (matplotlib, imported only when a plot is drawn).

Figures are drawn on matplotlib's Agg canvas directly, without pyplot, so plotting
neither needs a display nor changes the backend of a program that imports this module.
Every `*_figure` function returns the matplotlib Figure; the functions without the suffix
write it to a PNG file (`save_figure`). Image results are drawn by `plot_images`.
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


def new_figure(width: float, height: float, *, constrained: bool = True) -> Any:
    """A Figure of width x height inches on its own Agg canvas (no pyplot)."""
    Figure, FigureCanvasAgg = _matplotlib()
    figure = Figure(figsize=(width, height), dpi=_DPI, layout="constrained" if constrained else None)
    FigureCanvasAgg(figure)
    return figure


def save_figure(figure: Any, path: str | os.PathLike[str]) -> None:
    """Writes `figure` to the PNG file `path`."""
    figure.savefig(os.fspath(path), format="png", dpi=_DPI)


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
    """Writes `attention_figure` to the PNG file `path`."""
    save_figure(attention_figure(matrix, tokens, title, key_tokens=key_tokens, value_label=value_label), path)


def attention_figure(
    matrix: np.ndarray,
    tokens: Sequence[str],
    title: str,
    *,
    key_tokens: Sequence[str] | None = None,
    value_label: str = "attention probability",
) -> Any:
    """A heatmap of an attention matrix [query, keys].

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
    rows, row_font = _ticks(len(queries))
    columns, column_font = _ticks(len(keys))
    longest = max((len(token) for token in queries + keys), default=1)
    label_inches = min(0.6 * max(row_font, column_font) / 72 * longest + 0.5, 2.5)
    width = _side_inches(len(keys)) + label_inches + 1.8
    height = _side_inches(len(queries)) + label_inches + 1.0

    figure = new_figure(width, height)
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
    return figure


# Inches per head / layer cell of a head grid, and the largest grid whose cells get
# their value written in them.
_INCHES_PER_HEAD_CELL = 0.45
_ANNOTATED_CELLS = 24 * 24


def head_heatmap(
    grid: np.ndarray,
    title: str,
    path: str | os.PathLike[str],
    *,
    value_label: str = "change of the target score",
) -> None:
    """Writes `head_figure` to the PNG file `path`."""
    save_figure(head_figure(grid, title, value_label=value_label), path)


def head_figure(grid: np.ndarray, title: str, *, value_label: str = "change of the target score") -> Any:
    """A layers x heads heatmap of per-head values [layers, heads]: layers down, heads across, a diverging colour scale centred on 0, and NaN
    (heads not computed) left blank. Small grids carry their values in the cells."""
    values = np.asarray(grid, dtype=np.float32)
    if values.ndim != 2:
        raise ValueError(f"grid must be 2-D [layers, heads], got shape {values.shape}")
    layers, heads = values.shape
    width = min(max(_INCHES_PER_HEAD_CELL * heads, _MIN_SIDE_INCHES), _MAX_SIDE_INCHES) + 2.0
    height = min(max(_INCHES_PER_HEAD_CELL * layers, _MIN_SIDE_INCHES * 0.75), _MAX_SIDE_INCHES) + 1.2
    figure = new_figure(width, height)
    grid_panel(figure, figure.add_subplot(), values, title, value_label=value_label)
    return figure


def grid_panel(
    figure: Any,
    axes: Any,
    values: np.ndarray,
    title: str,
    *,
    value_label: str,
    row_labels: Sequence[str] | None = None,
    column_labels: Sequence[str] | None = None,
    row_name: str = "layer",
    column_name: str = "head",
    title_size: float = 12,
) -> Any:
    """Draws a 2-D grid [rows, columns] on `axes` with its colour bar: a diverging
    colour scale centred on 0, NaN left blank, rows and columns labelled by index (or by
    `row_labels` / `column_labels`, column labels longer than 3 characters turned
    upright), and small grids carrying their values in the cells. Returns the image."""
    rows, columns = values.shape
    finite = values[np.isfinite(values)]
    bound = float(np.abs(finite).max()) if finite.size else 1.0
    bound = bound if bound > 0 else 1.0
    image = axes.imshow(np.ma.masked_invalid(values), cmap="RdBu_r", vmin=-bound, vmax=bound, aspect="auto",
                        interpolation="nearest")
    row_names = [str(row) for row in range(rows)] if row_labels is None else list(row_labels)
    column_names = [str(column) for column in range(columns)] if column_labels is None else list(column_labels)
    row_ticks, row_font = _ticks(rows)
    column_ticks, column_font = _ticks(columns)
    axes.set_yticks(row_ticks, [row_names[row] for row in row_ticks], fontsize=row_font)
    long_names = any(len(name) > 3 for name in column_names)
    axes.set_xticks(column_ticks, [column_names[column] for column in column_ticks], fontsize=column_font,
                    rotation=90 if long_names else 0)
    axes.set_ylabel(row_name)
    axes.set_xlabel(column_name)
    axes.set_title(title, fontsize=title_size)
    if values.size <= _ANNOTATED_CELLS:
        for (row, column), value in np.ndenumerate(values):
            if np.isfinite(value):
                strong = abs(value) > 0.6 * bound
                axes.text(column, row, f"{value:.2g}", ha="center", va="center", fontsize=7,
                          color="white" if strong else "black")
    colorbar = figure.colorbar(image, ax=axes, fraction=0.046, pad=0.02)
    colorbar.set_label(value_label)
    return image


# Token saliency layout: tokens as running text in a monospace font, wrapped at a fixed
# width; each token's background shows its score.
_TEXT_WIDTH_INCHES = 9.0
_TOKEN_FONT = 11.0
_CHAR_WIDTH = 0.6  # monospace advance as a fraction of the font size
_LINE_HEIGHT = 2.0  # line pitch as a multiple of the font size
_TOKEN_GAP_CHARS = 1.0


def _token_layout(tokens: Sequence[str]) -> tuple[list[tuple[float, int]], int]:
    """(x offset in inches and line of every token, number of lines)."""
    char_inches = _CHAR_WIDTH * _TOKEN_FONT / 72
    places: list[tuple[float, int]] = []
    x, line = 0.0, 0
    for token in tokens:
        width = char_inches * (len(token) + _TOKEN_GAP_CHARS)
        if x > 0 and x + width > _TEXT_WIDTH_INCHES:
            x, line = 0.0, line + 1
        places.append((x, line))
        x += width
    return places, line + 1


def token_saliency(
    scores: np.ndarray,
    tokens: Sequence[str],
    title: str,
    path: str | os.PathLike[str],
    *,
    value_label: str = "attribution",
) -> None:
    """Writes `token_saliency_figure` to the PNG file `path`."""
    save_figure(token_saliency_figure(scores, tokens, title, value_label=value_label), path)


def token_saliency_figure(
    scores: np.ndarray, tokens: Sequence[str], title: str, *, value_label: str = "attribution"
) -> Any:
    """The tokens as text, each on a background coloured by its score: a diverging colormap centred on 0 (red positive, blue negative) with
    a colorbar."""
    values = np.asarray(scores, dtype=np.float32)
    if values.shape != (len(tokens),):
        raise ValueError(f"scores of shape {values.shape} do not match {len(tokens)} tokens")
    _matplotlib()  # ImportError with the install hint first
    from matplotlib import colormaps
    from matplotlib.colors import Normalize

    finite = np.abs(values[np.isfinite(values)])
    limit = float(finite.max()) if finite.size and finite.max() > 0 else 1.0
    norm = Normalize(vmin=-limit, vmax=limit)
    colormap = colormaps["RdBu_r"]
    places, lines = _token_layout(tokens)
    line_inches = _LINE_HEIGHT * _TOKEN_FONT / 72
    text_height = lines * line_inches
    width, height = _TEXT_WIDTH_INCHES + 2.0, text_height + 1.8

    figure = new_figure(width, height, constrained=False)
    # text area in inches: x from 0.4, lines downward from below the title
    axes = figure.add_axes((0.4 / width, 1.2 / height, _TEXT_WIDTH_INCHES / width, text_height / height))
    axes.set_xlim(0, _TEXT_WIDTH_INCHES)
    axes.set_ylim(text_height, 0)
    axes.set_axis_off()
    for token, score, (x, line) in zip(tokens, values, places):
        colour = colormap(norm(score)) if np.isfinite(score) else (0.8, 0.8, 0.8, 1.0)
        luminance = 0.299 * colour[0] + 0.587 * colour[1] + 0.114 * colour[2]
        axes.text(
            x, (line + 0.5) * line_inches, token, family="monospace", fontsize=_TOKEN_FONT, va="center",
            color="black" if luminance > 0.5 else "white",
            bbox={"facecolor": colour, "edgecolor": "none", "boxstyle": "square,pad=0.25"},
        )
    figure.suptitle(title, fontsize=12, y=1 - 0.3 / height)
    bar_axes = figure.add_axes((0.4 / width, 0.45 / height, _TEXT_WIDTH_INCHES / width, 0.2 / height))
    mappable = scalar_mappable(norm, colormap)
    colorbar = figure.colorbar(mappable, cax=bar_axes, orientation="horizontal")
    colorbar.set_label(value_label)
    return figure


def scalar_mappable(norm: Any, colormap: Any) -> Any:
    """A colour scale for a colorbar without an image."""
    from matplotlib.cm import ScalarMappable

    return ScalarMappable(norm=norm, cmap=colormap)


def head_value_bars(values: np.ndarray, errors: np.ndarray, labels: Sequence[str], title: str, *,
                    value_label: str = "Shapley value") -> Any:
    """Horizontal bars of per-head values with standard-error bars, one per label (top to bottom)."""
    values = np.asarray(values, dtype=np.float64)
    errors = np.nan_to_num(np.asarray(errors, dtype=np.float64))
    count = len(values)
    figure = new_figure(7.0, min(max(0.22 * count + 1.2, 2.5), 40.0))
    axes = figure.add_subplot()
    positions = np.arange(count)
    colours = ["#b2182b" if value < 0 else "#2166ac" for value in values]
    axes.barh(positions, values, xerr=errors, color=colours, ecolor="black", capsize=2)
    axes.set_yticks(positions, list(labels), fontsize=7 if count > 30 else 9)
    axes.invert_yaxis()
    axes.axvline(0, color="grey", linewidth=0.8)
    axes.set_xlabel(value_label)
    axes.set_title(title)
    return figure
