"""Saliency on the client: building a StreamSaliencyRequest and assembling the StreamSaliency
stream (header, then partial and final chunks) into a `SaliencyResult`.

    result = client.saliency("The capital of France is", model="gpt2",
                             target=targets.next_token(), method="ig", tolerance=1e-3)
    result.scores            # [tokens] float32, one attribution per input token
    result.refinements       # integrated gradients: (steps, convergence_delta, scores) streamed

    result = client.saliency(image=Path("cat.jpg"), model="vit", target=targets.class_score(),
                             method="grad_cam", also=["layer_cam"], upsample=True)
    result.grid_scores       # [grid_rows, grid_columns]; result.image: the ImageLayout
    result.by_method["layer_cam"].grid_scores
"""

from __future__ import annotations

import numbers
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, TypedDict

import numpy as np

from introspect_contract import pb
from .image_inputs import ImageLike
from .inputs import InputLike, chosen_input, make_input
from .options import enum_choices, enum_value, set_target, shared_fields
from .streams import HeaderFirst, SingleInputResult, single_input_fields, token_count
from introspect_contract.enums import BASELINE, CAM_POINT, INTEGRATION_RULE, SALIENCY_METHOD
from introspect_contract.tensors import decode_tensor

SALIENCY_METHODS: dict[str, int] = enum_choices(
    SALIENCY_METHOD, aliases={"ig": "integrated_gradients", "rollout": "attention_rollout", "flow": "attention_flow"}
)
"""Saliency method name (and the short aliases ig, rollout, flow) -> SaliencyMethod."""
CAM_METHODS: tuple[str, ...] = ("grad_cam", "hi_res_cam", "xgrad_cam", "layer_cam")
"""The CAM methods (images only; CamOptions applies to them)."""
CAM_POINTS: dict[str, int] = enum_choices(CAM_POINT, unset="default")
"""Where a CAM reads its activations, by name -> CamPoint ("default": attention_input)."""
BASELINES: dict[str, int] = enum_choices(BASELINE, unset="default", leave_out=("tokens",))
"""Baseline (and occlusion replacement) name -> Baseline; token ids select BASELINE_TOKENS."""
INTEGRATION_RULES: dict[str, int] = enum_choices(INTEGRATION_RULE, unset="default")
"""Integration rule name -> IntegrationRule ("default": Gauss-Legendre, or the trapezoid
rule with a tolerance)."""


class SaliencyOptions(TypedDict, total=False):
    """Keyword options of `saliency` / `stream_saliency` (see `saliency_request`)."""

    image: ImageLike | None
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
    blur_sigma: float
    span: int
    stride: int
    replacement: str
    per_dimension: bool
    cam_layer: int | None
    cam_point: str
    also: Iterable[str]
    upsample: bool
    truncate: bool
    cache: str


def _token_ids(values: Sequence[int], option: str) -> list[int]:
    ids = list(values)
    if not ids or any(isinstance(item, bool) or not isinstance(item, (numbers.Integral, np.integer)) for item in ids):
        raise TypeError(f"{option} must be a baseline name or a non-empty sequence of token ids, got {values!r}")
    return [int(item) for item in ids]


