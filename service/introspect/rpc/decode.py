"""Protobuf requests -> plain request dataclasses. Structural checks only; what depends on
the model is validated by the methods."""

from __future__ import annotations

from collections.abc import Iterable

from introspect_contract import pb

from ..errors import InvalidInput
from ..requests import (
    DEFAULT_ROLLOUT_RESIDUAL_WEIGHT,
    AttentionQuery,
    HeadAblationQuery,
    InputSpec,
    SaliencyQuery,
    TargetSpec,
)

_VIEWS = {
    pb.ATTENTION_VIEW_UNSPECIFIED: "heads",
    pb.ATTENTION_VIEW_HEADS: "heads",
    pb.ATTENTION_VIEW_HEAD_MEAN: "head_mean",
    pb.ATTENTION_VIEW_HEAD_MAX: "head_max",
    pb.ATTENTION_VIEW_ROLLOUT: "rollout",
}
_DTYPES = {
    pb.DTYPE_UNSPECIFIED: "float32",
    pb.DTYPE_FLOAT32: "float32",
    pb.DTYPE_FLOAT16: "float16",
    pb.DTYPE_BFLOAT16: "bfloat16",
    pb.DTYPE_INT32: "int32",
}


def enum_name(mapping: dict[int, str], value: int) -> str:
    """The plain name of an enum value; unknown numbers pass as 'unknown(N)' for the
    method's validation to reject with the list of valid names."""
    return mapping.get(value, f"unknown({value})")


def input_spec(message: pb.Input, field: str) -> InputSpec:
    """Decodes one Input."""
    source = message.WhichOneof("source")
    if source == "text":
        return InputSpec(text=message.text.text, text_pair=message.text.text_pair or None)
    if source == "token_ids":
        return InputSpec(token_ids=tuple(int(token) for token in message.token_ids.ids))
    raise InvalidInput(field, "set either text or token_ids")


def input_specs(messages: Iterable[pb.Input], field: str = "inputs") -> tuple[InputSpec, ...]:
    """Decodes repeated Input."""
    return tuple(input_spec(message, f"{field}[{i}]") for i, message in enumerate(messages))


def attention_query(request: pb.StreamAttentionRequest) -> AttentionQuery:
    """Decodes an StreamAttentionRequest."""
    return AttentionQuery(
        model=request.model,
        inputs=input_specs(request.inputs),
        truncate=request.truncate,
        layers=tuple(request.layers),
        heads=tuple(request.heads),
        view=enum_name(_VIEWS, request.view),
        top_k=request.top_k,
        dtype=enum_name(_DTYPES, request.dtype),
        rollout_residual_weight=(
            request.rollout_residual_weight
            if request.HasField("rollout_residual_weight")
            else DEFAULT_ROLLOUT_RESIDUAL_WEIGHT
        ),
    )


def target_spec(message: pb.Target, field: str = "target") -> TargetSpec | None:
    """Decodes a Target; None when no kind is set (methods then name the supported ones)."""
    kind = message.WhichOneof("kind")
    if kind is None:
        return None
    if kind == "next_token":
        chosen = message.next_token
        return TargetSpec(
            kind=kind,
            position=chosen.position if chosen.HasField("position") else -1,
            token_id=chosen.token_id if chosen.HasField("token_id") else None,
        )
    if kind == "logit_difference":
        chosen = message.logit_difference
        return TargetSpec(
            kind=kind,
            position=chosen.position if chosen.HasField("position") else -1,
            token_id=chosen.token_id,
            contrast_token_id=chosen.contrast_token_id,
        )
    if kind == "class_score":
        chosen = message.class_score
        return TargetSpec(
            kind=kind,
            class_index=chosen.class_index if chosen.HasField("class_index") else None,
            probability=chosen.probability,
        )
    if kind == "embedding_similarity":
        reference = message.embedding_similarity.reference
        return TargetSpec(kind=kind, reference=input_spec(reference, f"{field}.embedding_similarity.reference"))
    return TargetSpec(kind=kind)


