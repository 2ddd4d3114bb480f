"""`introspect saliency`: per-token attributions of a target score for one text, as a
summary, JSON (--json) or a PNG of the tokens coloured by score (--png)."""

from __future__ import annotations

import argparse
from typing import Any, TextIO

from . import cli_flags as flags
from .client import Client
from .saliency import BASELINES, INTEGRATION_RULES, SaliencyResult

METHOD_CHOICES = ("ig", "gradient", "gradient_x_input", "smoothgrad", "occlusion", "rollout", "flow")
_SUMMARY_BAR_WIDTH = 30


def add_saliency_command(commands: Any, client_options: argparse.ArgumentParser) -> None:
    """Adds the `saliency` subcommand to the `introspect` parser's subcommands."""
    parser = flags.add_client_command(
        commands, client_options, "saliency", "which input tokens drove a target score",
        (
            "Attributions of a target score to the tokens of one text.\n\n"
            "Targets: next_token (causal LM: log-probability of --token-id, default the\n"
            "prediction, after --position), logit_difference (--token-id minus\n"
            "--contrast-token-id), class (classifier: --class, default the prediction;\n"
            "--probability for the softmax), similarity (encoder: cosine to --reference),\n"
            "norm (encoder: norm of the pooled embedding). Default: the model's first\n"
            "(norm for encoders without --reference).\n\n"
            "Output: --png FILE colours the tokens by score, --json prints {model, method,\n"
            "tokens, token_ids, scores, target_score, baseline_score, steps,\n"
            "convergence_delta, converged, refinements}; without either, a table of the scores."
        ),
    )
    flags.add_input_arguments(parser)
    parser.add_argument("--method", choices=METHOD_CHOICES, default="ig", help="attribution method (default: ig)")
    flags.add_target_arguments(parser)
    parser.add_argument("--baseline", choices=list(BASELINES), default="default", help="ig baseline")
    parser.add_argument(
        "--rule", choices=list(INTEGRATION_RULES), default="default",
        help="ig rule (default: gauss_legendre; riemann_trapezoid with --tolerance)",
    )
    parser.add_argument("--steps", type=int, default=0, metavar="N", help="ig steps (default 50; the most with --tolerance)")
    parser.add_argument("--tolerance", type=float, default=0.0, metavar="X", help="ig: stop once the delta is <= X")
    parser.add_argument("--batch-size", type=int, default=0, metavar="N", help="rows per forward pass (0: auto)")
    parser.add_argument("--samples", type=int, default=0, metavar="N", help="smoothgrad samples (default 20)")
    parser.add_argument("--noise-level", type=float, default=0.0, metavar="X", help="smoothgrad noise (default 0.1)")
    parser.add_argument("--seed", type=int, default=0, metavar="N", help="smoothgrad seed")
    parser.add_argument("--span", type=int, default=0, metavar="N", help="occlusion span (default 1)")
    parser.add_argument("--stride", type=int, default=0, metavar="N", help="occlusion stride (default 1)")
    flags.add_request_arguments(parser)
    flags.add_output_arguments(parser, "write the coloured tokens to a PNG FILE", "print the result as JSON")
    parser.set_defaults(run=run_saliency)


def _document(result: SaliencyResult, method: str) -> dict[str, Any]:
    return {
        "model": result.model,
        "fingerprint": result.fingerprint,
        "method": method,
        "tokens": result.tokens,
        "token_ids": result.token_ids,
        "scores": result.scores.tolist(),
        "target_score": result.target_score,
        "baseline_score": result.baseline_score,
        "steps": result.steps,
        "convergence_delta": result.convergence_delta,
        "converged": result.converged,
        "refinements": [
            {"steps": item.steps, "convergence_delta": item.convergence_delta} for item in result.refinements
        ],
    }


def _summary(result: SaliencyResult, title: str) -> str:
    """One line per token: position, token, score and a bar of its magnitude."""
    width = max(len(token) for token in result.tokens)
    largest = float(abs(result.scores).max()) or 1.0
    lines = [title, f"target score {result.target_score:.6g}"]
    if result.steps:
        lines[-1] += f", {result.steps} steps, convergence delta {result.convergence_delta:.3g}"
    if not result.converged:
        lines[-1] += ", did not converge"
    for position, (token, score) in enumerate(zip(result.tokens, result.scores)):
        bar = ("+" if score >= 0 else "-") * round(_SUMMARY_BAR_WIDTH * abs(float(score)) / largest)
        lines.append(f"{position:>4}  {token:<{width}}  {float(score):>+12.5g}  {bar}")
    return "\n".join(lines)


def run_saliency(args: argparse.Namespace, client: Client, out: TextIO) -> None:
    """Runs `introspect saliency`."""
    target = flags.target_of(args, client)
    result = client.saliency(
        flags.input_of(args),
        model=args.model,
        target=target,
        method=args.method,
        baseline=args.baseline,
        rule=args.rule,
        steps=args.steps,
        tolerance=args.tolerance,
        batch_size=args.batch_size,
        samples=args.samples,
        noise_level=args.noise_level,
        seed=args.seed,
        span=args.span,
        stride=args.stride,
        truncate=args.truncate,
        cache=args.cache,
        timeout=args.timeout,
    )
    title = f"{result.model}: {args.method} of {target.WhichOneof('kind')}"

    def draw(path: str) -> None:
        from .plot import token_saliency

        token_saliency(result.scores, result.tokens, title, path)

    flags.write_outputs(args, out, lambda: _document(result, args.method), draw, lambda: _summary(result, title))
