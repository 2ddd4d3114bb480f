"""Results as xarray objects with named axes, for `result.to_xarray()`.

xarray is optional (`pip install "introspect[xarray]"`); without it `to_xarray()` raises
ImportError saying what to install. Axes:

- attention, per input: ("layer", "head", "query", "key"), the query and key positions as
  coordinates and their tokens as the coordinates "query_token" and "key_token"; with
  top_k the last axis is "rank" and the coordinate "key_index" holds the key positions;
  with patch_grid ("layer", "head", "grid_row", "grid_column"); for "mean_distance"
  ("layer", "head"). Views reduced over heads keep a "head" axis of size 1 whose
  coordinate is the view's name.
- saliency: ("token",) with the token strings as the coordinate "token_text"
  (per_dimension adds a second array, ("token", "hidden")).
- head ablation: a Dataset of the [layer, head] grids the result holds.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from .ablation import AblationResult
    from .results import InputAttention
    from .saliency import SaliencyResult

INSTALL_HINT = "xarray is not installed: pip install 'introspect[xarray]' (or pip install xarray)"


def _xarray() -> Any:
    """The xarray module, or ImportError naming what to install."""
    try:
        import xarray
    except ImportError as error:
        raise ImportError(INSTALL_HINT, name="xarray") from error
    return xarray


def attention_dataarray(item: InputAttention) -> Any:
    """One input's attention as an xarray.DataArray (axes in the module docstring)."""
    xr = _xarray()
    if not item.layers:
        raise ValueError("the result holds no layers")
    layers = sorted(item.layers)
    values = item.stacked()
    heads: list[Any] = list(item.heads) if item.heads else [item.view]
    coords: dict[str, Any] = {"layer": layers, "head": heads}
    attrs = {"view": item.view, "query_start": item.query_start}
    if item.view == "mean_distance":
        return xr.DataArray(values, dims=("layer", "head"), coords=coords, attrs=attrs, name="mean_distance")
    if item.image is not None and values.shape[2:] == (item.image.grid_rows, item.image.grid_columns):
        coords |= {"grid_row": np.arange(values.shape[2]), "grid_column": np.arange(values.shape[3])}
        return xr.DataArray(values, dims=("layer", "head", "grid_row", "grid_column"), coords=coords, attrs=attrs,
                            name="attention")
    tokens = np.asarray(item.tokens, dtype=object)
    queries = np.arange(item.query_start, item.query_start + values.shape[2])
    coords |= {"query": queries, "query_token": ("query", tokens[queries])}
    if item.key_indices:
        indices = np.stack([item.key_indices[layer] for layer in layers])
        coords |= {"rank": np.arange(values.shape[3]), "key_index": (("layer", "head", "query", "rank"), indices)}
        return xr.DataArray(values, dims=("layer", "head", "query", "rank"), coords=coords, attrs=attrs,
                            name="attention")
    coords |= {"key": np.arange(values.shape[3]), "key_token": ("key", tokens[: values.shape[3]])}
    return xr.DataArray(values, dims=("layer", "head", "query", "key"), coords=coords, attrs=attrs, name="attention")


def saliency_dataarray(result: SaliencyResult) -> Any:
    """Token scores as a DataArray ("token",), token strings as "token_text"; with
    per_dimension a Dataset of "scores" and "per_dimension" ("token", "hidden")."""
    xr = _xarray()
    coords = {"token": np.arange(len(result.scores)),
              "token_text": ("token", np.asarray(result.tokens[: len(result.scores)], dtype=object))}
    attrs = {"model": result.model, "method": result.method, "target_score": result.target_score,
             "steps": result.steps, "convergence_delta": result.convergence_delta}
    scores = xr.DataArray(result.scores, dims=("token",), coords=coords, attrs=attrs, name="scores")
    if result.per_dimension is None:
        return scores
    per_dimension = xr.DataArray(result.per_dimension, dims=("token", "hidden"), coords=coords)
    return xr.Dataset({"scores": scores, "per_dimension": per_dimension}, attrs=attrs)


def ablation_dataset(result: AblationResult) -> Any:
    """The [layer, head] grids of a head ablation (target_delta, output_change,
    importance: those the mode gives) as an xarray.Dataset."""
    xr = _xarray()
    grids = {name: getattr(result, name) for name in ("target_delta", "output_change", "importance")}
    grids = {name: grid for name, grid in grids.items() if grid is not None}
    if not grids:
        raise ValueError("the result holds no per-head grid (joint mode)")
    layers, heads = next(iter(grids.values())).shape
    coords = {"layer": np.arange(layers), "head": np.arange(heads)}
    attrs = {"model": result.model, "baseline_score": result.baseline_score,
             "output_change_metric": result.output_change_metric}
    return xr.Dataset({name: (("layer", "head"), grid) for name, grid in grids.items()}, coords=coords, attrs=attrs)
