"""Saliency on the client: building a StreamSaliencyRequest and assembling the StreamSaliency
stream (header, then partial and final chunks) into a `SaliencyResult`.

    result = client.saliency("The capital of France is", model="gpt2",
                             target=targets.next_token(), method="ig", tolerance=1e-3)
    result.scores            # [tokens] float32, one attribution per input token
    result.refinements       # integrated gradients: (steps, convergence_delta, scores) streamed
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TypedDict

import numpy as np

from introspect_contract import pb
from .inputs import InputLike, make_input
from .options import enum_choices, enum_value, set_target, shared_fields
from .streams import HeaderFirst, SingleInputResult, single_input_fields
from introspect_contract.enums import BASELINE, INTEGRATION_RULE, SALIENCY_METHOD
from introspect_contract.tensors import decode_tensor

SALIENCY_METHODS: dict[str, int] = enum_choices(
    SALIENCY_METHOD, aliases={"ig": "integrated_gradients", "rollout": "attention_rollout", "flow": "attention_flow"}
)
"""Saliency method name (and the short aliases ig, rollout, flow) -> SaliencyMethod."""
BASELINES: dict[str, int] = enum_choices(BASELINE, unset="default", leave_out=("tokens",))
"""Baseline (and occlusion replacement) name -> Baseline; token ids select BASELINE_TOKENS."""
INTEGRATION_RULES: dict[str, int] = enum_choices(INTEGRATION_RULE, unset="default")
"""Integration rule name -> IntegrationRule ("default": Gauss-Legendre, or the trapezoid
rule with a tolerance)."""


class SaliencyOptions(TypedDict, total=False):
    """Keyword options of `saliency` / `stream_saliency` (see `saliency_request`)."""

    model: str
    target: pb.Target | None
    method: str
    baseline: str | Sequence[int]
    rule: str
    steps: int
    tolerance: float
    batch_size: int
    noise_level: float
    samples: int
    seed: int
    span: int
    stride: int
    replacement: str
    per_dimension: bool
    truncate: bool
    cache: str


def _token_ids(values: Sequence[int], option: str) -> list[int]:
    ids = list(values)
    if not ids or any(isinstance(item, bool) or not isinstance(item, (numbers.Integral, np.integer)) for item in ids):
        raise TypeError(f"{option} must be a baseline name or a non-empty sequence of token ids, got {values!r}")
    return [int(item) for item in ids]


def saliency_request(
    input: InputLike,
    *,
    model: str = "",
    target: pb.Target | None = None,
    method: str = "integrated_gradients",
    baseline: str | Sequence[int] = "default",
    rule: str = "default",
    steps: int = 0,
    tolerance: float = 0.0,
    batch_size: int = 0,
    noise_level: float = 0.0,
    samples: int = 0,
    seed: int = 0,
    span: int = 0,
    stride: int = 0,
    replacement: str = "default",
    per_dimension: bool = False,
    truncate: bool = False,
    cache: str = "use",
) -> pb.StreamSaliencyRequest:
    """Builds a StreamSaliencyRequest.

    Args:
        input: one input (text, (text, text_pair), token ids or an Input).
        model: model name; "" selects the server's default model.
        target: the score to explain (see `introspect_client.targets`); None sends none,
            and the server names the targets the model supports.
        method: "gradient", "gradient_x_input", "integrated_gradients" (or "ig"),
            "smoothgrad", "occlusion", "attention_rollout" (or "rollout"),
            "attention_flow" (or "flow").
        baseline: integrated gradients: "default" (pad, else mask, else zero), "pad",
            "zero", "mask", or the baseline's token ids (as many as the input has).
        rule: integrated gradients: "default" (Gauss-Legendre; the trapezoid rule with a
            tolerance, since its refinements reuse every point), "gauss_legendre",
            "riemann_left", "riemann_right", "riemann_middle" or "riemann_trapezoid".
        steps: integrated gradients: quadrature nodes (0: 50); with a tolerance, the most
            (0: 128, or 129 for riemann_trapezoid).
        tolerance: integrated gradients: if > 0, stream refinements at 8, 16, 32, ...
            steps (5, 9, 17, 33, ... for riemann_trapezoid) and stop
            once the convergence delta is at most this.
        batch_size: integration points, noisy samples or occluded variants per forward
            pass (0: the server chooses).
        noise_level: SmoothGrad: noise std as a fraction of the embeddings' range (0: 0.1).
        samples: SmoothGrad: noisy samples (0: 20).
        seed: SmoothGrad: seed of the noise.
        span, stride: occlusion: tokens occluded together and the step between spans
            (0: 1).
        replacement: occlusion: "default", "pad", "mask" or "zero".
        per_dimension: also return [tokens, hidden] attributions (gradient methods).
        truncate: cut an input longer than the model's limit instead of failing.
        cache: result cache policy: "use", "bypass" or "refresh".
    """
    integrated = pb.IntegratedGradientsOptions(
        rule=enum_value(INTEGRATION_RULES, rule, "rule"),  # type: ignore[arg-type]
        steps=int(steps),
        tolerance=float(tolerance),
    )
    if isinstance(baseline, str):
        integrated.baseline = enum_value(BASELINES, baseline, "baseline")  # type: ignore[assignment]
    else:
        integrated.baseline = pb.BASELINE_TOKENS
        integrated.baseline_token_ids.extend(_token_ids(baseline, "baseline"))
    method_value = enum_value(SALIENCY_METHODS, method, "method")
    request = pb.StreamSaliencyRequest(
        input=make_input(input),
        method=method_value,  # type: ignore[arg-type]
        integrated_gradients=integrated,
        smoothgrad=pb.SmoothGradOptions(noise_level=float(noise_level), samples=int(samples), seed=int(seed)),
        occlusion=pb.OcclusionOptions(
            span=int(span), stride=int(stride),
            replacement=enum_value(BASELINES, replacement, "replacement"),  # type: ignore[arg-type]
        ),
        per_dimension=bool(per_dimension),
        **shared_fields(model, truncate, cache),
    )
    options_field = SALIENCY_METHOD.name_of(method_value)  # the method's options, if it has any
    if options_field in request.DESCRIPTOR.fields_by_name:
        getattr(request, options_field).batch_size = int(batch_size)
    set_target(request, target)
    return request


@dataclass
class Refinement:
    """One complete intermediate or final result of integrated gradients (per refinement)
    or SmoothGrad (per batch of samples)."""

    steps: int
    convergence_delta: float
    scores: np.ndarray  # [tokens] float32


@dataclass
class SaliencyResult(SingleInputResult):
    """Result of a saliency call.

    Attributes (besides SingleInputResult's: model, fingerprint, cached and the input as
    the model saw it):
        scores: [tokens] float32, the final attribution of every token.
        per_dimension: [tokens, hidden] float32 when asked for, else None.
        target_score: the target on the input; baseline_score: on the baseline
            (integrated gradients).
        steps: integration steps (or SmoothGrad samples) behind the final result.
        convergence_delta: integrated gradients: |sum(scores) - (target - baseline)|.
        converged: False when integrated gradients was given a tolerance and the final
            convergence_delta is still above it (the steps ran out first); else True.
        refinements: every complete result streamed with steps (integrated gradients
            refinements, SmoothGrad batches), in order; the last is the final result.
        batch_size: rows per forward pass that ran: the request's batch_size, lowered by
            the server when it did not fit its memory budget, or the size it chose.
    """

    scores: np.ndarray
    per_dimension: np.ndarray | None
    target_score: float
    baseline_score: float
    steps: int
    convergence_delta: float
    converged: bool
    refinements: list[Refinement] = field(default_factory=list)
    batch_size: int = 0


class SaliencyAssembler(HeaderFirst):
    """Collects a StreamSaliency stream into a SaliencyResult: feed every message to
    `add`, then call `result`. Chunks carry scores for positions [token_start,
    token_end); later chunks overwrite earlier values of the same positions."""

    def __init__(self) -> None:
        super().__init__()
        self._scores = np.zeros(0, dtype=np.float32)
        self._per_dimension: np.ndarray | None = None
        self._last: pb.SaliencyChunk | None = None
        self._final = False
        self._refinements: dict[int, Refinement] = {}

    def add(self, message: pb.StreamSaliencyResponse) -> None:
        """Takes the next message of the stream."""
        kind = self._payload_kind(message)
        if kind == "header":
            tokens = len(message.header.inputs[0].token_ids) if message.header.inputs else 0
            self._scores = np.zeros(tokens, dtype=np.float32)
        elif kind == "chunk":
            self._add_chunk(message.chunk)

    def _add_chunk(self, chunk: pb.SaliencyChunk) -> None:
        start, end = chunk.token_start, chunk.token_end
        scores = decode_tensor(chunk.scores).astype(np.float32)
        if not 0 <= start <= end <= len(self._scores) or scores.shape != (end - start,):
            raise ValueError(
                f"chunk scores of shape {scores.shape} for positions [{start}, {end}) of a "
                f"{len(self._scores)}-token input"
            )
        self._scores[start:end] = scores
        if chunk.HasField("per_dimension"):
            values = decode_tensor(chunk.per_dimension).astype(np.float32)
            if values.ndim != 2 or values.shape[0] != end - start:
                raise ValueError(f"per_dimension of shape {values.shape} for positions [{start}, {end})")
            if self._per_dimension is None:
                self._per_dimension = np.zeros((len(self._scores), values.shape[1]), dtype=np.float32)
            self._per_dimension[start:end] = values
        if chunk.steps:
            refinement = self._refinements.setdefault(
                chunk.steps, Refinement(chunk.steps, chunk.convergence_delta, np.zeros_like(self._scores))
            )
            refinement.scores[start:end] = scores
        self._last = chunk
        self._final = self._final or chunk.final

    def result(self) -> SaliencyResult:
        """The assembled result; ValueError if the stream ended before its final chunk."""
        if self._header is None or self._last is None or not self._final:
            raise ValueError("the stream ended before its final result")
        last = self._last
        return SaliencyResult(
            **single_input_fields(self._header),
            scores=self._scores,
            per_dimension=self._per_dimension,
            target_score=last.target_score,
            baseline_score=last.baseline_score,
            steps=last.steps,
            convergence_delta=last.convergence_delta,
            converged=last.converged,
            refinements=list(self._refinements.values()),
            batch_size=last.batch_size,
        )