_ABLATION_MODES = {
    pb.ABLATION_MODE_UNSPECIFIED: "per_head",
    pb.ABLATION_MODE_PER_HEAD: "per_head",
    pb.ABLATION_MODE_JOINT: "joint",
    pb.ABLATION_MODE_IMPORTANCE: "importance",
}
_ABLATION_VALUES = {
    pb.ABLATION_VALUE_UNSPECIFIED: "zero",
    pb.ABLATION_VALUE_ZERO: "zero",
    pb.ABLATION_VALUE_MEAN: "mean",
}


def head_ablation_query(request: pb.StreamHeadAblationRequest) -> HeadAblationQuery:
    """Decodes a StreamHeadAblationRequest."""
    return HeadAblationQuery(
        model=request.model,
        input=input_spec(request.input, "input"),
        target=target_spec(request.target),
        truncate=request.truncate,
        mode=enum_name(_ABLATION_MODES, request.mode),
        value=enum_name(_ABLATION_VALUES, request.value),
        heads=tuple((head.layer, head.head) for head in request.heads),
        mean_references=input_specs(request.mean_references, "mean_references"),
        continuation_tokens=request.continuation_tokens,
        batch_size=request.batch_size,
    )


_SALIENCY_METHODS = {
    pb.SALIENCY_METHOD_GRADIENT: "gradient",
    pb.SALIENCY_METHOD_GRADIENT_X_INPUT: "gradient_x_input",
    pb.SALIENCY_METHOD_INTEGRATED_GRADIENTS: "integrated_gradients",
    pb.SALIENCY_METHOD_SMOOTHGRAD: "smoothgrad",
    pb.SALIENCY_METHOD_OCCLUSION: "occlusion",
    pb.SALIENCY_METHOD_ATTENTION_ROLLOUT: "attention_rollout",
    pb.SALIENCY_METHOD_ATTENTION_FLOW: "attention_flow",
}
_BASELINES = {
    pb.BASELINE_UNSPECIFIED: "default",
    pb.BASELINE_PAD: "pad",
    pb.BASELINE_ZERO: "zero",
    pb.BASELINE_MASK: "mask",
    pb.BASELINE_TOKENS: "tokens",
}
_INTEGRATION_RULES = {
    pb.INTEGRATION_RULE_UNSPECIFIED: "default",
    pb.INTEGRATION_RULE_GAUSS_LEGENDRE: "gauss_legendre",
    pb.INTEGRATION_RULE_RIEMANN_LEFT: "riemann_left",
    pb.INTEGRATION_RULE_RIEMANN_RIGHT: "riemann_right",
    pb.INTEGRATION_RULE_RIEMANN_MIDDLE: "riemann_middle",
    pb.INTEGRATION_RULE_RIEMANN_TRAPEZOID: "riemann_trapezoid",
}


def saliency_query(request: pb.StreamSaliencyRequest) -> SaliencyQuery:
    """Decodes a StreamSaliencyRequest; batch_size comes from the chosen method's options."""
    method = enum_name(_SALIENCY_METHODS, request.method)
    if request.method == pb.SALIENCY_METHOD_UNSPECIFIED:
        method = "unspecified"
    ig, smoothgrad, occlusion = request.integrated_gradients, request.smoothgrad, request.occlusion
    batch_size = {
        "integrated_gradients": ig.batch_size,
        "smoothgrad": smoothgrad.batch_size,
        "occlusion": occlusion.batch_size,
    }.get(method, 0)
    return SaliencyQuery(
        model=request.model,
        input=input_spec(request.input, "input"),
        target=target_spec(request.target),
        method=method,
        truncate=request.truncate,
        per_dimension=request.per_dimension,
        baseline=enum_name(_BASELINES, ig.baseline),
        baseline_token_ids=tuple(int(token) for token in ig.baseline_token_ids),
        rule=enum_name(_INTEGRATION_RULES, ig.rule),
        steps=ig.steps,
        batch_size=batch_size,
        tolerance=ig.tolerance,
        noise_level=smoothgrad.noise_level,
        samples=smoothgrad.samples,
        seed=smoothgrad.seed,
        span=occlusion.span,
        stride=occlusion.stride,
        replacement=enum_name(_BASELINES, occlusion.replacement),
    )
