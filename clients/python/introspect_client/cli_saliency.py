"""`introspect saliency`: per-token attributions of a target score for one text or image,
as a summary, JSON (--json) or a PNG (--png) of the tokens coloured by score or of the
map over the image."""

from __future__ import annotations

import argparse
from typing import Any, TextIO

from . import cli_flags as flags
from .client import Client
from .saliency import BASELINES, CAM_METHODS, CAM_POINTS, INTEGRATION_RULES, SaliencyResult

METHOD_CHOICES = ("ig", "gradient", "gradient_x_input", "smoothgrad", "occlusion", "rollout", "flow") + CAM_METHODS
_SUMMARY_BAR_WIDTH = 30


def add_saliency_command(commands: Any, client_options: argparse.ArgumentParser) -> None:
    """Adds the `saliency` subcommand to the `introspect` parser's subcommands."""
    parser = flags.add_client_command(
        commands, client_options, "saliency", "which input tokens drove a target score",
        (
            "Attributions of a target score to the tokens of one text, or to the patches and\n"
            "pixels of one image (--image PATH; the CAM methods grad_cam, hi_res_cam,\n"
            "xgrad_cam and layer_cam are for images only).\n\n"
            "Targets: next_token (causal LM: log-probability of --token-id, default the\n"
            "prediction, after --position), logit_difference (--token-id minus\n"
            "--contrast-token-id), class (classifier: --class, default the prediction;\n"
            "--probability for the softmax), similarity (encoder: cosine to --reference),\n"
            "norm (encoder: norm of the pooled embedding). Default: the model's first\n"
            "(norm for encoders without --reference).\n\n"
            "Output: --png FILE colours the tokens by score (images: the map over the image,\n"
            "one panel per --also method), --json prints {model, method, tokens, token_ids,\n"
            "image, scores, grid_scores, pixel_scores, upsampled_scores, target_score,\n"
            "baseline_score, steps, convergence_delta, converged, refinements, also: {method:\n"
            "{scores, grid_scores, ...}}}; without either, a table of the scores."
        ),
    )
    flags.add_input_arguments(parser, image=True)
    parser.add_argument("--method", choices=METHOD_CHOICES, default="ig", help="attribution method (default: ig)")
    flags.add_target_arguments(parser)
    parser.add_argument("--baseline", choices=list(BASELINES), default="default",
                        help="ig baseline (images: black, blur or noise)")
    parser.add_argument("--blur-sigma", type=float, default=0.0, metavar="X",
                        help="baseline blur: Gaussian std in pixels (default 5)")
    parser.add_argument(
        "--rule", choices=list(INTEGRATION_RULES), default="default",
        help="ig rule (default: gauss_legendre; riemann_trapezoid with --tolerance)",
    )
    parser.add_argument("--steps", type=int, default=0, metavar="N", help="ig steps (default 50; the most with --tolerance)")
    parser.add_argument("--tolerance", type=float, default=0.0, metavar="X", help="ig: stop once the delta is <= X")
    parser.add_argument("--batch-size", type=int, default=0, metavar="N", help="rows per forward pass (0: auto)")
    parser.add_argument("--samples", type=int, default=0, metavar="N", help="smoothgrad samples (default 20)")
    parser.add_argument("--noise-level", type=float, default=0.0, metavar="X", help="smoothgrad noise (default 0.1)")
    parser.add_argument("--seed", type=int, default=0, metavar="N", help="smoothgrad seed; baseline noise: its seed")
    parser.add_argument("--span", type=int, default=0, metavar="N", help="occlusion span (default 1)")
    parser.add_argument("--stride", type=int, default=0, metavar="N", help="occlusion stride (default 1)")
    cam = parser.add_argument_group("CAM methods (images)")
    cam.add_argument("--cam-layer", type=int, default=None, metavar="N", help="block read, 0-based (default: the last)")
    cam.add_argument("--cam-point", choices=list(CAM_POINTS), default="default",
                     help="where in the block (default: attention_input)")
    cam.add_argument("--also", action="append", choices=CAM_METHODS, default=[], metavar="METHOD",
                     help="another CAM method from the same pass (repeatable)")
    parser.add_argument("--upsample", action="store_true",
                        help="images: also the grid scores resized to the processed image")
    flags.add_request_arguments(parser)
    flags.add_output_arguments(parser, "write the coloured tokens to a PNG FILE", "print the result as JSON")
    parser.set_defaults(run=run_saliency)


def _scores_json(result: SaliencyResult) -> dict[str, Any]:
    """The scores of one method: per token and, for images, the maps."""
    return {
        "scores": result.scores.tolist(),
        "grid_scores": flags.array_json(result.grid_scores),
        "pixel_scores": flags.array_json(result.pixel_scores),
        "upsampled_scores": flags.array_json(result.upsampled_scores),
        "target_score": result.target_score,
    }


def _document(result: SaliencyResult, method: str) -> dict[str, Any]:
    return {
        "model": result.model,
        "fingerprint": result.fingerprint,
        "method": method,
        "tokens": result.tokens,
        "token_ids": result.token_ids,
        "image": flags.layout_json(result.image),
        **_scores_json(result),
        "baseline_score": result.baseline_score,
        "steps": result.steps,
        "convergence_delta": result.convergence_delta,
        "converged": result.converged,
        "refinements": [
            {"steps": item.steps, "convergence_delta": item.convergence_delta} for item in result.refinements
        ],
        "also": {name: _scores_json(item) for name, item in result.by_method.items() if name != result.method},
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
        blur_sigma=args.blur_sigma,
        span=args.span,
        stride=args.stride,
        cam_layer=args.cam_layer,
        cam_point=args.cam_point,
        also=args.also,
        upsample=args.upsample,
        truncate=args.truncate,
        cache=args.cache,
        timeout=args.timeout,
    )
    title = f"{result.model}: {args.method} of {target.WhichOneof('kind')}"
    if args.method in CAM_METHODS:
        title += f", layer {'last' if args.cam_layer is None else args.cam_layer}"

    def draw(path: str) -> None:
        from .plot import save_figure
        from .plot_images import figure_for

        save_figure(figure_for(result, image=args.image, title=title), path)

    flags.write_outputs(args, out, lambda: _document(result, args.method), draw, lambda: _summary(result, title),
                        flags.html_writer(result, args.image))
