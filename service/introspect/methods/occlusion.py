"""Occlusion: how much the target drops when a span of tokens is replaced.

Zeiler & Fergus (2014), "Visualizing and Understanding Convolutional Networks", as
Captum's `Occlusion` does it for sliding windows: a window of `span` tokens moves by
`stride`; each window's variant of the input has its tokens replaced (by the pad or mask
token's embedding, or zeros), and f(input) - f(variant) is credited to every token of the
window; a token's score is the mean over the windows that occluded it. The last window
always ends at the last token, so every token is occluded at least once.

Special tokens ([CLS], [SEP], BOS, ...) are never replaced and score 0: replacing them
measures the model's reaction to a broken input format, not to the content. Windows
holding only special tokens are skipped.

Variants run in batches without gradients; after each batch, the tokens no later window
covers are final and are streamed.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

from ..errors import require
from ..models import ModelDescription
from ..requests import BASELINES, SaliencyQuery
from ..results import SaliencyResult
from ..budget import Footprint
from .attribution import AttributionProblem, Check, Technique, baseline_embeddings, batches

REPLACEMENTS = tuple(name for name in BASELINES if name != "tokens")
"""Baselines an occluded token can be replaced with ("default": the pad or mask token)."""


@dataclass(frozen=True)
class OcclusionOptions:
    """Validated occlusion options."""

    span: int
    stride: int
    replacement: str
    batch_size: int  # 0: automatic


def prepare(description: ModelDescription, query: SaliencyQuery) -> OcclusionOptions:
    """Resolves defaults (span 1, stride 1, pad/mask replacement) and checks ranges."""
    settings = query.occlusion
    require(settings.span >= 0, "occlusion.span", f"must be >= 1 (0 means 1), got {settings.span}")
    require(settings.stride >= 0, "occlusion.stride", f"must be >= 1 (0 means 1), got {settings.stride}")
    require(settings.batch_size >= 0, "occlusion.batch_size",
            f"must be >= 0 (0 picks automatically), got {settings.batch_size}")
    require(settings.replacement in REPLACEMENTS, "occlusion.replacement",
            f"{settings.replacement!r} is not supported; use one of {REPLACEMENTS[1:]} (or leave unset)")
    return OcclusionOptions(settings.span or 1, settings.stride or 1, settings.replacement, settings.batch_size)


def validate(problem: AttributionProblem, options: OcclusionOptions) -> None:
    """The span must fit in the tokens that can affect the target; the replacement
    token must exist."""
    require(
        options.span <= problem.length,
        "occlusion.span",
        f"{options.span} exceeds the {problem.length} tokens that can affect the target",
    )
    baseline_embeddings(problem, options.replacement, (), "occlusion.replacement")


def window_starts(length: int, span: int, stride: int) -> list[int]:
    """Starts of the windows: every `stride` tokens, plus one ending at the last token."""
    starts = list(range(0, length - span + 1, stride))
    if starts[-1] + span < length:
        starts.append(length - span)
    return starts


def footprint(problem: AttributionProblem, options: OcclusionOptions) -> Footprint:
    """A batch of occluded variants is one forward per variant, without gradients."""
    windows = len(window_starts(problem.length, options.span, options.stride))
    return problem.footprint(windows, gradients=False)


def occlusion(problem: AttributionProblem, options: OcclusionOptions, check: Check) -> Iterator[SaliencyResult]:
    """Scores streamed as tokens finish, then a final result over all tokens."""
    inputs = problem.embeddings  # [length, hidden]
    replacement = baseline_embeddings(problem, options.replacement, (), "occlusion.replacement")
    occludable = ~problem.special
    span = options.span
    starts = [
        start for start in window_starts(problem.length, span, options.stride) if occludable[start : start + span].any()
    ]
    totals = torch.zeros(problem.length, dtype=torch.float64, device=inputs.device)
    counts = torch.zeros(problem.length, dtype=torch.float64, device=inputs.device)
    batch_size = options.batch_size
    with torch.no_grad():
        target_score = float(problem.scores(inputs[None])[0])
        streamed = 0
        for rows in batches(len(starts), batch_size):
            check()
            windows = torch.zeros(len(rows), problem.length, dtype=torch.bool, device=inputs.device)
            for row, index in enumerate(rows):
                windows[row, starts[index] : starts[index] + span] = True
            windows &= occludable
            variants = torch.where(windows[:, :, None], replacement, inputs)
            drops = target_score - problem.scores(variants).double()  # [rows]
            totals += (windows * drops[:, None]).sum(dim=0)
            counts += windows.sum(dim=0)
            finished = starts[rows.stop] if rows.stop < len(starts) else problem.length
            if finished > streamed and rows.stop < len(starts):
                scores = totals / counts.clamp(min=1)
                yield problem.result(
                    scores, target_score=target_score, final=False, token_start=streamed, token_end=finished
                )
                streamed = finished
    yield problem.result(totals / counts.clamp(min=1), target_score=target_score)


OCCLUSION = Technique("occlusion", prepare, occlusion, validate=validate, footprint=footprint)
