"""Saliency: which input tokens drove a target score, by one of several techniques
(one module each), streamed as partial and final per-token attributions.

The techniques are registered here by name; each validates its options before the
request is queued, checks them against the encoded input before the stream header, and
yields results. See attribution.py for the problem they share (a target as a function of
the input's word embeddings).
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any

from ..engine import Sink
from ..errors import require
from ..models import LoadedModel, ModelDescription
from ..requests import SaliencyQuery
from ..results import SaliencyResult, StreamStart
from ..targets import check_target_kind
from .registry import Method
from .attention_flow import ATTENTION_FLOW, ATTENTION_ROLLOUT
from .attribution import Technique, attribution_problem
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
    description = model.description
    sink.emit(StreamStart(description.name, description.fingerprint, (problem.encoded,)))
    for result in technique.attribute(problem, options, sink.check):
        sink.emit(replace(result, batch_size=batch_size, method=result.method or technique.name))


METHOD = Method(
    name="saliency", rpc="StreamSaliency", query_type=SaliencyQuery, prepare=prepare, run=run,
    payloads={SaliencyResult: "chunk"},
)
