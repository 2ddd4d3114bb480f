"""`introspect qk`: query-key embeddings (AttentionViz) of one or more texts: a summary per
(layer, head), JSON (--json), a scatter per (layer, head) (--png) or an HTML view (--html)."""

from __future__ import annotations

import argparse
import math
from typing import Any, TextIO

import numpy as np

from . import cli_flags as flags
from .client import Client
from .query_key import PROJECTIONS, QueryKeyEmbeddingsResult

MAX_PANELS = 16
"""Scatter panels one PNG draws (the first (layer, head) pairs of the stream)."""
QUERY_COLOUR, KEY_COLOUR = "#1b9e77", "#d95f02"


def add_query_key_command(commands: Any, client_options: argparse.ArgumentParser) -> None:
    """Adds the `qk` subcommand to the `introspect` parser's subcommands."""
    parser = flags.add_client_command(
        commands, client_options, "qk", "query-key embeddings (AttentionViz): a joint 2-D map of queries and keys",
        (
            "Per layer and query head, the post-rotary query and key vector of every token of the\n"
            "texts, normalised as AttentionViz does (keys translated onto the queries' mean, then\n"
            "both scaled to one mean norm) and projected jointly to 2-D on the server.\n\n"
            "Output: --json prints {model, tokens, input_indices, positions, projections: [{layer,\n"
            "head, key_head, projection, coordinates [2T, 2] (queries, then keys),\n"
            "explained_variance_ratio, query_mean_norm, key_mean_norm, scale, vectors}]}; --png\n"
            f"FILE draws a scatter per (layer, head) (at most {MAX_PANELS}: queries green, keys orange,\n"
            "later positions more opaque); --html FILE an interactive scatter (token on hover);\n"
            "otherwise a summary line per (layer, head)."
        ),
    )
    parser.add_argument("--text", dest="texts", action="append", required=True, metavar="TEXT",
                        help="an input text (repeatable: the points of every text are projected together)")
    parser.add_argument("--model", default="", help="model name (default: the server's default model)")
    parser.add_argument("--layer", dest="layers", type=int, action="append", default=[], metavar="N",
                        help="a layer (repeatable; default: all)")
    parser.add_argument("--head", dest="heads", type=int, action="append", default=[], metavar="N",
                        help="a query head (repeatable; default: all)")
    parser.add_argument("--projection", choices=[name for name in PROJECTIONS if name != "t-sne"], default="pca",
                        help="the 2-D projection (umap and tsne need umap-learn / scikit-learn on the server)")
    parser.add_argument("--vectors", action="store_true",
                        help="also fetch the normalised vectors (in --json)")
    flags.add_request_arguments(parser)
    flags.add_output_arguments(parser, "write a scatter of each (layer, head) to FILE", "print the result as JSON")
    parser.set_defaults(run=run_query_key)


def document(result: QueryKeyEmbeddingsResult) -> dict[str, Any]:
    """The result as a JSON document."""
    return {
        "model": result.model,
        "fingerprint": result.fingerprint,
        "tokens": result.tokens,
        "input_indices": result.input_indices,
        "positions": result.positions,
        "projections": [
            {
                "layer": item.layer, "head": item.head, "key_head": item.key_head, "projection": item.projection,
                "coordinates": item.coordinates.tolist(),
                "explained_variance_ratio": item.explained_variance_ratio,
                "query_mean_norm": item.query_mean_norm, "key_mean_norm": item.key_mean_norm, "scale": item.scale,
                "vectors": None if item.vectors is None else item.vectors.tolist(),
            }
            for item in result.projections
        ],
    }


def summary(result: QueryKeyEmbeddingsResult) -> str:
    """One line per (layer, head): the normalisation and, for PCA, the variance explained."""
    lines = [f"{result.model}: query-key embeddings of {result.num_tokens} tokens ({2 * result.num_tokens} points)"]
    for item in result.projections:
        explained = (f", PCA explains {item.explained_variance_ratio[0]:.1%} + {item.explained_variance_ratio[1]:.1%}"
                     if item.explained_variance_ratio else "")
        lines.append(f"layer {item.layer} head {item.head} (key head {item.key_head}): {item.projection}, "
                     f"mean |q| {item.query_mean_norm:.3g}, mean |k| {item.key_mean_norm:.3g}, "
                     f"scale {item.scale:.3g}{explained}")
    return "\n".join(lines)


def position_shades(result: QueryKeyEmbeddingsResult) -> np.ndarray:
    """[2T] in [0.25, 1]: each point's position relative to its input's length (later: larger)."""
    lengths = {index: result.input_indices.count(index) for index in set(result.input_indices)}
    relative = np.array([(position + 1) / lengths[index]
                         for index, position in zip(result.input_indices, result.positions)], dtype=float)
    return np.tile(0.25 + 0.75 * relative, 2)


def figure(result: QueryKeyEmbeddingsResult) -> Any:
    """A matplotlib Figure: one scatter per (layer, head), queries and keys coloured apart,
    opacity by position."""
    from matplotlib.colors import to_rgba

    from .plot import new_figure

    projections = result.projections[:MAX_PANELS]
    columns = min(4, max(len(projections), 1))
    rows = max(math.ceil(len(projections) / columns), 1)
    drawn = new_figure(3.2 * columns, 3.2 * rows)
    shades = position_shades(result)
    count = result.num_tokens
    colours = np.array([to_rgba(QUERY_COLOUR)] * count + [to_rgba(KEY_COLOUR)] * count)
    colours[:, 3] = shades
    for index, item in enumerate(projections):
        axes = drawn.add_subplot(rows, columns, index + 1)
        points = item.coordinates
        axes.scatter(points[:count, 0], points[:count, 1], c=colours[:count], s=14, marker="o", label="query")
        axes.scatter(points[count:, 0], points[count:, 1], c=colours[count:], s=14, marker="^", label="key")
        axes.set_title(f"L{item.layer} H{item.head} ({item.projection})", fontsize=9)
        axes.set_xticks([])
        axes.set_yticks([])
        if index == 0:
            axes.legend(fontsize=7, loc="best")
    return drawn


def run_query_key(args: argparse.Namespace, client: Client, out: TextIO) -> None:
    """Runs `introspect qk`."""
    result = client.query_key_embeddings(
        args.texts, model=args.model, layers=args.layers, heads=args.heads, projection=args.projection,
        include_vectors=args.vectors, truncate=args.truncate, cache=args.cache, timeout=args.timeout,
    )

    def draw(path: str) -> None:
        from .plot import save_figure

        save_figure(figure(result), path)

    flags.write_outputs(args, out, lambda: document(result), draw, lambda: summary(result), flags.html_writer(result))
