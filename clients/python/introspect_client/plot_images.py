"""Figures of image results (matplotlib and Pillow, imported only when one is drawn).

    figure = figure_for(result, image=Path("cat.jpg"))   # a matplotlib Figure
    save_figure(figure, "cat-gradcam.png")

- saliency of an image: the map (pixel scores, else the grid scores upsampled
  bilinearly) over the image resized to the processed size; one panel per method when
  CAM `also` methods came with it;
- attention of an image: one panel per (layer, head) of the [CLS] row over the patches
  (patch_grid values, or row 0 of full maps), titled "L{layer} H{head}";
- mean attention distance: distance per head against layer (ViT paper, fig. 7).

Text results get the plots of `plot` (token colours, attention heatmap).
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from .image_inputs import ImageLike, encoded_bytes, pixels_chw
from .image_layout import ImageLayout
from .plot import attention_figure, new_figure, scalar_mappable, token_saliency_figure
from .results import AttentionResult, InputAttention
from .saliency import SaliencyResult

_PANEL_INCHES = 3.0
_MAX_COLUMNS = 4
_OVERLAY_ALPHA = 0.5
_COLORBAR_INCHES = 1.0
_TITLE_INCHES = 0.6

Panel = tuple[str, np.ndarray]
"""A panel's title and its map [rows, columns] (any size; upsampled to the image)."""


def image_pixels(image: ImageLike, height: int, width: int) -> np.ndarray:
    """`image` (a path, bytes, PIL image or pixel array) as RGB [height, width, 3] uint8,
    resized (bilinear) to height x width, after its EXIF orientation."""
    from PIL import Image, ImageOps

    encoded = encoded_bytes(image)
    if encoded is not None:
        with Image.open(io.BytesIO(encoded)) as opened:
            picture = ImageOps.exif_transpose(opened).convert("RGB")
    else:
        pixels = pixels_chw(np.asarray(image))  # [channels, height, width]
        if pixels.dtype != np.uint8:
            pixels = np.round(pixels * 255).astype(np.uint8)
        hwc = np.ascontiguousarray(pixels.transpose(1, 2, 0))  # [height, width, channels]
        picture = Image.fromarray(hwc[:, :, 0] if hwc.shape[2] == 1 else hwc).convert("RGB")
    return np.asarray(picture.resize((width, height), Image.Resampling.BILINEAR))  # [height, width, 3]


def _colour_scale(maps: Sequence[np.ndarray]) -> tuple[Any, str]:
    """(Normalize, colormap name) shared by every panel: 0..max with "jet" for
    non-negative maps (the usual CAM look), symmetric around 0 with "RdBu_r" otherwise."""
    from matplotlib.colors import Normalize

    finite = np.concatenate([values[np.isfinite(values)].ravel() for values in maps] or [np.zeros(0)])
    low = float(finite.min()) if finite.size else 0.0
    high = float(finite.max()) if finite.size else 1.0
    if low >= 0:
        return Normalize(vmin=0.0, vmax=high if high > 0 else 1.0), "jet"
    bound = max(abs(low), abs(high))
    return Normalize(vmin=-bound, vmax=bound), "RdBu_r"


def overlay_figure(
    pixels: np.ndarray | None,
    panels: Sequence[Panel],
    title: str,
    layout: ImageLayout,
    *,
    value_label: str = "score",
) -> Any:
    """One panel per map, each upsampled bilinearly to the processed size (layout height
    x width, unless already that size) and alpha-blended over `pixels` [height, width, 3]
    (None: the map alone), with one shared colour bar and `title` above."""
    if not panels:
        raise ValueError("nothing to draw: no maps")
    size = (layout.height, layout.width)
    maps = [values if values.shape == size else layout.upsample(values) for _, values in panels]  # [height, width]
    norm, colormap = _colour_scale(maps)
    columns = min(len(panels), _MAX_COLUMNS)
    rows = math.ceil(len(panels) / columns)
    aspect = layout.height / layout.width
    figure = new_figure(columns * _PANEL_INCHES + _COLORBAR_INCHES, rows * _PANEL_INCHES * aspect + _TITLE_INCHES)
    grid = figure.subplots(rows, columns, squeeze=False)
    for axes, (name, _), heat in zip(grid.flat, panels, maps):
        if pixels is not None:
            axes.imshow(pixels, interpolation="nearest")
        axes.imshow(heat, cmap=colormap, norm=norm, alpha=_OVERLAY_ALPHA if pixels is not None else 1.0,
                    interpolation="nearest")
        axes.set_title(name, fontsize=9)
        axes.set_axis_off()
    for axes in grid.flat[len(panels):]:
        axes.set_visible(False)
    colorbar = figure.colorbar(scalar_mappable(norm, colormap), ax=grid.ravel().tolist(), shrink=0.8)
    colorbar.set_label(value_label)
    figure.suptitle(title, fontsize=11)
    return figure


