"""`introspect lens`: the logit lens of one text on a model with an LM head, as a table
of the top next token per layer and position, or JSON (--json)."""

from __future__ import annotations

import argparse
from typing import Any, TextIO

from . import cli_flags as flags
from .client import Client
from .logit_lens import LogitLensResult


def add_lens_command(commands: Any, client_options: argparse.ArgumentParser) -> None:
    """Adds the `lens` subcommand to the `introspect` parser's subcommands."""
    parser = flags.add_client_command(
        commands, client_options, "lens", "the logit lens: next-token predictions after every layer",
        (
            "Per layer and position, the residual stream after the layer through the model's\n"
            "final norm and unembedding (models with an LM head).\n\n"
            "Output: --json prints {model, tokens, token_ids, layers, positions, top_token_ids,\n"
            "top_tokens, top_probabilities, chosen_token_ids, chosen_probabilities}; without\n"
            "it, a table of the top token (and its probability) per layer and position."
        ),
    )
    flags.add_input_arguments(parser)
    parser.add_argument("--layer", dest="layers", type=int, action="append", default=[], metavar="N",
                        help="a layer to read (repeatable; default: all)")
    parser.add_argument("--at", dest="positions", type=int, action="append", default=[], metavar="N",
                        help="a token position, negative from the end (repeatable; default: all)")
    parser.add_argument("--top-k", type=int, default=0, metavar="K", help="next tokens per cell (default 5)")
    parser.add_argument("--token-id", type=int, default=None, metavar="N",
                        help="token whose probability is tracked (default: the final prediction)")
    flags.add_request_arguments(parser)
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    flags.add_html_argument(parser)
    parser.set_defaults(run=run_lens, png=None)  # no picture: write_outputs prints the table or JSON


def _document(result: LogitLensResult) -> dict[str, Any]:
    return {
        "model": result.model,
        "fingerprint": result.fingerprint,
        "tokens": result.tokens,
        "token_ids": result.token_ids,
        "layers": result.layers,
        "positions": result.positions,
        "top_token_ids": result.top_token_ids.tolist(),
        "top_tokens": result.top_tokens,
        "top_probabilities": result.top_probabilities.tolist(),
        "chosen_token_ids": result.chosen_token_ids,
        "chosen_probabilities": result.chosen_probabilities.tolist(),
    }


def _summary(result: LogitLensResult) -> str:
    """One row per layer: the top token and its probability at each position."""
    cells = [
        [f"{tokens[0]} {probabilities[0]:.2f}" for tokens, probabilities in zip(layer_tokens, layer_probabilities)]
        for layer_tokens, layer_probabilities in zip(result.top_tokens, result.top_probabilities)
    ]
    header = [result.tokens[position] for position in result.positions]
    width = max(len(text) for text in [*header, *(cell for row in cells for cell in row)])
    lines = [f"{result.model}: logit lens (top token and probability after each layer)",
             "layer  " + "  ".join(f"{text:<{width}}" for text in header)]
    for layer, row in zip(result.layers, cells):
        lines.append(f"{layer:>5}  " + "  ".join(f"{cell:<{width}}" for cell in row))
    return "\n".join(lines)


def run_lens(args: argparse.Namespace, client: Client, out: TextIO) -> None:
    """Runs `introspect lens`."""
    result = client.logit_lens(
        flags.input_of(args),
        model=args.model,
        layers=args.layers,
        positions=args.positions,
        top_k=args.top_k,
        token_id=args.token_id,
        truncate=args.truncate,
        cache=args.cache,
        timeout=args.timeout,
    )
    flags.write_outputs(args, out, lambda: _document(result), lambda path: None, lambda: _summary(result),
                        flags.html_writer(result))
