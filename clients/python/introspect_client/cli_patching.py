"""`introspect patch`: activation or attribution patching, direct logit attribution or
attention knockout of a clean text and its corrupted counterpart: a summary, --json or
--png (see `plot_patching`)."""

from __future__ import annotations

import argparse
from typing import Any, TextIO

import numpy as np

from . import cli_flags as flags
from .client import Client
from .patching import PATCH_DIRECTIONS, PATCH_POINTS, PATCHING_METHODS, PATCHING_METRICS
from .patching_results import PairPatching, PatchingResult


def add_patch_command(commands: Any, client_options: argparse.ArgumentParser) -> None:
    """Adds the `patch` subcommand to the `introspect` parser's subcommands."""
    parser = flags.add_client_command(
        commands, client_options, "patch", "circuits: activation/attribution patching, logit attribution, knockout",
        (
            "Patch activations between a clean text and a corrupted one (activation: exact;\n"
            "attribution: first-order estimate), split a logit difference into each head's\n"
            "and MLP's direct contribution (direct_logit_attribution, --target\n"
            "logit_difference), or block attention edges in windows of layers\n"
            "(attention_knockout, --knockout-queries/--knockout-keys).\n\n"
            "Output: --png FILE draws layer x position and layer x head heatmaps, one panel\n"
            "per point (normalized values with the target metric, raw with KL), a layer x\n"
            "head grid of direct contributions at the last position (MLPs as a last column)\n"
            "or the knockout's change per window; --json prints the whole result (NaN as\n"
            "null); without either, a summary of the strongest cells."
        ),
    )
    parser.add_argument("--clean", required=True, help="the clean text")
    parser.add_argument("--corrupted", default=None, help="the corrupted text (activation and attribution)")
    parser.add_argument("--model", default="", help="model name (default: the server's default model)")
    parser.add_argument("--method", choices=list(PATCHING_METHODS), default="activation", help="default: activation")
    parser.add_argument("--point", dest="points", choices=list(PATCH_POINTS), action="append", default=[],
                        help="a patch point (repeatable; default: resid_pre, attn_out, mlp_out, head)")
    parser.add_argument("--direction", choices=list(PATCH_DIRECTIONS), default="denoising",
                        help="denoising: clean into corrupted (default); noising: corrupted into clean")
    parser.add_argument("--metric", choices=list(PATCHING_METRICS), default="target", help="default: target")
    parser.add_argument("--layer", dest="layers", type=int, action="append", default=[], metavar="N",
                        help="a layer to patch (repeatable; default: all)")
    parser.add_argument("--at", dest="positions", type=int, action="append", default=[], metavar="N",
                        help="a clean position to patch, negative from the end (repeatable; default: all)")
    parser.add_argument("--with-exact", action="store_true", help="attribution: also exact patching, and correlation")
    parser.add_argument("--knockout-queries", type=int, nargs="+", default=[], metavar="N",
                        help="attention_knockout: query positions (negative from the end)")
    parser.add_argument("--knockout-keys", type=int, nargs="+", default=[], metavar="N",
                        help="attention_knockout: key positions they may no longer attend to")
    parser.add_argument("--window", type=int, default=1, metavar="N", help="attention_knockout: layers per window")
    parser.add_argument("--batch-size", type=int, default=0, metavar="N",
                        help="patched rows per forward pass (default: the server chooses)")
    parser.add_argument("--top", type=int, default=10, metavar="K", help="cells listed in the summary (default: 10)")
    flags.add_target_arguments(parser)
    flags.add_request_arguments(parser, truncate=False)
    flags.add_output_arguments(parser, "write the result's heatmaps (or knockout line) to FILE",
                               "print the result as JSON")
    parser.set_defaults(run=run_patch)


