"""The `introspect` command line.

    introspect serve [server flags]        run the server (needs the server extra: torch)
    introspect --version                   this package's version and its contract's
    introspect info [--json]               the server's version and contract version
    introspect models [--json]             list the server's models
    introspect attention --text TEXT ...   one layer's attention map: summary, --json, --png
    introspect saliency --text TEXT ...    token attributions of a target: summary, --json, --png
    introspect ablate --text TEXT --target KIND ...  head ablation / importance: summary, --json, --png

attention, saliency and ablate take --image PATH (a PNG, JPEG or WebP file) instead of
--text for models that take images.
    introspect lens --text TEXT ...        the logit lens (LM heads): table, --json
    introspect heads --text TEXT ...       head statistics (entropy, sinks, induction, ...):
                                           roles table, --json, --png, --html
    introspect patch --clean TEXT --corrupted TEXT ...  circuits (patching, logit attribution,
                                           knockout): summary, --json, --png
    introspect shapley --text TEXT ...     Shapley head values: summary, --json, --png (bars)
    introspect qk --text TEXT [--text TEXT ...]  query-key embeddings (AttentionViz): summary,
                                           --json, --png, --html

Client commands talk to --server (default: $INTROSPECT_SERVER, else 127.0.0.1:50051;
the connection flags go before or after the command),
over TLS with --tls-ca/--tls-cert/--tls-key, with a bearer token from --token or
--token-file (and $INTROSPECT_TLS_CA, ..., $INTROSPECT_TOKEN, $INTROSPECT_TOKEN_FILE).
Errors print `error: <message>` to stderr and exit with status 1.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any, TextIO

import numpy as np
from google.protobuf import json_format

from . import cli_flags as flags
from introspect_contract import CONTRACT_VERSION, pb
from . import __version__
from .ablation import ABLATION_MODES, ABLATION_VALUES, AblationResult
from .cli_attention import add_attention_command
from .cli_head_statistics import add_heads_command
from .cli_lens import add_lens_command
from .cli_query_key import add_query_key_command
from .cli_patching import add_patch_command
from .cli_saliency import add_saliency_command
from .cli_shapley import add_shapley_command
from .cli_connection import DEFAULT_SERVER, SERVER_ENV, add_connection_arguments, client_of
from .client import Client
from .errors import IntrospectError
from .progress import StreamProgress

__all__ = ["DEFAULT_SERVER", "SERVER_ENV", "build_parser", "main"]


def _client_options(environ: Mapping[str, str]) -> argparse.ArgumentParser:
    """Flags every client subcommand takes."""
    parent = argparse.ArgumentParser(add_help=False)
    add_connection_arguments(parent, environ, defaults=False)
    parent.add_argument("--timeout", type=float, default=None, metavar="SECONDS", help="deadline of the call")
    parent.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                        help="progress lines on stderr (layers done, refinements with their delta); "
                             "default: on when stderr is a terminal")
    return parent


def build_parser(environ: Mapping[str, str] | None = None) -> argparse.ArgumentParser:
    """The argument parser of `introspect` (the environment supplies the defaults of the
    connection flags: --server, TLS, token)."""
    environ = os.environ if environ is None else environ
    client_options = _client_options(environ)
    parser = argparse.ArgumentParser(
        prog="introspect",
        description="Look inside transformer models served by an introspect server.",
    )
    parser.add_argument("--version", action="version", version=version_line())
    add_connection_arguments(parser, environ)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands.add_parser(
        "serve",
        help="run the server (flags: introspect serve --help)",
        add_help=False,
    )

    models = flags.add_client_command(
        commands, client_options, "models", "list the models the server has loaded",
        "List the server's models as a table, or as JSON with --json.",
    )
    models.add_argument(
        "--json", action="store_true",
        help="print the ListModels response in protobuf's JSON mapping (proto field names)",
    )
    models.set_defaults(run=_run_models)

    info = flags.add_client_command(
        commands, client_options, "info", "the server's version and contract version",
        "Print the server's version and the contract version it implements (GetServerInfo),\n"
        "beside this client's; --json prints the response.",
    )
    info.add_argument("--json", action="store_true", help="print the GetServerInfo response as JSON")
    info.set_defaults(run=_run_info)

    add_attention_command(commands, client_options)
    add_saliency_command(commands, client_options)
    _add_ablate_parser(commands, client_options)
    add_lens_command(commands, client_options)
    add_heads_command(commands, client_options)
    add_patch_command(commands, client_options)
    add_shapley_command(commands, client_options)
    add_query_key_command(commands, client_options)
    return parser


def version_line() -> str:
    """What --version prints: the package's version and the contract's."""
    return f"introspect {__version__} (contract introspect.v1 {CONTRACT_VERSION})"


def _run_info(args: argparse.Namespace, client: Client, out: TextIO) -> None:
    info = client.server_info(timeout=args.timeout)
    if args.json:
        document = json_format.MessageToDict(
            info, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
        )
        print(json.dumps(document, indent=2), file=out)
        return
    print(f"server   {args.server}: introspect {info.server_version} (contract introspect.v1 {info.contract_version})",
          file=out)
    print(f"client   {version_line()}", file=out)


def _models_table(models: Sequence[pb.ModelInfo]) -> str:
    """A plain-text table of model descriptions."""
    header = ("NAME", "ARCHITECTURE", "LAYERSxHEADS", "KV HEADS", "MAX TOKENS", "DTYPE", "DEVICE", "FINGERPRINT")
    rows = [header] + [
        (
            model.name,
            model.architecture,
            f"{model.num_layers}x{model.num_heads}",
            str(model.num_key_value_heads),
            str(model.max_tokens),
            model.dtype,
            model.device,
            model.fingerprint[:12],
        )
        for model in models
    ]
    widths = [max(len(row[column]) for row in rows) for column in range(len(header))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows)


def _run_models(args: argparse.Namespace, client: Client, out: TextIO) -> None:
    models = client.list_models(timeout=args.timeout)
    if args.json:
        response = pb.ListModelsResponse(models=models)
        document = json_format.MessageToDict(
            response, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
        )
        print(json.dumps(document, indent=2), file=out)
    elif models:
        print(_models_table(models), file=out)
    else:
        print("the server has no models loaded", file=out)


def _add_ablate_parser(commands: Any, client_options: argparse.ArgumentParser) -> None:
    ablate = flags.add_client_command(
        commands, client_options, "ablate", "what attention heads do for a target score: ablation or importance",
        (
            "Knock out attention heads and measure the change of a target score and of the\n"
            "whole output (KL divergence of the next-token or class distribution, cosine\n"
            "distance of the pooled embedding).\n\n"
            "Modes: per_head ablates every head (or each of --heads) on its own; joint\n"
            "ablates --heads together (with --continuation N greedy tokens on causal LMs);\n"
            "importance is the gradient of the target w.r.t. a gate on every head.\n\n"
            "Output: --png FILE writes a layers x heads heatmap (per_head: change of the\n"
            "target; importance: the gradients), --json prints the whole result (NaN as\n"
            "null); without either, a summary lists the heads that matter most."
        ),
    )
    flags.add_input_arguments(ablate, image=True)
    flags.add_target_arguments(ablate)
    ablate.add_argument("--mode", choices=list(ABLATION_MODES), default="per_head", help="default: per_head")
    ablate.add_argument("--value", choices=list(ABLATION_VALUES), default="zero",
                        help="zero the head, or replace it by its mean output (default: zero)")
    ablate.add_argument("--heads", type=flags.head_argument, nargs="+", default=[], metavar="LAYER:HEAD",
                        help="per_head: heads to ablate (default: all); joint: the set; importance: heads to report")
    ablate.add_argument("--mean-reference", action="append", default=[], metavar="TEXT",
                        help="value mean: a text to take the mean over (repeatable; default: the input)")
    ablate.add_argument("--continuation", type=int, default=0, metavar="N",
                        help="joint, causal LMs: greedy continuation of N tokens with and without the ablation")
    ablate.add_argument("--batch-size", type=int, default=0, metavar="N",
                        help="ablated variants per forward pass (default: the server chooses)")
    ablate.add_argument("--top", type=int, default=10, metavar="K", help="heads listed in the summary (default: 10)")
    flags.add_request_arguments(ablate)
    flags.add_output_arguments(ablate, "write a layers x heads heatmap PNG to FILE", "print the result as JSON")
    ablate.set_defaults(run=_run_ablate)


def _ablation_json(result: AblationResult, mode: str, value: str) -> dict[str, Any]:
    joint = result.joint
    return {
        "model": result.model,
        "fingerprint": result.fingerprint,
        "tokens": result.tokens,
        "token_ids": result.token_ids,
        "mode": mode,
        "value": value,
        "baseline_score": result.baseline_score,
        "output_change_metric": result.output_change_metric,
        "target_delta": flags.array_json(result.target_delta),
        "output_change": flags.array_json(result.output_change),
        "importance": flags.array_json(result.importance),
        "joint": None if joint is None else {
            "heads": [list(head) for head in joint.heads],
            "ablated_score": joint.ablated_score,
            "output_change": joint.output_change,
            "base_continuation": joint.base_continuation,
            "ablated_continuation": joint.ablated_continuation,
            "base_continuation_tokens": joint.base_continuation_tokens,
            "ablated_continuation_tokens": joint.ablated_continuation_tokens,
        },
    }


def _ablation_summary(result: AblationResult, top: int) -> str:
    """The baseline, then the heads that matter most (or the joint result)."""
    lines = [f"{result.model}: target score {result.baseline_score:.6g} without ablation"]
    joint = result.joint
    if joint is not None:
        heads = " ".join(f"{layer}:{head}" for layer, head in joint.heads)
        lines.append(f"heads {heads} ablated together: target score {joint.ablated_score:.6g} "
                     f"({joint.ablated_score - result.baseline_score:+.6g}), "
                     f"{result.output_change_metric} {joint.output_change:.6g}")
        if joint.base_continuation:
            lines.append(f"continuation:          {' '.join(joint.base_continuation_tokens)}")
            lines.append(f"ablated continuation:  {' '.join(joint.ablated_continuation_tokens)}")
        return "\n".join(lines)
    grid = result.importance if result.importance is not None else result.target_delta
    assert grid is not None
    finite = [(float(value), layer, head) for (layer, head), value in np.ndenumerate(grid) if np.isfinite(value)]
    strongest = sorted(finite, key=lambda item: -abs(item[0]))[: max(top, 0)]
    if result.importance is not None:
        lines.append("head       d target / d gate")
        lines += [f"{layer:>3}:{head:<4}  {value:+.6g}" for value, layer, head in strongest]
    else:
        assert result.output_change is not None
        lines.append(f"head       target change   {result.output_change_metric}")
        lines += [f"{layer:>3}:{head:<4}  {value:+13.6g}   {float(result.output_change[layer, head]):.6g}"
                  for value, layer, head in strongest]
    return "\n".join(lines)


def _run_ablate(args: argparse.Namespace, client: Client, out: TextIO) -> None:
    if args.png and args.mode == "joint":
        raise ValueError("--png draws per-head grids: use it with --mode per_head or importance")
    result = client.ablate(
        flags.input_of(args),
        model=args.model,
        target=flags.target_of(args, client),
        mode=args.mode,
        value=args.value,
        heads=args.heads,
        mean_references=args.mean_reference or None,
        continuation_tokens=args.continuation,
        batch_size=args.batch_size,
        truncate=args.truncate,
        cache=args.cache,
        timeout=args.timeout,
    )

    def draw(path: str) -> None:
        from .plot import head_figure, save_figure

        if result.importance is not None:
            grid, label, what = result.importance, "d target / d head gate", "head importance"
        else:
            assert result.target_delta is not None
            grid, label, what = result.target_delta, "change of the target score", f"{args.value} ablation"
        title = f"{result.model}: {what}, target {args.target or 'the model default'}"
        save_figure(head_figure(grid, title, value_label=label), path)

    flags.write_outputs(
        args, out, lambda: _ablation_json(result, args.mode, args.value), draw,
        lambda: _ablation_summary(result, args.top), flags.html_writer(result),
    )


def _serve(arguments: list[str]) -> int:
    """`introspect serve`: the server lives in the `server` extra (torch, transformers);
    the client never imports it but here, when asked to serve."""
    try:
        from introspect.server import main as serve
    except ImportError as error:
        print(f"error: the server is not installed ({error.name or error}): pip install 'introspect[server]'",
              file=sys.stderr)
        return 2
    return serve(arguments)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `introspect` console script; returns the exit status."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments[:1] == ["serve"]:
        return _serve(arguments[1:])
    parser = build_parser()
    args = parser.parse_args(arguments)
    if args.command == "serve":  # client flags first: `serve` takes only the server's own
        parser.error("`serve` must come first: introspect serve [server flags]; --server, --token and the TLS "
                     "flags are for the client commands")
    try:
        with client_of(args) as client:
            if args.progress or (args.progress is None and sys.stderr.isatty()):
                client.on_message = StreamProgress(sys.stderr)
            args.run(args, client, sys.stdout)
    except (IntrospectError, ValueError, ImportError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
