"""Saliency: which input tokens drove a target score, by one of several techniques
(one module each), streamed as partial and final per-token attributions.

The techniques are registered here by name; each validates its options before the
request is queued, checks them against the encoded input before the stream header, and
yields results. See attribution.py for the problem they share (a target as a function of
the input's word embeddings).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields, replace
from typing import Any

from ..batching import Outlet
from ..engine import Sink
from ..errors import require
from ..models import LoadedModel, ModelDescription
from ..requests import SaliencyQuery
from ..results import SaliencyResult, StreamStart
from ..targets import check_target_kind
from .registry import Method, Sharing
from .attention_flow import ATTENTION_FLOW, ATTENTION_ROLLOUT
from .attribution import AttributionProblem, Technique, attribution_problem, joint_scores_and_gradients
from .cam import GRAD_CAM, HI_RES_CAM, LAYER_CAM, XGRAD_CAM
from .integrated_gradients import INTEGRATED_GRADIENTS
from .occlusion import OCCLUSION
from .saliency_gradients import GRADIENT, GRADIENT_X_INPUT, SMOOTHGRAD

TECHNIQUES: dict[str, Technique] = {
    technique.name: technique
    for technique in (
        GRADIENT,
        GRADIENT_X_INPUT,
        INTEGRATED_GRADIENTS,
        SMOOTHGRAD,
        OCCLUSION,
        ATTENTION_ROLLOUT,
        ATTENTION_FLOW,
        GRAD_CAM,
        HI_RES_CAM,
        XGRAD_CAM,
        LAYER_CAM,
    )
}


@dataclass(frozen=True)
class SaliencyPlan:
    """A validated saliency query: the technique and its options."""

    technique: Technique
    options: Any


def prepare(description: ModelDescription, query: SaliencyQuery) -> SaliencyPlan:
    """Checks the method, the target and the method's options against the model."""
    technique = TECHNIQUES.get(query.method)
    require(technique is not None, "method", f"unknown or unset method {query.method!r}; use one of {list(TECHNIQUES)}")
    assert technique is not None
    check_target_kind(description, query.target)
    per_dimension = [name for name, known in TECHNIQUES.items() if known.per_dimension]
    require(
        not query.per_dimension or technique.per_dimension,
        "per_dimension",
        f"{technique.name} gives no per-dimension attributions; {per_dimension} do",
    )
    return SaliencyPlan(technique, technique.prepare(description, query))


def run(model: LoadedModel, query: SaliencyQuery, plan: SaliencyPlan, sink: Sink) -> None:
    """Encodes the input, binds the target, checks the options against it, then streams
    the technique's results after the header."""
    problem, options, batch_size = _bound(model, query, plan)
    description = model.description
    sink.emit(StreamStart(description.name, description.fingerprint, (problem.encoded,)))
    for result in plan.technique.attribute(problem, options, sink.check):
        sink.emit(_stamped(result, plan.technique, batch_size))


def _bound(model: LoadedModel, query: SaliencyQuery, plan: SaliencyPlan) -> tuple[AttributionProblem, Any, int]:
    """(the problem, the options, the batch size that runs): the input encoded, the
    target bound, the options checked against them and the batch size fitted to the
    memory budget (ResourceExhausted when one row does not fit)."""
    problem = attribution_problem(model, query)
    technique, options = plan.technique, plan.options
    require(problem.image is None or not query.per_dimension, "per_dimension",
            "applies to text inputs; image results carry per-pixel scores (pixel_scores)")
    technique.validate(problem, options)
    batched = options is not None and "batch_size" in {item.name for item in fields(options)}
    # the request's batch size lowered to the memory budget, or the largest that fits it
    batch_size = model.budget.fit(technique.footprint(problem, options), options.batch_size if batched else 1)
    if batched:
        options = replace(options, batch_size=batch_size)
    return problem, options, batch_size


def _stamped(result: SaliencyResult, technique: Technique, batch_size: int) -> SaliencyResult:
    return replace(result, batch_size=batch_size, method=result.method or technique.name)


# Dynamic batching (batching.py): calls of techniques that are one forward and backward on
# the input (`Technique.from_gradients`: gradient, gradient x input) share that pass; each
# call is a `_Part` (its problem bound and checked alone), `run_parts` runs one padded
# forward and backward of several parts and each part reads its own row.


@dataclass
class _Part:
    """One call's share of a shared gradient pass."""

    problem: AttributionProblem
    technique: Technique
    options: Any
    batch_size: int
    outlet: Outlet


def sharing_key(query: SaliencyQuery, plan: SaliencyPlan) -> str | None:
    """Calls of one-pass techniques share a pass when their inputs are of one modality;
    other techniques' calls run alone (None)."""
    if plan.technique.from_gradients is None:
        return None
    return query.input.modality if query.input is not None else "text"


def prepare_part(model: LoadedModel, query: SaliencyQuery, plan: SaliencyPlan, outlet: Outlet) -> _Part:
    """Binds one call's problem and checks it against its options and limits."""
    problem, options, batch_size = _bound(model, query, plan)
    return _Part(problem, plan.technique, options, batch_size, outlet)


def parts_fit(model: LoadedModel, parts: Sequence[_Part]) -> bool:
    """Whether one pass of every part fits: images of one size (they are stacked, not
    padded), class scores of one length (not padded), --max-batch-tokens and the memory budget (each part's own fixed bytes, and
    every row at the longest part's per-row bytes)."""
    problems = [part.problem for part in parts]
    if problems[0].image is not None and len({problem.embeddings.shape for problem in problems}) > 1:
        return False
    # A sequence classifier given inputs_embeds cannot find a padded row's last real token
    # (GPT-2, Llama, ... pool there): class scores share a pass only at one length.
    if any(problem.target.kind == "class_score" for problem in problems) and len(
            {problem.length for problem in problems}) > 1:
        return False
    width = max(problem.length for problem in problems)
    footprints = [part.technique.footprint(part.problem, part.options) for part in parts]
    needed = sum(footprint.fixed for footprint in footprints) + len(parts) * max(f.per_row for f in footprints)
    return len(parts) * width <= model.budget.batch_tokens and needed <= model.budget.bytes


def run_parts(model: LoadedModel, parts: Sequence[_Part]) -> None:
    """One padded forward and backward of every part's features (a row each); each part's
    result, from its own row's score and gradients, goes to its own outlet."""
    description = model.description
    for part in parts:
        part.outlet.emit(StreamStart(description.name, description.fingerprint, (part.problem.encoded,)))
    if not any(part.outlet.open for part in parts):
        return
    scores, gradients = joint_scores_and_gradients([part.problem for part in parts])
    for row, part in enumerate(parts):
        if part.outlet.open:
            assert part.technique.from_gradients is not None
            result = part.technique.from_gradients(part.problem, part.options, scores[row],
                                                   gradients[row, :part.problem.positions])
            part.outlet.emit(_stamped(result, part.technique, part.batch_size))


METHOD = Method(
    name="saliency", rpc="StreamSaliency", query_type=SaliencyQuery, prepare=prepare, run=run,
    payloads={SaliencyResult: "chunk"},
    sharing=Sharing(key=sharing_key, prepare=prepare_part, fits=parts_fit, run=run_parts),
)