def pair_json(pair: PairPatching) -> dict[str, Any]:
    """One pair's (or the mean's) results as a JSON object (NaN as null)."""
    baseline = pair.baseline
    lda = pair.logit_attribution
    knockout = pair.knockout
    return {
        "pair_index": pair.index,
        "clean_tokens": None if pair.clean is None else pair.clean.tokens,
        "corrupted_tokens": None if pair.corrupted is None else pair.corrupted.tokens,
        "baseline": None if baseline is None else {
            "clean_score": baseline.clean_score, "corrupted_score": baseline.corrupted_score,
            "metric": baseline.metric, "num_layers": baseline.num_layers, "num_heads": baseline.num_heads,
            "batch_size": baseline.batch_size,
        },
        "maps": {
            f"{method}/{point}": {
                "layers": item.layers, "positions": item.positions, "heads": item.heads,
                "values": flags.array_json(item.values), "normalized": flags.array_json(item.normalized),
            }
            for (method, point), item in pair.maps.items()
        },
        "correlations": {point: {"pearson": item.pearson, "max_abs_difference": item.max_abs_difference}
                         for point, item in pair.correlations.items()},
        "logit_attribution": None if lda is None else {
            name: flags.array_json(getattr(lda, name))
            for name in ("heads", "mlps", "attention_biases", "embeddings", "bias", "logit_difference")
        },
        "knockout": None if knockout is None else {
            "window_starts": knockout.window_starts, "window": knockout.window,
            "values": flags.array_json(knockout.values), "change": flags.array_json(knockout.change),
        },
    }


def result_json(result: PatchingResult) -> dict[str, Any]:
    """The whole result as a JSON object."""
    return {
        "model": result.model,
        "fingerprint": result.fingerprint,
        "pairs": [pair_json(pair) for pair in result.pairs],
        "mean": None if result.mean is None else pair_json(result.mean),
    }


def _strongest(values: np.ndarray, top: int) -> list[tuple[float, tuple[int, ...]]]:
    cells = [(float(value), index) for index, value in np.ndenumerate(values) if np.isfinite(value)]
    return sorted(cells, key=lambda item: -abs(item[0]))[: max(top, 0)]


def summary(result: PatchingResult, top: int) -> str:
    """Each pair's baseline, then the strongest cells of the shown pair's results."""
    from .plot_patching import shown_pair

    lines = [f"{result.model}: {len(result.pairs)} pair(s)"]
    for pair in result.pairs:
        assert pair.baseline is not None
        lines.append(f"pair {pair.index}: {pair.baseline.metric} clean {pair.baseline.clean_score:.6g}, "
                     f"corrupted {pair.baseline.corrupted_score:.6g}")
    shown = shown_pair(result)
    for (method, point), item in shown.maps.items():
        values = item.normalized if item.normalized is not None else item.values
        axes = "layer, head, position" if values.ndim == 3 else ("layer, head" if point == "head" else "layer, position")
        lines.append(f"{method} {point} ({'normalized' if item.normalized is not None else 'raw'}; {axes}):")
        lines += [f"  {index}  {value:+.4g}" for value, index in _strongest(values, top)]
    for point, correlation in shown.correlations.items():
        lines.append(f"{point}: pearson {correlation.pearson:.4f}, max |diff| {correlation.max_abs_difference:.4g}")
    if shown.logit_attribution is not None:
        lines.append("direct logit attribution at the last position (layer, head):")
        lines += [f"  {index}  {value:+.4g}"
                  for value, index in _strongest(shown.logit_attribution.heads[:, :, -1], top)]
    if shown.knockout is not None:
        lines.append("knockout: window start -> change")
        lines += [f"  {start:>3}  {change:+.4g}" for start, change in zip(shown.knockout.window_starts,
                                                                        shown.knockout.change)]
    return "\n".join(lines)


def run_patch(args: argparse.Namespace, client: Client, out: TextIO) -> None:
    """Runs `introspect patch`."""
    wants_target = args.metric == "target" or args.target is not None
    result = client.patch(
        args.clean,
        args.corrupted,
        model=args.model,
        method=args.method,
        target=flags.target_of(args, client) if wants_target else None,
        metric=args.metric,
        points=args.points,
        direction=args.direction,
        layers=args.layers,
        positions=args.positions,
        with_exact=args.with_exact,
        knockout_queries=args.knockout_queries,
        knockout_keys=args.knockout_keys,
        window=args.window,
        batch_size=args.batch_size,
        cache=args.cache,
        timeout=args.timeout,
    )

    def draw(path: str) -> None:
        from .plot import save_figure
        from .plot_patching import patching_figure

        save_figure(patching_figure(result), path)

    flags.write_outputs(args, out, lambda: result_json(result), draw, lambda: summary(result, args.top),
                        flags.html_writer(result))