def saliency_request(
    input: InputLike | None = None,
    *,
    image: ImageLike | None = None,
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
    blur_sigma: float = 0.0,
    span: int = 0,
    stride: int = 0,
    replacement: str = "default",
    per_dimension: bool = False,
    cam_layer: int | None = None,
    cam_point: str = "default",
    also: Iterable[str] = (),
    upsample: bool = False,
    truncate: bool = False,
    cache: str = "use",
) -> pb.StreamSaliencyRequest:
    """Builds a StreamSaliencyRequest.

    Args:
        input: one input (text, (text, text_pair), token ids, an image or an Input).
        image: instead of `input`, one image (see `make_image_input`; a str is a path).
        model: model name; "" selects the server's default model.
        target: the score to explain (see `introspect_client.targets`); None sends none,
            and the server names the targets the model supports.
        method: "gradient", "gradient_x_input", "integrated_gradients" (or "ig"),
            "smoothgrad", "occlusion", "attention_rollout" (or "rollout"),
            "attention_flow" (or "flow"); images also "grad_cam", "hi_res_cam",
            "xgrad_cam", "layer_cam".
        baseline: integrated gradients: "default" (pad, else mask, else zero), "pad",
            "zero", "mask", or the baseline's token ids (as many as the input has);
            images: "black", "blur" or "noise" too.
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
        seed: seed of SmoothGrad's noise and of the "noise" baseline's pixels.
        blur_sigma: baseline "blur": the Gaussian's std in pixels (0: 5).
        span, stride: occlusion: tokens occluded together and the step between spans
            (0: 1).
        replacement: occlusion: "default", "pad", "mask" or "zero"; images "black".
        per_dimension: also return [tokens, hidden] attributions (gradient methods).
        cam_layer: CAM methods: the block read (0-based); None: the last.
        cam_point: CAM methods: "default" (= "attention_input"), "attention_input",
            "block_input" or "block_output".
        also: CAM methods: other CAM methods computed from the same pass (their results
            are in `SaliencyResult.by_method`).
        upsample: images: also return the grid scores resized to the processed image.
        truncate: cut an input longer than the model's limit instead of failing.
        cache: result cache policy: "use", "bypass" or "refresh".
    """
    integrated = pb.IntegratedGradientsOptions(
        rule=enum_value(INTEGRATION_RULES, rule, "rule"),  # type: ignore[arg-type]
        steps=int(steps),
        tolerance=float(tolerance),
        blur_sigma=float(blur_sigma),
        seed=int(seed),
    )
    if isinstance(baseline, str):
        integrated.baseline = enum_value(BASELINES, baseline, "baseline")  # type: ignore[assignment]
    else:
        integrated.baseline = pb.BASELINE_TOKENS
        integrated.baseline_token_ids.extend(_token_ids(baseline, "baseline"))
    method_value = enum_value(SALIENCY_METHODS, method, "method")
    request = pb.StreamSaliencyRequest(
        input=make_input(chosen_input(input, image)),  # type: ignore[arg-type]
        method=method_value,  # type: ignore[arg-type]
        integrated_gradients=integrated,
        smoothgrad=pb.SmoothGradOptions(noise_level=float(noise_level), samples=int(samples), seed=int(seed)),
        occlusion=pb.OcclusionOptions(
            span=int(span), stride=int(stride),
            replacement=enum_value(BASELINES, replacement, "replacement"),  # type: ignore[arg-type]
        ),
        per_dimension=bool(per_dimension),
        cam=cam_options(cam_layer, cam_point, also),
        upsample=bool(upsample),
        **shared_fields(model, truncate, cache),
    )
    options_field = SALIENCY_METHOD.name_of(method_value)  # the method's options, if it has any
    if options_field in request.DESCRIPTOR.fields_by_name:
        getattr(request, options_field).batch_size = int(batch_size)
    set_target(request, target)
    return request


def cam_options(layer: int | None, point: str, also: Iterable[str]) -> pb.CamOptions:
    """The CamOptions of a request: the CAM layer (None: unset, the last), the point by
    name (see CAM_POINTS) and the `also` methods by name (CAM methods only)."""
    if isinstance(also, str):
        also = [also]
    others = [enum_value(SALIENCY_METHODS, name, "also") for name in also]
    not_cam = [name for name in also if SALIENCY_METHOD.name_of(SALIENCY_METHODS[name.strip().lower()]) not in CAM_METHODS]
    if not_cam:
        raise ValueError(f"also takes CAM methods ({', '.join(CAM_METHODS)}); got {', '.join(not_cam)}")
    options = pb.CamOptions(point=enum_value(CAM_POINTS, point, "cam_point"), also=others)  # type: ignore[arg-type]
    if layer is not None:
        if isinstance(layer, bool) or not hasattr(layer, "__index__"):
            raise TypeError(f"cam_layer must be an int or None, got {layer!r}")
        options.layer = int(layer)
    return options


def method_name(value: int, default: str = "") -> str:
    """The canonical name of a SaliencyMethod number ("integrated_gradients", ...);
    `default` for UNSPECIFIED."""
    return SALIENCY_METHOD.name_of(value) or default


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

    Attributes (besides SingleInputResult's: model, fingerprint, cached, the input as
    the model saw it and, for images, its `image` layout):
        scores: [tokens] float32, the final attribution of every token (image inputs:
            special tokens 0, then the patches in row-major order).
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
        method: the method's name ("integrated_gradients", "grad_cam", ...).
        grid_scores: images: per-patch scores [grid_rows, grid_columns] float32, else None.
        pixel_scores: images, pixel methods: [height, width] float32 of the processed
            image, else None.
        upsampled_scores: images, with upsample: grid_scores resized to [height, width].
        by_method: method name -> result, for the requested method and every CAM `also`
            method (the results in it have an empty by_method of their own).
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
    method: str = ""
    grid_scores: np.ndarray | None = None  # [grid_rows, grid_columns]
    pixel_scores: np.ndarray | None = None  # [height, width]
    upsampled_scores: np.ndarray | None = None  # [height, width]
    by_method: dict[str, SaliencyResult] = field(default_factory=dict)

    def to_xarray(self) -> Any:
        """The token scores as an xarray.DataArray ("token", with the token strings as
        the coordinate "token_text"); with per_dimension a Dataset (needs xarray)."""
        from .xarray_views import saliency_dataarray

        return saliency_dataarray(self)


