"""The problem every saliency technique solves: one input's features, a bound target as
a differentiable function of them, and the baselines they are compared with.

Features are [positions, dims]. For text they are the word embeddings [tokens, hidden]:
attributions are taken on the output of the model's input-embedding layer (as Captum's
`LayerIntegratedGradients` on the word embeddings), and the model runs with
``inputs_embeds``, so position and token-type embeddings are still added inside it. For
images they are the processed pixels [height * width, 3] (the pixel values the image
processor produced, as Captum's IntegratedGradients on the model's input tensor): a
technique's per-position scores are per pixel, summed per patch for the patch grid.

For causal language models the input is cut after the target position: later tokens
cannot change the target (causal attention), so they are not computed and score 0.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..budget import Footprint, activation_bytes, output_bytes
from ..errors import require
from ..models import LoadedModel, ModelDescription
from ..requests import SaliencyQuery
from ..results import EncodedInput, ImageLayout, SaliencyResult
from ..targets import NEXT_TOKEN_TARGETS, BoundTarget, bind_target, target_scores
from ..wire import to_wire
from .reductions import bilinear_resize

Check = Callable[[], None]
"""Raises Cancelled once the caller has gone away; techniques call it between batches."""


@dataclass(frozen=True)
class AttributionProblem:
    """One input, bound to one target, ready to be scored from its features."""

    model: LoadedModel
    target: BoundTarget
    encoded: EncodedInput
    input_ids: torch.Tensor | None  # [1, length]; None for images
    attention_mask: torch.Tensor  # [1, length]
    token_type_ids: torch.Tensor | None  # [1, length]
    embeddings: torch.Tensor  # [positions, dims] float32: word embeddings, or pixels [height * width, 3]
    special: torch.Tensor  # [positions] bool: special tokens ([CLS], [SEP], BOS, ...); all False for pixels
    upsample: bool = False  # images: add the grid resized to the processed image to final results

    @property
    def image(self) -> ImageLayout | None:
        """The layout of an image input; None for text."""
        return self.encoded.image

    @property
    def length(self) -> int:
        """Tokens that can affect the target (all but those after a causal LM's target)."""
        return self.attention_mask.shape[1]

    @property
    def total_length(self) -> int:
        """Tokens of the input; results cover all of them."""
        return self.encoded.length

    @property
    def positions(self) -> int:
        """Positions of the features: tokens for text, pixels for images."""
        return self.embeddings.shape[0]

    @property
    def attention_row(self) -> int:
        """The position whose attention rollout / flow explains the target: a causal LM's
        target position, else the first token ([CLS], which classifier heads read)."""
        return self.model.kind.explained_position(self.target.position)

    def forward_arguments(self, embeddings: torch.Tensor) -> dict[str, torch.Tensor]:
        """The model's forward arguments for features [batch, positions, dims]."""
        rows = embeddings.shape[0]
        embeddings = embeddings.to(self.model.model.dtype)
        if self.image is not None:
            height, width = self.image.height, self.image.width
            # [batch, height * width, 3] -> [batch, 3, height, width]
            return {"pixel_values": embeddings.reshape(rows, height, width, 3).permute(0, 3, 1, 2)}
        arguments = {"inputs_embeds": embeddings, "attention_mask": self.attention_mask.expand(rows, -1)}
        if self.token_type_ids is not None:
            arguments["token_type_ids"] = self.token_type_ids.expand(rows, -1)
        return arguments

    def scores(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Target per row [batch] float32 of features [batch, positions, dims]."""
        rows = embeddings.shape[0]
        return target_scores(self.model, self.target, self.forward_arguments(embeddings),
                             self.attention_mask.expand(rows, -1))

    def scores_and_gradients(self, embeddings: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(scores [batch], d score / d features [batch, positions, dims] float32); the
        autograd graph is freed before returning."""
        with torch.enable_grad():
            leaf = embeddings.to(self.model.model.dtype).detach().requires_grad_(True)
            scores = self.scores(leaf)
            (gradients,) = torch.autograd.grad(scores.sum(), leaf)
        return scores.detach(), gradients.float()

    def word_embeddings(self, token_ids: list[int]) -> torch.Tensor:
        """Word embeddings [len(token_ids), hidden] float32 of some token ids."""
        ids = torch.tensor([token_ids], dtype=torch.long, device=self.model.device)
        with torch.no_grad():
            return self.model.input_embeddings(ids)[0].float()

    def footprint(
        self, rows: int, *, gradients: bool, fixed: int = 0, per_row: int = 0, advice: str = ""
    ) -> Footprint:
        """What scoring `rows` variants of the input needs (budget.py): the model's
        activations (kept for the backward with `gradients`) and outputs per row, the
        input's embeddings, plus the technique's own `fixed` and `per_row` bytes."""
        description = self.model.description
        embeddings = self.embeddings.numel() * 4  # one float32 copy of the features
        return Footprint(
            fixed=4 * embeddings + fixed,
            per_row=activation_bytes(description, self.length, gradients=gradients)
            + output_bytes(description, self.length)
            + 2 * embeddings
            + per_row,
            rows=rows,
            field="input",
            advice=(f"each image is {self.length} tokens: use fewer rows per pass{advice}" if self.image
                    else f"shorten the input ({self.length} tokens){advice}"),
            tokens_per_row=self.length,
        )

    def result(
        self,
        scores: torch.Tensor,
        per_dimension: torch.Tensor | None = None,
        *,
        target_score: float,
        final: bool = True,
        converged: bool = True,
        baseline_score: float = 0.0,
        steps: int = 0,
        convergence_delta: float = 0.0,
        token_start: int = 0,
        token_end: int | None = None,
    ) -> SaliencyResult:
        """A result from per-position scores [positions] (and per-dimension attributions
        [positions, dims], text only): for text, positions [token_start, token_end) of
        the whole input, those after `length` scoring 0; for images, per-pixel scores,
        summed per patch. `converged` is False for a final result that missed its
        tolerance; results that are not final are never marked converged."""
        numbers = dict(target_score=float(target_score), baseline_score=float(baseline_score), steps=steps,
                       convergence_delta=float(convergence_delta), final=final, converged=final and converged)
        if self.image is not None:
            pixels = scores.float().reshape(self.image.height, self.image.width)
            # [rows * patch_height, columns * patch_width] -> [rows, columns]: sum of each patch's pixels
            grid = pixels.reshape(self.image.grid_rows, self.image.patch_height, self.image.grid_columns,
                                  self.image.patch_width).sum(dim=(1, 3))
            return self.grid_result(grid, pixels=pixels, **numbers)
        end = self.total_length if token_end is None else token_end
        full = torch.zeros(self.total_length, dtype=torch.float32, device=scores.device)
        full[: self.length] = scores.float()
        dimensions = None
        if per_dimension is not None:
            padded = torch.zeros(self.total_length, per_dimension.shape[-1], dtype=torch.float32, device=scores.device)
            padded[: self.length] = per_dimension.float()
            dimensions = to_wire(padded[token_start:end], "float32")
        return SaliencyResult(
            scores=to_wire(full[token_start:end], "float32"),
            per_dimension=dimensions,
            token_start=token_start,
            token_end=end,
            **numbers,  # type: ignore[arg-type]
        )

    def token_result(self, scores: torch.Tensor, *, target_score: float) -> SaliencyResult:
        """A final result from per-token scores [length] (attention rollout and flow):
        for images the patch tokens' scores also laid out as the grid."""
        if self.image is None:
            return self.result(scores, target_score=target_score)
        layout = self.image
        grid = scores.float()[layout.first_patch: layout.first_patch + layout.patches]
        return self.grid_result(grid.reshape(layout.grid_rows, layout.grid_columns), target_score=target_score,
                                token_scores=scores.float())

    def grid_result(self, grid: torch.Tensor, *, target_score: float, pixels: torch.Tensor | None = None,
                    token_scores: torch.Tensor | None = None, final: bool = True, **numbers: Any) -> SaliencyResult:
        """A result for an image from patch scores [grid_rows, grid_columns] (and the
        per-pixel [height, width] or per-token [tokens] scores behind them); `scores`
        then holds the grid per token (special tokens 0, unless `token_scores` are given)."""
        layout = self.image
        assert layout is not None
        grid = grid.float()
        if token_scores is None:
            token_scores = torch.zeros(self.total_length, dtype=torch.float32, device=grid.device)
            token_scores[layout.first_patch:] = grid.flatten()
        upsampled = None
        if self.upsample and final:
            upsampled = to_wire(bilinear_resize(grid, layout.height, layout.width), "float32")
        return SaliencyResult(
            scores=to_wire(token_scores, "float32"),
            per_dimension=None,
            token_start=0,
            token_end=self.total_length,
            target_score=float(target_score),
            final=final,
            grid_scores=to_wire(grid, "float32"),
            pixel_scores=None if pixels is None else to_wire(pixels.float(), "float32"),
            upsampled_scores=upsampled,
            **{"converged": final, **numbers},
        )


def joint_scores_and_gradients(problems: Sequence[AttributionProblem]) -> tuple[torch.Tensor, torch.Tensor]:
    """One forward and backward for several problems of one model (dynamic batching): their
    features in one batch, text right-padded (padding masked out: it changes no real
    position's output), images of one size stacked; each row scored by its own target.
    Rows are independent, so the gradient of the sum of the rows' scores is each row's own
    gradient. Returns (scores [rows], d score / d features [rows, positions padded, dims]
    float32; row i's are its first `problems[i].positions`); the graph is freed."""
    first = problems[0]
    model = first.model
    rows = len(problems)
    if first.image is not None:
        features = torch.stack([problem.embeddings for problem in problems])  # one size: checked by the caller
        mask = torch.cat([problem.attention_mask for problem in problems])
    else:
        width = max(problem.length for problem in problems)
        features = first.embeddings.new_zeros(rows, width, first.embeddings.shape[-1])
        mask = first.attention_mask.new_zeros(rows, width)
        types = None if first.token_type_ids is None else first.token_type_ids.new_zeros(rows, width)
        for row, problem in enumerate(problems):
            features[row, :problem.length] = problem.embeddings
            mask[row, :problem.length] = problem.attention_mask[0]
            if types is not None and problem.token_type_ids is not None:
                types[row, :problem.length] = problem.token_type_ids[0]
    with torch.enable_grad():
        leaf = features.to(model.model.dtype).detach().requires_grad_(True)
        if first.image is not None:
            arguments = first.forward_arguments(leaf)
        else:
            arguments = {"inputs_embeds": leaf, "attention_mask": mask}
            if types is not None:
                arguments["token_type_ids"] = types
        scores = _row_scores(model, [problem.target for problem in problems], arguments, mask)
        (gradients,) = torch.autograd.grad(scores.sum(), leaf)
    return scores.detach(), gradients.float()


def _row_scores(model: LoadedModel, targets: list[BoundTarget], arguments: dict[str, torch.Tensor],
                mask: torch.Tensor) -> torch.Tensor:
    """Each row's own target [rows] float32 from one forward of `arguments`; next-token
    targets compute logits from the earliest target position on only (as target_scores)."""
    positions = [target.position for target in targets]
    if all(target.kind in NEXT_TOKEN_TARGETS for target in targets) and None not in positions:
        first = min(position for position in positions if position is not None)
        logits = model.outputs(arguments, last_positions=mask.shape[1] - first)  # [rows, width - first, vocab]
        return torch.cat([target.score_next_token_logits(logits[row:row + 1, position - first])
                          for row, (target, position) in enumerate(zip(targets, positions)) if position is not None])
    outputs = model.outputs(arguments)
    return torch.cat([target.score(outputs[row:row + 1], mask[row:row + 1]) for row, target in enumerate(targets)])


def attribution_problem(model: LoadedModel, query: SaliencyQuery) -> AttributionProblem:
    """Encodes the query's input and binds its target (INVALID_ARGUMENT for a bad input
    or target)."""
    batch = model.encode_batch([query.input], query.truncate, field="input")
    target = bind_target(model, query.target, batch)
    encoded = batch.inputs[0]
    if batch.pixel_values is not None:
        pixels = batch.pixel_values[0].float()  # [3, height, width]
        return AttributionProblem(
            model=model, target=target, encoded=encoded, input_ids=None, attention_mask=batch.attention_mask,
            token_type_ids=None,
            embeddings=pixels.permute(1, 2, 0).reshape(-1, pixels.shape[0]),  # [height * width, 3]
            special=torch.zeros(pixels.shape[1] * pixels.shape[2], dtype=torch.bool, device=model.device),
            upsample=query.upsample,
        )
    require(not query.upsample, "upsample", "applies to image inputs only")
    assert batch.input_ids is not None
    length = model.kind.relevant_length(target.position, encoded.length)
    input_ids = batch.input_ids[:, :length]
    special_ids = model.text.special_ids
    with torch.no_grad():
        embeddings = model.input_embeddings(input_ids)[0].float()
    return AttributionProblem(
        model=model,
        target=target,
        encoded=encoded,
        input_ids=input_ids,
        attention_mask=batch.attention_mask[:, :length],
        token_type_ids=None if batch.token_type_ids is None else batch.token_type_ids[:, :length],
        embeddings=embeddings,
        special=torch.tensor([int(token) in special_ids for token in input_ids[0].tolist()], device=model.device),
    )


TEXT_BASELINES = ("pad", "mask", "zero", "tokens")
IMAGE_BASELINES = ("black", "blur", "noise", "zero")
DEFAULT_BLUR_SIGMA = 5.0


def default_baseline(model: LoadedModel) -> str:
    """BASELINE_UNSPECIFIED: for text the pad token, else the mask token, else zeros; for
    images a black image."""
    if model.image is not None:
        return "black"
    if model.text.has_pad_token:
        return "pad"
    return "mask" if model.text.mask_token_id is not None else "zero"


def check_baseline(problem: AttributionProblem, baseline: str, field: str,
                   accepted: tuple[str, ...] = TEXT_BASELINES + IMAGE_BASELINES) -> None:
    """INVALID_ARGUMENT naming `field` unless `baseline` (resolved, not "default") is one
    of `accepted` for the input's modality; the message lists those that are."""
    image = problem.image is not None
    modality, other = (IMAGE_BASELINES, TEXT_BASELINES) if image else (TEXT_BASELINES, IMAGE_BASELINES)
    allowed = [name for name in modality if name in accepted]
    inputs = "image inputs" if image else "text inputs"
    if baseline in other and baseline not in modality:
        reason = f"{baseline} is {'a text' if image else 'an image'} baseline"
    else:
        reason = f"{baseline} does not apply here"
    require(baseline in allowed, field, f"{reason}; {inputs} take {allowed}")


def baseline_embeddings(problem: AttributionProblem, baseline: str, token_ids: tuple[int, ...], field: str,
                        blur_sigma: float = DEFAULT_BLUR_SIGMA, seed: int = 0,
                        accepted: tuple[str, ...] = TEXT_BASELINES + IMAGE_BASELINES) -> torch.Tensor:
    """Baseline features [positions, dims] float32.

    Text: pad / mask: non-special positions get that token's embedding; zero: non-special
    positions are zeros; special tokens keep their own embedding (so they get no
    attribution). tokens: the embeddings of `token_ids`, exactly as given, one per input
    token. Images: black (raw pixel 0, normalised), blur (the input under a Gaussian of
    `blur_sigma` pixels), noise (uniform raw pixels from `seed`, normalised) or zero (0
    after normalisation). INVALID_ARGUMENT (naming `field`) for a baseline of the other
    modality or not in the technique's `accepted`, when the model lacks the token or the
    ids do not match the input's length.
    """
    model = problem.model
    if baseline == "default":
        baseline = default_baseline(model)
    check_baseline(problem, baseline, field, accepted)
    if problem.image is not None:
        return _image_baseline(problem, baseline, blur_sigma, seed)
    if baseline == "tokens":
        require(
            len(token_ids) == problem.total_length,
            f"{field}_token_ids",
            f"{len(token_ids)} ids given but the input has {problem.total_length} tokens",
        )
        return problem.word_embeddings(list(token_ids[: problem.length]))
    if baseline == "zero":
        replacement = torch.zeros_like(problem.embeddings[0])
    else:
        token = model.text.pad_token_id if baseline == "pad" else model.text.mask_token_id
        require(token is not None, field, f"model {model.name!r} has no {baseline} token; use zero or tokens")
        replacement = problem.word_embeddings([int(token)])[0]  # type: ignore[arg-type]
    keep = problem.special[:, None]
    return torch.where(keep, problem.embeddings, replacement.expand_as(problem.embeddings))


def _image_baseline(problem: AttributionProblem, baseline: str, blur_sigma: float, seed: int) -> torch.Tensor:
    """Pixel baseline features [height * width, 3] float32 (see baseline_embeddings)."""
    assert problem.image is not None and problem.model.image is not None
    device = problem.embeddings.device
    mean, std = (torch.from_numpy(values).to(device) for values in problem.model.image.mean_and_std)
    if baseline == "zero":
        return torch.zeros_like(problem.embeddings)
    if baseline == "black":
        return ((0.0 - mean) / std).expand_as(problem.embeddings).clone()
    if baseline == "noise":
        generator = torch.Generator().manual_seed(seed)  # on the CPU: the same pixels on every device
        # [height * width, 3]: drawn in the features' order (torch.rand of [height, width, 3])
        raw = torch.rand(problem.embeddings.shape, generator=generator).to(device)
        return (raw - mean) / std
    height, width = problem.image.height, problem.image.width
    pixels = problem.embeddings.reshape(height, width, 3).permute(2, 0, 1)  # [3, height, width]
    return gaussian_blur(pixels, blur_sigma).permute(1, 2, 0).reshape(-1, 3)


def gaussian_blur(pixels: torch.Tensor, sigma: float) -> torch.Tensor:
    """[channels, height, width] blurred by a separable Gaussian of `sigma` pixels: kernel
    2 * ceil(3 sigma) + 1 taps (its radius at most the image's size - 1), normalised,
    reflected edges."""
    channels, height, width = pixels.shape
    radius = max(1, min(math.ceil(3 * sigma), height - 1, width - 1))
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = (kernel / kernel.sum()).to(pixels)
    padded = torch.nn.functional.pad(pixels[None], (radius, radius, radius, radius), mode="reflect")
    rows = torch.nn.functional.conv2d(padded, kernel.view(1, 1, -1, 1).expand(channels, 1, -1, 1), groups=channels)
    return torch.nn.functional.conv2d(rows, kernel.view(1, 1, 1, -1).expand(channels, 1, 1, -1), groups=channels)[0]


def batches(items: int, batch_size: int) -> Iterator[range]:
    """Consecutive ranges of at most batch_size items covering range(items)."""
    for start in range(0, items, batch_size):
        yield range(start, min(start + batch_size, items))



def _no_input_checks(problem: AttributionProblem, options: Any) -> None:
    """A technique whose options need no check against the encoded input."""


def one_pass_with_gradients(problem: AttributionProblem, options: Any) -> Footprint:
    """One forward and backward on the input."""
    return problem.footprint(1, gradients=True)


@dataclass(frozen=True)
class Technique:
    """A saliency technique, registered by name in methods.saliency."""

    name: str
    # (model description, query) -> validated options; raises InvalidInput. Cheap: runs
    # before the request is queued.
    prepare: Callable[[ModelDescription, SaliencyQuery], Any]
    # (problem, options, check) -> partial results, then a final one covering all tokens
    attribute: Callable[[AttributionProblem, Any, Check], Iterator[SaliencyResult]]
    # (problem, options): checks against the encoded input, before the stream header
    validate: Callable[[AttributionProblem, Any], None] = _no_input_checks
    # whether it can return per-dimension attributions [tokens, hidden]
    per_dimension: bool = False
    # (problem, options) -> what it needs of memory (budget.py), for its batch size
    footprint: Callable[[AttributionProblem, Any], Footprint] = one_pass_with_gradients
    # (problem, options, score [], d score / d features [positions, dims]) -> its final
    # result, for a technique that is one forward and backward on the input: its calls can
    # then share that pass with other calls' (dynamic batching, methods/saliency.py)
    from_gradients: Callable[[AttributionProblem, Any, torch.Tensor, torch.Tensor], SaliencyResult] | None = None
