"""`introspect heads`: statistics of every attention head over one text or several (mean
and standard deviation per layer and head), as a table of each head's dominant role,
JSON (--json), a picture (--png: a layer x head heatmap per statistic and one of the
roles) or an HTML view (--html)."""

from __future__ import annotations

import argparse
from typing import Any, TextIO

import numpy as np

from . import cli_flags as flags
from .client import Client
from .head_statistics import HIDDEN_NORM_COLUMNS, ROLE_STATISTICS, STATISTICS, HeadStatisticsResult

ROLE_ABBREVIATIONS = {"first_token": "sink", "special_tokens": "spec", "delimiters": "punct",
                      "previous_token": "prev", "same_token": "self", "induction": "ind", "retrieval": "retr"}
"""Short names of the roles in the pictures and the table."""


def add_heads_command(commands: Any, client_options: argparse.ArgumentParser) -> None:
    """Adds the `heads` subcommand to the `introspect` parser's subcommands."""
    parser = flags.add_client_command(
        commands, client_options, "heads", "head statistics: entropy, sinks, distance, induction, ... per head",
        (
            "Per layer and head, the mean and standard deviation over the texts of: attention\n"
            "entropy, attention on the first token (sink), on special tokens, on delimiters,\n"
            "mean attention distance, previous-token and same-token scores, hidden-state norms;\n"
            "for causal LMs also --statistic induction (random repeated sequences) and\n"
            "--statistic retrieval (greedy generation; --needle-start/--needle-end).\n\n"
            "Output: --json prints {model, layers, heads, mean, std, counts, roles, inputs};\n"
            "--png FILE draws a layer x head heatmap per statistic and the dominant role of\n"
            "each head; without either, a table of the dominant roles."
        ),
    )
    parser.add_argument("--text", dest="texts", action="append", default=[], metavar="TEXT",
                        help="an input text (repeatable; none for --statistic induction alone)")
    parser.add_argument("--model", default="", help="model name (default: the server's default model)")
    parser.add_argument("--statistic", dest="statistics", action="append", default=[], choices=list(STATISTICS),
                        help="a statistic (repeatable; default: entropy to hidden_norm)")
    parser.add_argument("--layer", dest="layers", type=int, action="append", default=[], metavar="N",
                        help="a layer (repeatable; default: all)")
    parser.add_argument("--head", dest="heads", type=int, action="append", default=[], metavar="N",
                        help="a head (repeatable; default: all)")
    parser.add_argument("--induction-length", type=int, default=0, metavar="N", help="induction: tokens (default 20)")
    parser.add_argument("--induction-samples", type=int, default=0, metavar="N",
                        help="induction: random sequences (default 4)")
    parser.add_argument("--induction-seed", type=int, default=0, metavar="N", help="induction: seed (default 0)")
    parser.add_argument("--retrieval-steps", type=int, default=0, metavar="N",
                        help="retrieval: tokens generated per text (default 8)")
    parser.add_argument("--needle-start", type=int, default=0, metavar="N", help="retrieval: needle start")
    parser.add_argument("--needle-end", type=int, default=0, metavar="N", help="retrieval: needle end (0: the end)")
    flags.add_request_arguments(parser)
    flags.add_output_arguments(parser, "draw a layer x head heatmap per statistic to FILE (PNG)",
                               "print the result as JSON")
    parser.set_defaults(run=run_heads)


def document(result: HeadStatisticsResult) -> dict[str, Any]:
    """The --json document."""
    return {
        "model": result.model,
        "fingerprint": result.fingerprint,
        "layers": result.layers,
        "heads": result.heads,
        "mean": {name: values.tolist() for name, values in result.mean.items()},
        "std": {name: values.tolist() for name, values in result.std.items()},
        "counts": result.counts,
        "hidden_norm_columns": list(HIDDEN_NORM_COLUMNS),
        "roles": result.roles(),
        "inputs": [{"tokens": item["tokens"], "token_ids": item["token_ids"]} for item in result.inputs],
        "generated_tokens": {str(item.input_index): item.generated_tokens
                             for item in result.per_input if item.generated_tokens},
    }


def summary(result: HeadStatisticsResult) -> str:
    """A table of each head's dominant role (its largest share-of-attention statistic)."""
    roles = result.roles()
    lines = [f"{result.model}: dominant role per head ({len(result.inputs)} inputs; "
             f"{', '.join(f'{short}={name}' for name, short in ROLE_ABBREVIATIONS.items() if name in result.mean)})",
             "layer  " + " ".join(f"{head:>5}" for head in result.heads)]
    for layer, row in zip(result.layers, roles):
        lines.append(f"{layer:>5}  " + " ".join(f"{ROLE_ABBREVIATIONS.get(role, role):>5}" for role in row))
    return "\n".join(lines)


def figure(result: HeadStatisticsResult) -> Any:
    """One layer x head heatmap per per-head statistic (values in the cells when small,
    the mean over the inputs), a layer x 3 one of the hidden-state norms, and the
    dominant role of each head (its largest share of attention), written in its cell."""
    from .plot import grid_panel, new_figure

    names = list(result.mean)
    roles = result.roles()
    panels = len(names) + (1 if any(name in ROLE_STATISTICS for name in names) else 0)
    columns = min(panels, 3)
    rows = -(-panels // columns)
    canvas = new_figure(5.5 * columns, 4.0 * rows)
    for index, name in enumerate(names):
        axes = canvas.add_subplot(rows, columns, index + 1)
        hidden = name == "hidden_norm"
        grid_panel(canvas, axes, result.mean[name], f"{name} (mean of {result.counts[name]})",
                   value_label=name, row_labels=[str(layer) for layer in result.layers],
                   column_labels=list(HIDDEN_NORM_COLUMNS) if hidden else [str(head) for head in result.heads],
                   column_name="" if hidden else "head", title_size=10)
    if panels > len(names):
        axes = canvas.add_subplot(rows, columns, panels)
        present = [name for name in ROLE_STATISTICS if name in result.mean]
        codes = np.array([[present.index(role) for role in row] for row in roles], dtype=np.float32)
        axes.imshow(codes, cmap="tab10", vmin=0, vmax=9, aspect="auto", interpolation="nearest")
        for (row, column), code in np.ndenumerate(codes):
            axes.text(column, row, ROLE_ABBREVIATIONS[present[int(code)]], ha="center", va="center", fontsize=7)
        axes.set_yticks(range(len(result.layers)), [str(layer) for layer in result.layers])
        axes.set_xticks(range(len(result.heads)), [str(head) for head in result.heads])
        axes.set_xlabel("head")
        axes.set_ylabel("layer")
        axes.set_title("dominant role (largest disjoint share of attention)", fontsize=10)
    return canvas


def run_heads(args: argparse.Namespace, client: Client, out: TextIO) -> None:
    """Runs `introspect heads`."""
    result = client.head_statistics(
        args.texts or None,
        model=args.model,
        statistics=args.statistics,
        layers=args.layers,
        heads=args.heads,
        induction_length=args.induction_length,
        induction_samples=args.induction_samples,
        induction_seed=args.induction_seed,
        retrieval_steps=args.retrieval_steps,
        needle_start=args.needle_start,
        needle_end=args.needle_end,
        truncate=args.truncate,
        cache=args.cache,
        timeout=args.timeout,
    )

    def draw(path: str) -> None:
        from .plot import save_figure

        save_figure(figure(result), path)

    flags.write_outputs(args, out, lambda: document(result), draw, lambda: summary(result), flags.html_writer(result))
