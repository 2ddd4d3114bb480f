"""`introspect attention`: one layer's attention map for a text or an image (or, for an
image, the patch grid of the [CLS] row, or every layer's mean attention distance), as a
summary, JSON (--json) or a PNG (--png)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any, TextIO

import numpy as np

from . import cli_flags as flags
from .client import Client
from .options import VIEWS
from .results import AttentionResult, InputAttention


def add_attention_command(commands: Any, client_options: argparse.ArgumentParser) -> None:
    """Adds the `attention` subcommand to the `introspect` parser's subcommands."""
    attention = flags.add_client_command(
        commands, client_options, "attention", "attention map of one layer for a text or an image",
        (
            "Attention probabilities of one layer for one text (or text pair) or image.\n\n"
            "Selection: --layer picks the layer (default: the last; negative counts from the\n"
            "end). With --head N the map is that head's. Without --head the view defaults to\n"
            "head_mean (the mean over all heads); --view heads without --head returns every\n"
            "head: --json then holds all of them, while --png and the summary show their mean\n"
            "(for an image, --png draws one panel per head).\n\n"
            "Images (--image PATH): --patch-grid returns only the [CLS] row over the patches,\n"
            "as the patch grid; --view mean_distance returns each head's mean attention\n"
            "distance in pixels, for every layer unless --layer is given.\n\n"
            "Output: --png FILE writes a heatmap (query tokens down, key tokens across; for an\n"
            "image, the map over the image, or distance against layer), --json prints {model,\n"
            "fingerprint, tokens, token_ids, image, view, heads, query_start, layers: {layer:\n"
            "values}} "
            "(values [heads_or_1][query][keys], [heads_or_1][rows][columns] with --patch-grid,\n"
            "[heads] for mean_distance); without either, a summary."
        ),
    )
    flags.add_input_arguments(attention, image=True)
    attention.add_argument("--layer", type=int, default=None, metavar="N",
                           help="layer, 0-based (default: -1, the last; mean_distance: every layer)")
    attention.add_argument("--head", type=int, default=None, metavar="N", help="one head, 0-based (default: all heads)")
    attention.add_argument(
        "--view", choices=list(VIEWS), default=None,
        help="heads, head_mean, head_max, rollout or mean_distance (images) "
             "(default: heads with --head or mean_distance, else head_mean)",
    )
    attention.add_argument("--patch-grid", action="store_true",
                           help="images: only the [CLS] row over the patches, laid out as the patch grid")
    attention.add_argument("--query-start", type=int, default=0, metavar="N",
                           help="first query row, inclusive; negative counts from the end (default 0)")
    attention.add_argument("--query-end", type=int, default=0, metavar="N",
                           help="last query row, exclusive; negative counts from the end (default 0: the end); "
                                "only rows [--query-start, --query-end) are computed and sent")
    flags.add_request_arguments(attention)
    flags.add_output_arguments(attention, "write a heatmap PNG to FILE", "print the selected values as JSON")
    attention.set_defaults(run=run_attention)


def _selection_label(view: str, head: int | None, heads: Sequence[int]) -> str:
    if view == "heads":
        return f"head {heads[0]}" if len(heads) == 1 else f"heads {heads[0]}..{heads[-1]}"
    scope = "all heads" if head is None else f"head {head}"
    return {
        "head_mean": f"mean over {scope}", "head_max": f"max over {scope}", "rollout": f"rollout (mean over {scope})",
        "mean_distance": "mean attention distance",
    }[view]


def _summary(item: InputAttention, matrix: np.ndarray, title: str) -> str:
    """The most attended key of every query token, one line each."""
    width = max(len(token) for token in item.tokens)
    lines = [title, f"{'query':>{width + 6}}  ->  most attended key (probability)"]
    for row, values in enumerate(matrix):  # matrix [query rows from item.query_start, keys]
        position = item.query_start + row
        key = int(np.argmax(values))
        lines.append(f"{position:>4}  {item.tokens[position]:<{width}}  ->  {key:>4}  {item.tokens[key]} "
                     f"({float(values[key]):.3f})")
    return "\n".join(lines)


def _grid_summary(grid: np.ndarray, title: str) -> str:
    """The [CLS] row over the patches, one line per patch row."""
    return "\n".join([title, "[CLS] attention to each patch (rows of the patch grid):"]
                     + [" ".join(f"{float(value):.3f}" for value in row) for row in grid])


def _distance_summary(item: InputAttention, title: str) -> str:
    """Each layer's mean attention distance per head, in pixels."""
    lines = [title, "layer  mean distance (pixels) of heads " + " ".join(str(head) for head in item.heads)]
    lines += [f"{layer:>5}  " + " ".join(f"{float(value):.1f}" for value in values)
              for layer, values in item.layers.items()]
    return "\n".join(lines)


def _attention_json(result: AttentionResult) -> dict[str, Any]:
    """{model, fingerprint, tokens, token_ids, image, view, heads, query_start, layers: {layer: values}}
    of the first input."""
    item = result[0]
    return {
        "model": result.model,
        "fingerprint": result.fingerprint,
        "tokens": item.tokens,
        "token_ids": item.token_ids,
        "image": flags.layout_json(item.image),
        "view": item.view,
        "heads": item.heads,
        "query_start": item.query_start,
        "layers": {str(layer): values.tolist() for layer, values in item.layers.items()},
    }


def _layers_of(args: argparse.Namespace, client: Client, view: str) -> list[int]:
    """The layers asked for: --layer (negative counts from the end), else the last; every
    layer for mean_distance without --layer."""
    if args.layer is None and view == "mean_distance":
        return []
    layer = -1 if args.layer is None else args.layer
    if layer < 0:  # counts from the end: ask the model's depth (the server checks the rest)
        info = client.get_model(args.model, timeout=args.timeout)
        layer += info.num_layers
        if layer < 0:
            raise ValueError(f"--layer {args.layer} is out of range: {info.name} has {info.num_layers} layers")
    return [layer]


def run_attention(args: argparse.Namespace, client: Client, out: TextIO) -> None:
    """Runs `introspect attention`."""
    view = args.view or ("heads" if args.head is not None else "head_mean")
    layers = _layers_of(args, client, view)
    result = client.attention(
        flags.input_of(args),
        model=args.model,
        layers=layers,
        heads=() if args.head is None else [args.head],
        view=view,
        patch_grid=args.patch_grid,
        query_start=args.query_start,
        query_end=args.query_end,
        truncate=args.truncate,
        cache=args.cache,
        timeout=args.timeout,
    )
    item = result[0]
    layer = max(item.layers) if item.layers else (layers or [0])[0]
    label = _selection_label(item.view, args.head, item.heads)
    title = f"{result.model}: {label}" if item.view == "mean_distance" else f"{result.model}: layer {layer}, {label}"

    def draw(path: str) -> None:
        from .plot import save_figure
        from .plot_images import figure_for

        save_figure(figure_for(result, image=args.image, title=title), path)

    def summary() -> str:
        if item.view == "mean_distance":
            return _distance_summary(item, title)
        values = item.layers[layer].astype(np.float32)  # [heads_or_1, query, keys] or [heads_or_1, rows, columns]
        if args.patch_grid:
            return _grid_summary(values.mean(axis=0), title)
        return _summary(item, values.mean(axis=0), title)  # one head (or reduced view): itself

    flags.write_outputs(args, out, lambda: _attention_json(result), draw, summary,
                        flags.html_writer(result, args.image))