_MAPS = ("grid_scores", "pixel_scores", "upsampled_scores")
"""The SaliencyChunk fields that carry 2-D maps of image inputs."""


class _MethodScores:
    """The chunks of one method's result, assembled: scores of positions [token_start,
    token_end) (later chunks overwrite earlier values), refinements by steps, and the
    maps of the final chunk."""

    def __init__(self, tokens: int) -> None:
        self.scores = np.zeros(tokens, dtype=np.float32)  # [tokens]
        self.per_dimension: np.ndarray | None = None  # [tokens, hidden]
        self.refinements: dict[int, Refinement] = {}
        self.maps: dict[str, np.ndarray] = {}  # _MAPS name -> [rows, columns]
        self.last: pb.SaliencyChunk | None = None
        self.final = False

    def add(self, chunk: pb.SaliencyChunk) -> None:
        """Takes the next chunk of this method."""
        start, end = chunk.token_start, chunk.token_end
        scores = decode_tensor(chunk.scores).astype(np.float32)
        if not 0 <= start <= end <= len(self.scores) or scores.shape != (end - start,):
            raise ValueError(
                f"chunk scores of shape {scores.shape} for positions [{start}, {end}) of a "
                f"{len(self.scores)}-token input"
            )
        self.scores[start:end] = scores
        if chunk.HasField("per_dimension"):
            values = decode_tensor(chunk.per_dimension).astype(np.float32)
            if values.ndim != 2 or values.shape[0] != end - start:
                raise ValueError(f"per_dimension of shape {values.shape} for positions [{start}, {end})")
            if self.per_dimension is None:
                self.per_dimension = np.zeros((len(self.scores), values.shape[1]), dtype=np.float32)
            self.per_dimension[start:end] = values
        for name in _MAPS:
            if chunk.HasField(name):
                values = decode_tensor(getattr(chunk, name)).astype(np.float32)
                if values.ndim != 2:
                    raise ValueError(f"{name} of shape {values.shape}, expected [rows, columns]")
                self.maps[name] = values
        if chunk.steps:
            refinement = self.refinements.setdefault(
                chunk.steps, Refinement(chunk.steps, chunk.convergence_delta, np.zeros_like(self.scores))
            )
            refinement.scores[start:end] = scores
        self.last = chunk
        self.final = self.final or chunk.final

    def result(self, header: pb.StreamHeader, method: str) -> SaliencyResult:
        """This method's result (its final chunk's scalars)."""
        assert self.last is not None
        last = self.last
        return SaliencyResult(
            **single_input_fields(header),
            scores=self.scores,
            per_dimension=self.per_dimension,
            target_score=last.target_score,
            baseline_score=last.baseline_score,
            steps=last.steps,
            convergence_delta=last.convergence_delta,
            converged=last.converged,
            refinements=list(self.refinements.values()),
            batch_size=last.batch_size,
            method=method,
            **{name: self.maps.get(name) for name in _MAPS},
        )


class SaliencyAssembler(HeaderFirst):
    """Collects a StreamSaliency stream into a SaliencyResult: feed every message to
    `add`, then call `result`. Chunks carry scores for positions [token_start,
    token_end); later chunks of a method overwrite earlier values of the same positions.
    Chunks of the CAM `also` methods (their `method` differs from the first chunk's)
    assemble into results of their own, in `by_method`. `method` names the requested
    method, for chunks of servers that leave `method` unset."""

    def __init__(self, method: str = "") -> None:
        super().__init__()
        self._requested = method_name(SALIENCY_METHODS.get(method.strip().lower(), 0), method)
        self._tokens = 0
        self._methods: dict[str, _MethodScores] = {}  # first: the requested method

    def add(self, message: pb.StreamSaliencyResponse) -> None:
        """Takes the next message of the stream."""
        kind = self._payload_kind(message)
        if kind == "header":
            self._tokens = token_count(message.header.inputs[0]) if message.header.inputs else 0
        elif kind == "chunk":
            chunk = message.chunk
            primary = next(iter(self._methods), self._requested)
            name = method_name(chunk.method, primary)
            self._methods.setdefault(name, _MethodScores(self._tokens)).add(chunk)

    def result(self) -> SaliencyResult:
        """The assembled result; ValueError if the stream ended before its final chunks."""
        if self._header is None or not self._methods:
            raise ValueError("the stream ended before its final result")
        unfinished = [name or "the requested method" for name, state in self._methods.items() if not state.final]
        if unfinished:
            raise ValueError(f"the stream ended before the final result of {', '.join(unfinished)}")
        results = {name: state.result(self._header, name) for name, state in self._methods.items()}
        primary = next(iter(results.values()))
        return replace(primary, by_method=results)
