"""Occlusion: how much the target drops when a window of the input is replaced.

Zeiler & Fergus (2014), "Visualizing and Understanding Convolutional Networks", as
Captum's `Occlusion` does it for sliding windows. A window's variant of the input has its
units replaced, and f(input) - f(variant) is credited to every unit of the window; a
unit's score is the mean over the windows that occluded it.

- Text: the units are tokens; a window of `span` tokens moves by `stride`, replaced by
  the pad or mask token's embedding, or zeros. Special tokens ([CLS], [SEP], BOS, ...)
  are never replaced and score 0: replacing them measures the model's reaction to a
  broken input format, not to the content. Windows holding only special tokens are
  skipped.
- Images: the units are patches; a window is a square of span x span patches, moved by
  `stride` patches along rows and columns (row-major), its pixels replaced by 0 after
  normalisation (the processor's mean colour) or black. The grid holds each patch's
  score, `scores` the same per patch token (special tokens 0). With windows aligned to
  the patches, Captum's Occlusion on the pixel tensor with sliding_window_shapes
  (3, span * patch_height, span * patch_width) and strides (3, stride * patch_height,
  stride * patch_width) gives every pixel of a patch this score, on grids where the
  stride divides (grid side - span): elsewhere Captum's last window hangs over the edge
  (cut to the image) while ours ends at it.

Along each axis the last window ends at the last unit, so every unit is occluded at least
once. Variants run in batches without gradients. For text, after each batch the tokens
no later window covers are final and are streamed; an image sends one final result.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from ..budget import Footprint
from ..errors import require
from ..models import ModelDescription
from ..requests import DEFAULT, SaliencyQuery
from ..results import SaliencyResult
from .attribution import AttributionProblem, Check, Technique, baseline_embeddings, batches

FIELD = "occlusion.replacement"
TEXT_REPLACEMENTS = ("pad", "mask", "zero")
IMAGE_REPLACEMENTS = ("black", "zero")
REPLACEMENTS = (DEFAULT, *dict.fromkeys(TEXT_REPLACEMENTS + IMAGE_REPLACEMENTS))
"""Baselines an occluded unit can be replaced with ("default": the pad or mask token for
text, zero for images)."""


@dataclass(frozen=True)
class OcclusionOptions:
    """Validated occlusion options."""

    span: int
    stride: int
    replacement: str
    batch_size: int  # 0: automatic


@dataclass(frozen=True)
class Windows:
    """The occlusion windows of one input over its units (tokens, or an image's patches)."""

    masks: torch.Tensor  # [windows, units] bool: the units each window replaces
    # per window, its first unit (units before it are final once it starts); None: no streaming
    first_units: tuple[int, ...] | None
    to_positions: Callable[[torch.Tensor], torch.Tensor]  # unit masks [rows, units] -> [rows, positions]

    def __len__(self) -> int:
        return self.masks.shape[0]


def prepare(description: ModelDescription, query: SaliencyQuery) -> OcclusionOptions:
    """Resolves defaults (span 1, stride 1, pad/mask replacement for text, zero for images)
    and checks ranges."""
    settings = query.occlusion
    require(settings.span >= 0, "occlusion.span", f"must be >= 1 (0 means 1), got {settings.span}")
    require(settings.stride >= 0, "occlusion.stride", f"must be >= 1 (0 means 1), got {settings.stride}")
    require(settings.batch_size >= 0, "occlusion.batch_size",
            f"must be >= 0 (0 picks automatically), got {settings.batch_size}")
    require(settings.replacement in REPLACEMENTS, FIELD,
            f"{settings.replacement!r} is not supported; text takes {list(TEXT_REPLACEMENTS)}, images "
            f"{list(IMAGE_REPLACEMENTS)} (or leave it unset)")
    return OcclusionOptions(settings.span or 1, settings.stride or 1, settings.replacement, settings.batch_size)


def replacement_features(problem: AttributionProblem, options: OcclusionOptions) -> torch.Tensor:
    """What occluded positions become [positions, dims]; INVALID_ARGUMENT for a
    replacement of the other modality or one the model lacks."""
    replacement = options.replacement
    if replacement == DEFAULT and problem.image is not None:
        replacement = "zero"
    return baseline_embeddings(problem, replacement, (), FIELD, accepted=TEXT_REPLACEMENTS + IMAGE_REPLACEMENTS)


def validate(problem: AttributionProblem, options: OcclusionOptions) -> None:
    """The span must fit in the tokens that can affect the target (in the patch grid for
    images); the replacement must suit the input and exist for the model."""
    layout = problem.image
    if layout is None:
        require(options.span <= problem.length, "occlusion.span",
                f"{options.span} exceeds the {problem.length} tokens that can affect the target")
    else:
        require(options.span <= min(layout.grid_rows, layout.grid_columns), "occlusion.span",
                f"{options.span} patches exceed the {layout.grid_rows}x{layout.grid_columns} patch grid")
    replacement_features(problem, options)


def window_starts(length: int, span: int, stride: int) -> list[int]:
    """Starts of the windows along one axis: every `stride` units, plus one ending at the
    last unit."""
    starts = list(range(0, length - span + 1, stride))
    if starts[-1] + span < length:
        starts.append(length - span)
    return starts


def token_windows(problem: AttributionProblem, span: int, stride: int) -> Windows:
    """Windows of `span` tokens every `stride` tokens, special tokens left out (and windows
    of special tokens only dropped)."""
    occludable = ~problem.special  # [length]
    masks, firsts = [], []
    for start in window_starts(problem.length, span, stride):
        mask = torch.zeros(problem.length, dtype=torch.bool, device=occludable.device)
        mask[start : start + span] = True
        mask &= occludable
        if mask.any():
            masks.append(mask)
            firsts.append(start)
    return Windows(torch.stack(masks), tuple(firsts), lambda units: units)


def patch_windows(problem: AttributionProblem, span: int, stride: int) -> Windows:
    """Squares of span x span patches every `stride` patches along rows and columns,
    row-major; a patch's pixels are occluded with it."""
    layout = problem.image
    assert layout is not None
    rows, columns = layout.grid_rows, layout.grid_columns
    masks = []
    for top in window_starts(rows, span, stride):
        for left in window_starts(columns, span, stride):
            mask = torch.zeros(rows, columns, dtype=torch.bool, device=problem.embeddings.device)
            mask[top : top + span, left : left + span] = True
            masks.append(mask.flatten())

    def to_pixels(units: torch.Tensor) -> torch.Tensor:
        # [batch, rows * columns] -> [batch, rows, columns] -> [batch, height, width] -> [batch, height * width]
        grid = units.reshape(-1, rows, columns)
        pixels = grid.repeat_interleave(layout.patch_height, dim=1).repeat_interleave(layout.patch_width, dim=2)
        return pixels.reshape(units.shape[0], -1)

    return Windows(torch.stack(masks), None, to_pixels)


def occlusion_windows(problem: AttributionProblem, options: OcclusionOptions) -> Windows:
    """The input's windows: of tokens for text, of patches for images."""
    windows = token_windows if problem.image is None else patch_windows
    return windows(problem, options.span, options.stride)


def footprint(problem: AttributionProblem, options: OcclusionOptions) -> Footprint:
    """A batch of occluded variants is one forward per variant, without gradients."""
    return problem.footprint(len(occlusion_windows(problem, options)), gradients=False)


def occlusion(problem: AttributionProblem, options: OcclusionOptions, check: Check) -> Iterator[SaliencyResult]:
    """Text: scores streamed as tokens finish, then a final result over all tokens.
    Images: one final result, per patch."""
    inputs = problem.embeddings  # [positions, dims]
    replacement = replacement_features(problem, options)  # [positions, dims]
    windows = occlusion_windows(problem, options)
    units = windows.masks.shape[1]
    totals = torch.zeros(units, dtype=torch.float64, device=inputs.device)
    counts = torch.zeros(units, dtype=torch.float64, device=inputs.device)
    firsts = windows.first_units
    with torch.no_grad():
        target_score = float(problem.scores(inputs[None])[0])
        streamed = 0
        for rows in batches(len(windows), options.batch_size):
            check()
            chosen = windows.masks[rows.start : rows.stop]  # [batch, units]
            occluded = windows.to_positions(chosen)  # [batch, positions]
            variants = torch.where(occluded[:, :, None], replacement, inputs)  # [batch, positions, dims]
            drops = target_score - problem.scores(variants).double()  # [batch]
            totals += (chosen * drops[:, None]).sum(dim=0)
            counts += chosen.sum(dim=0)
            if firsts is not None and rows.stop < len(windows) and firsts[rows.stop] > streamed:
                finished = firsts[rows.stop]
                yield problem.result(totals / counts.clamp(min=1), target_score=target_score, final=False,
                                     token_start=streamed, token_end=finished)
                streamed = finished
    scores = totals / counts.clamp(min=1)  # [units]
    if problem.image is None:
        yield problem.result(scores, target_score=target_score)
    else:
        yield problem.grid_result(scores.reshape(problem.image.grid_rows, problem.image.grid_columns),
                                  target_score=target_score)


OCCLUSION = Technique("occlusion", prepare, occlusion, validate=validate, footprint=footprint)
