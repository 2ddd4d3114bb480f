"""The problem every saliency technique solves: one input's word embeddings, a bound
target as a differentiable function of them, and the baselines they are compared with.

Attributions are taken on the output of the model's input-embedding layer (as Captum's
`LayerIntegratedGradients` on the word embeddings): the model runs with
``inputs_embeds``, so position and token-type embeddings are still added inside it.

For causal language models the input is cut after the target position: later tokens
cannot change the target (causal attention), so they are not computed and score 0.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

from ..budget import Footprint, activation_bytes, output_bytes
from ..errors import require
from ..models import LoadedModel, ModelDescription
from ..requests import SaliencyQuery
from ..results import EncodedInput, SaliencyResult
from ..targets import BoundTarget, bind_target, target_scores
from ..wire import to_wire

Check = Callable[[], None]
"""Raises Cancelled once the caller has gone away; techniques call it between batches."""


@dataclass(frozen=True)
class AttributionProblem:
    """One input, bound to one target, ready to be scored from embeddings."""

    model: LoadedModel
    target: BoundTarget
    encoded: EncodedInput
    input_ids: torch.Tensor  # [1, length]
    attention_mask: torch.Tensor  # [1, length]
    token_type_ids: torch.Tensor | None  # [1, length]
    embeddings: torch.Tensor  # [length, hidden] float32 word embeddings of the input
    special: torch.Tensor  # [length] bool: special tokens ([CLS], [SEP], BOS, ...)

    @property
    def length(self) -> int:
        """Positions that can affect the target (all but those after a causal LM's target)."""
        return self.input_ids.shape[1]

    @property
    def total_length(self) -> int:
        """Tokens of the input; results cover all of them."""
        return self.encoded.length

    @property
    def attention_row(self) -> int:
        """The position whose attention rollout / flow explains the target: a causal LM's
        target position, else the first token ([CLS], which classifier heads read)."""
        return self.model.kind.explained_position(self.target.position)

    def scores(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Target per row [batch] float32 of embeddings [batch, length, hidden]."""
        rows = embeddings.shape[0]
        return target_scores(
            self.model,
            self.target,
            self.attention_mask.expand(rows, -1),
            inputs_embeds=embeddings.to(self.model.model.dtype),
            token_type_ids=None if self.token_type_ids is None else self.token_type_ids.expand(rows, -1),
        )

    def scores_and_gradients(self, embeddings: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(scores [batch], d score / d embeddings [batch, length, hidden] float32); the
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
        embeddings = self.length * description.hidden_size * 4  # one [length, hidden] float32 copy
        return Footprint(
            fixed=4 * embeddings + fixed,
            per_row=activation_bytes(description, self.length, gradients=gradients)
            + output_bytes(description, self.length)
            + 2 * embeddings
            + per_row,
            rows=rows,
            field="input",
            advice=f"shorten the input ({self.length} tokens){advice}",
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
        """A result for positions [token_start, token_end) of the whole input, from
        scores [length] (and per-dimension attributions [length, hidden]); positions
        after `length` score 0. `converged` is False for a final result that missed its
        tolerance; results that are not final are never marked converged."""
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
            target_score=float(target_score),
            baseline_score=float(baseline_score),
            steps=steps,
            convergence_delta=float(convergence_delta),
            final=final,
            converged=final and converged,
        )


def attribution_problem(model: LoadedModel, query: SaliencyQuery) -> AttributionProblem:
    """Encodes the query's input and binds its target (INVALID_ARGUMENT for a bad input
    or target)."""
    batch = model.encode_batch([query.input], query.truncate, field="input")
    target = bind_target(model, query.target, batch)
    length = model.kind.relevant_length(target.position, batch.inputs[0].length)
    input_ids = batch.input_ids[:, :length]
    special_ids = model.text.special_ids
    with torch.no_grad():
        embeddings = model.input_embeddings(input_ids)[0].float()
    return AttributionProblem(
        model=model,
        target=target,
        encoded=batch.inputs[0],
        input_ids=input_ids,
        attention_mask=batch.attention_mask[:, :length],
        token_type_ids=None if batch.token_type_ids is None else batch.token_type_ids[:, :length],
        embeddings=embeddings,
        special=torch.tensor([int(token) in special_ids for token in input_ids[0].tolist()], device=model.device),
    )


def default_baseline(model: LoadedModel) -> str:
    """BASELINE_UNSPECIFIED: the pad token, else the mask token, else zeros."""
    if model.text.has_pad_token:
        return "pad"
    return "mask" if model.text.mask_token_id is not None else "zero"


def baseline_embeddings(problem: AttributionProblem, baseline: str, token_ids: tuple[int, ...], field: str) -> torch.Tensor:
    """Baseline embeddings [length, hidden] float32.

    pad / mask: non-special positions get that token's embedding; zero: non-special
    positions are zeros; special tokens keep their own embedding (so they get no
    attribution). tokens: the embeddings of `token_ids`, exactly as given, one per input
    token. INVALID_ARGUMENT (naming `field`) when the model lacks the token or the ids do
    not match the input's length.
    """
    model = problem.model
    if baseline == "default":
        baseline = default_baseline(model)
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
