"""`introspect shapley`: Shapley values of attention heads for a target score, as a table
of the largest values, JSON (--json), bars with standard errors (--png) or an HTML grid
(--html)."""

from __future__ import annotations

import argparse
from typing import Any, TextIO

import numpy as np

from . import cli_flags as flags
from .ablation import ABLATION_VALUES
from .client import Client
from .shapley import ShapleyHeadsResult


def add_shapley_command(commands: Any, client_options: argparse.ArgumentParser) -> None:
    """Adds the `shapley` subcommand to the `introspect` parser's subcommands."""
    parser = flags.add_client_command(
        commands, client_options, "shapley", "Shapley values of attention heads for a target score",
        (
            "The value of a coalition of the chosen heads is the target score with those heads\n"
            "kept and the other chosen heads ablated; each head's Shapley value is exact for 12\n"
            "heads or fewer, else estimated from antithetic permutations until every standard\n"
            "error is at most --max-se (or --max-permutations ran).\n\n"
            "Output: --json prints {model, tokens, heads, values, standard_errors, full_score,\n"
            "empty_score, exact, converged, permutations, evaluations}; --png draws bars with\n"
            "error bars; without either, the heads with the largest values."
        ),
    )
    flags.add_input_arguments(parser, image=True)
    flags.add_target_arguments(parser)
    parser.add_argument("--heads", type=flags.head_argument, nargs="+", default=None, metavar="LAYER:HEAD",
                        help="the heads valued (default: every head of the model)")
    parser.add_argument("--value", choices=list(ABLATION_VALUES), default="zero",
                        help="how a head left out is ablated (default: zero)")
    parser.add_argument("--max-se", type=float, default=0.0, metavar="X",
                        help="stop sampling once every standard error is at most X (default: run the budget)")
    parser.add_argument("--max-permutations", type=int, default=0, metavar="N",
                        help="sample budget in permutations (default: the server's)")
    parser.add_argument("--seed", type=int, default=0, metavar="N", help="seed of the sampler (default: 0)")
    parser.add_argument("--sample", action="store_true", help="sample even when exact enumeration would run")
    parser.add_argument("--batch-size", type=int, default=0, metavar="N",
                        help="coalitions per forward pass (default: the server chooses)")
    parser.add_argument("--top", type=int, default=10, metavar="K", help="heads listed in the summary (default: 10)")
    flags.add_request_arguments(parser)
    flags.add_output_arguments(parser, "write bars of the values with standard errors to FILE (PNG)",
                               "print the result as JSON")
    parser.set_defaults(run=run_shapley)


def document(result: ShapleyHeadsResult) -> dict[str, Any]:
    """The --json document."""
    return {
        "model": result.model,
        "fingerprint": result.fingerprint,
        "tokens": result.tokens,
        "heads": [list(head) for head in result.heads],
        "values": flags.array_json(result.values),
        "standard_errors": flags.array_json(result.standard_errors),
        "full_score": result.full_score,
        "empty_score": result.empty_score,
        "exact": result.exact,
        "converged": result.converged,
        "permutations": result.permutations,
        "evaluations": result.evaluations,
    }


def summary(result: ShapleyHeadsResult, top: int) -> str:
    """The heads with the largest absolute values."""
    how = "exact" if result.exact else f"{result.permutations} permutations" + (
        ", converged" if result.converged else "")
    lines = [(f"{result.model}: Shapley head values ({how}); score {result.full_score:.6g} with every chosen head, "
              f"{result.empty_score:.6g} without")]
    for index in np.argsort(-np.abs(result.values))[:top]:
        layer, head = result.heads[index]
        lines.append(f"  {layer}:{head}  {result.values[index]:+.6g} ± {result.standard_errors[index]:.2g}")
    return "\n".join(lines)


def run_shapley(args: argparse.Namespace, client: Client, out: TextIO) -> None:
    """Runs `introspect shapley`."""
    result = client.shapley_heads(
        flags.input_of(args),
        model=args.model,
        target=flags.target_of(args, client),
        heads="all" if args.heads is None else args.heads,
        value=args.value,
        max_standard_error=args.max_se,
        max_permutations=args.max_permutations,
        seed=args.seed,
        sample=args.sample,
        batch_size=args.batch_size,
        truncate=args.truncate,
        cache=args.cache,
        timeout=args.timeout,
    )

    def draw(path: str) -> None:
        from .plot import head_value_bars, save_figure

        labels = [f"{layer}:{head}" for layer, head in result.heads]
        how = "exact" if result.exact else f"{result.permutations} permutations, ± 1 SE"
        title = f"{result.model}: Shapley head values ({how})"
        save_figure(head_value_bars(result.values, result.standard_errors, labels, title), path)

    flags.write_outputs(args, out, lambda: document(result), draw, lambda: summary(result, args.top),
                        flags.html_writer(result))
