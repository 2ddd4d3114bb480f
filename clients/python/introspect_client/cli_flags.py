"""Flags that several `introspect` subcommands take, defined once, and what they turn
into: the input, the target, the request options and the outputs."""

from __future__ import annotations

import argparse
import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from . import targets
from introspect_contract import pb
from .client import Client
from .image_layout import ImageLayout
from .options import CACHE_POLICIES

TARGET_CHOICES = ("next_token", "logit_difference", "class", "similarity", "norm")


def add_client_command(
    commands: Any, client_options: argparse.ArgumentParser, name: str, help_text: str, description: str
) -> argparse.ArgumentParser:
    """Adds a subcommand that talks to the server (it takes the `client_options` flags);
    its description is printed as written."""
    return commands.add_parser(  # type: ignore[no-any-return]
        name,
        parents=[client_options],
        help=help_text,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=description,
    )


def add_input_arguments(parser: argparse.ArgumentParser, *, image: bool = False) -> None:
    """--text, --pair and --model: one text (or text pair) for one model; with `image`,
    --image PATH too, in place of --text."""
    if image:
        source = parser.add_mutually_exclusive_group(required=True)
        source.add_argument("--text", help="the input text")
        source.add_argument("--image", type=Path, default=None, metavar="PATH",
                            help="an image file (PNG, JPEG or WebP) instead of --text, for models that take images")
    else:
        parser.add_argument("--text", required=True, help="the input text")
    parser.add_argument("--pair", default=None, metavar="TEXT", help="optional second segment (text pair)")
    parser.add_argument("--model", default="", help="model name (default: the server's default model)")


def input_of(args: argparse.Namespace) -> str | tuple[str, str] | Path:
    """The input the --text and --pair (or --image) flags describe."""
    image = getattr(args, "image", None)
    if image is not None:
        if args.pair is not None:
            raise ValueError("--pair goes with --text, not --image")
        return image  # type: ignore[no-any-return]
    return args.text if args.pair is None else (args.text, args.pair)


def layout_json(layout: ImageLayout | None) -> dict[str, Any] | None:
    """An image layout as a JSON object (None for text inputs)."""
    return None if layout is None else dataclasses.asdict(layout)


def array_json(values: np.ndarray | None) -> Any:
    """An array as nested lists (NaN as null); None stays None."""
    if values is None:
        return None
    return np.where(np.isnan(values), None, values.astype(object)).tolist()


def head_argument(text: str) -> tuple[int, int]:
    """LAYER:HEAD -> (layer, head): the type of --heads arguments."""
    layer, separator, head = text.partition(":")
    try:
        if not separator:
            raise ValueError
        return int(layer), int(head)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a head is LAYER:HEAD, e.g. 3:7; got {text!r}") from None


def add_target_arguments(parser: argparse.ArgumentParser) -> None:
    """--target and the flags that shape it (read by `target_of`)."""
    group = parser.add_argument_group("target (the score measured; default: the model's first)")
    group.add_argument("--target", choices=TARGET_CHOICES, default=None,
                       help="next_token, logit_difference (causal LMs), class (classifiers), "
                            "similarity or norm (encoders)")
    group.add_argument("--position", type=int, default=-1, metavar="N",
                       help="next_token/logit_difference: position scored (default: -1, the last token)")
    group.add_argument("--token-id", type=int, default=None, metavar="N",
                       help="next_token: token scored (default: the prediction); logit_difference: the token")
    group.add_argument("--contrast-token-id", type=int, default=None, metavar="N",
                       help="logit_difference: the token subtracted")
    group.add_argument("--class", dest="class_index", type=int, default=None, metavar="N",
                       help="class: class scored (default: the predicted class)")
    group.add_argument("--probability", action="store_true", help="class: score the probability, not the logit")
    group.add_argument("--reference", default=None, metavar="TEXT",
                       help="similarity: the reference text (image-text dual encoders: a text for an image)")
    group.add_argument("--reference-image", type=Path, default=None, metavar="PATH",
                       help="similarity: a reference image (image encoders and dual encoders)")


def target_of(args: argparse.Namespace, client: Client) -> pb.Target:
    """The Target the flags describe (the model's default one when --target is unset)."""
    kind = args.target
    if kind is None:
        info = client.get_model(args.model, timeout=args.timeout)
        kind = {
            pb.MODEL_KIND_CAUSAL_LM: "next_token",
            pb.MODEL_KIND_SEQUENCE_CLASSIFIER: "class",
            pb.MODEL_KIND_IMAGE_CLASSIFIER: "class",
        }.get(info.kind, "similarity" if args.reference is not None or args.reference_image is not None else "norm")
    if kind == "next_token":
        return targets.next_token(position=args.position, token_id=args.token_id)
    if kind == "logit_difference":
        if args.token_id is None or args.contrast_token_id is None:
            raise ValueError("--target logit_difference needs --token-id and --contrast-token-id")
        return targets.logit_difference(args.token_id, args.contrast_token_id, position=args.position)
    if kind == "class":
        return targets.class_score(args.class_index, probability=args.probability)
    if kind == "similarity":
        if (args.reference is None) == (args.reference_image is None):
            raise ValueError("--target similarity needs one of --reference TEXT and --reference-image PATH")
        return targets.embedding_similarity(args.reference if args.reference is not None else args.reference_image)
    return targets.embedding_norm()


def add_request_arguments(parser: argparse.ArgumentParser, *, truncate: bool = True) -> None:
    """--truncate (unless `truncate` is False: requests without the field) and --cache."""
    if truncate:
        parser.add_argument("--truncate", action="store_true", help="cut a text longer than the model's limit")
    parser.add_argument(
        "--cache", choices=list(CACHE_POLICIES), default="use", help="server result cache policy (default: use)"
    )


def add_output_arguments(parser: argparse.ArgumentParser, png_help: str, json_help: str) -> None:
    """--png FILE, --html FILE and --json (read by `write_outputs`)."""
    parser.add_argument("--png", default=None, metavar="FILE", help=png_help)
    add_html_argument(parser)
    parser.add_argument("--json", action="store_true", help=json_help)


def add_html_argument(parser: argparse.ArgumentParser) -> None:
    """--html FILE (read by `write_outputs`)."""
    parser.add_argument("--html", default=None, metavar="FILE",
                        help="write an interactive, self-contained HTML view of the result to FILE")


def html_writer(result: Any, image: Any = None) -> Callable[[str], None]:
    """What --html FILE does: writes the result's HTML view (introspect_client.html)."""

    def write(path: str) -> None:
        from .html import write_html

        write_html(result, path, image=image)

    return write


def write_outputs(
    args: argparse.Namespace,
    out: TextIO,
    document: Callable[[], Any],
    draw: Callable[[str], None],
    summary: Callable[[], str],
    html: Callable[[str], None] | None = None,
) -> None:
    """--json prints the document, --png FILE draws to FILE and --html FILE writes the
    page `html` writes (each says so unless --json); without any, prints the summary."""
    html_path = getattr(args, "html", None)
    if args.json:
        print(json.dumps(document()), file=out)
    for path, write in ((args.png, draw), (html_path, html)):
        if path and write is not None:
            write(path)
            if not args.json:
                print(f"wrote {path}", file=out)
    if not args.json and not args.png and not html_path:
        print(summary(), file=out)