def distance_figure(distances: np.ndarray, layers: Sequence[int], title: str) -> Any:
    """Mean attention distance [layers, heads] in pixels: one dot per head at its layer,
    and the mean over heads as a line (Dosovitskiy et al. 2021, fig. 7)."""
    values = np.asarray(distances, dtype=np.float32)
    if values.ndim != 2 or values.shape[0] != len(layers):
        raise ValueError(f"distances of shape {values.shape} for {len(layers)} layers")
    figure = new_figure(6.0, 4.5)
    axes = figure.add_subplot()
    for index, layer in enumerate(layers):
        axes.scatter(np.full(values.shape[1], layer), values[index], s=14, alpha=0.7, color="tab:blue")
    axes.plot(list(layers), values.mean(axis=1), color="tab:orange", label="mean over heads")
    axes.set_xlabel("layer")
    axes.set_ylabel("mean attention distance (pixels)")
    axes.set_xticks(list(layers))
    axes.legend(loc="lower right")
    axes.set_title(title, fontsize=11)
    return figure


def saliency_map(result: SaliencyResult) -> np.ndarray:
    """The map drawn for an image saliency result: pixel scores [height, width] of pixel
    methods, else the grid scores [grid_rows, grid_columns]."""
    if result.pixel_scores is not None:
        return result.pixel_scores
    if result.grid_scores is not None:
        return result.grid_scores
    if result.image is None:
        raise ValueError("the result is not of an image input")
    return result.image.grid_of(result.scores)


def attention_panels(item: InputAttention, layout: ImageLayout) -> list[Panel]:
    """One panel per (layer, head) of an image's attention: the [CLS] row over the patches
    (patch_grid values as they are; row 0 of full maps, or the mean over the rows for
    models without a [CLS] token)."""
    panels: list[Panel] = []
    for layer, values in item.layers.items():
        values = np.asarray(values, dtype=np.float32)
        if values.shape[1:] != (layout.grid_rows, layout.grid_columns):  # [heads_or_1, query, keys]
            rows = values[:, 0, :] if layout.first_patch else values.mean(axis=1)  # [heads_or_1, keys]
            values = layout.grid_of(rows)  # [heads_or_1, grid_rows, grid_columns]
        names = [f"H{head}" for head in item.heads] if item.heads else [item.view] * values.shape[0]
        panels += [(f"L{layer} {name}", grid) for name, grid in zip(names, values)]
    return panels


def figure_for(
    result: SaliencyResult | AttentionResult | InputAttention,
    image: ImageLike | None = None,
    *,
    title: str | None = None,
) -> Any:
    """The figure of a saliency or attention result (an AttentionResult's first input).

    Image inputs are drawn over `image` (the image that was sent; None draws the maps
    alone): saliency as one overlay per method, attention as one panel per (layer, head),
    the mean attention distance as distance against layer. Text inputs get the token
    colours of `plot.token_saliency_figure` or the mean-over-heads heatmap of the last
    layer. `title` defaults to the model and the method or view.
    """
    if isinstance(result, SaliencyResult):
        heading = title or f"{result.model}: {result.method}"
        if result.image is None:
            return token_saliency_figure(result.scores, result.tokens, heading)
        panels = [(name, saliency_map(item)) for name, item in (result.by_method or {result.method: result}).items()]
        pixels = None if image is None else image_pixels(image, result.image.height, result.image.width)
        return overlay_figure(pixels, panels, heading, result.image, value_label="attribution")
    item = result[0] if isinstance(result, AttentionResult) else result
    model = result.model if isinstance(result, AttentionResult) else ""
    heading = title or f"{model + ': ' if model else ''}attention, {item.view}"
    if not item.layers:
        raise ValueError("the result holds no layers")
    if item.view == "mean_distance":
        return distance_figure(item.stacked(), list(item.layers), heading)
    if item.image is None:
        last = max(item.layers)
        matrix = np.asarray(item.layers[last], dtype=np.float32).mean(axis=0)  # [query, keys]
        queries = item.tokens[item.query_start:item.query_start + matrix.shape[0]]  # a row range's query tokens
        return attention_figure(matrix, queries, title or f"{heading}, layer {last}", key_tokens=item.tokens)
    pixels = None if image is None else image_pixels(image, item.image.height, item.image.width)
    return overlay_figure(pixels, attention_panels(item, item.image), heading, item.image,
                          value_label="attention probability")
