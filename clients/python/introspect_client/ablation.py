"""Head ablation on the client: building a StreamHeadAblationRequest and assembling the
StreamHeadAblation stream (header, baseline, then per-layer results, one joint result
or one importance grid) into an `AblationResult`.

    result = client.ablate("The capital of France is", model="gpt2", target=targets.next_token())
    result.target_delta  # [layers, heads]: ablated score - unablated score
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, TypedDict

import numpy as np

from introspect_contract import pb
from .image_inputs import ImageLike
from .inputs import InputLike, InputsLike, chosen_input, make_input, make_inputs
from .options import enum_choices, enum_value, set_target, shared_fields
from .streams import HeaderFirst, SingleInputResult, single_input_fields
from introspect_contract.enums import ABLATION_MODE, ABLATION_VALUE
from introspect_contract.tensors import decode_tensor

ABLATION_MODES: dict[str, int] = enum_choices(ABLATION_MODE)
"""Ablation mode name -> AblationMode."""
ABLATION_VALUES: dict[str, int] = enum_choices(ABLATION_VALUE)
"""Ablation value name -> AblationValue."""

HeadLike = tuple[int, int] | pb.HeadRef
"""One attention head: (layer, head) or a HeadRef."""


class AblationOptions(TypedDict, total=False):
    """Keyword options of `ablate` / `stream_ablation` (see `ablation_request`)."""

    image: ImageLike | None
    model: str
    target: pb.Target | None
    mode: str
    value: str
    heads: Iterable[HeadLike]
    mean_references: InputsLike | None
    continuation_tokens: int
    batch_size: int
    truncate: bool
    cache: str


def head_refs(heads: Iterable[HeadLike]) -> list[pb.HeadRef]:
    """(layer, head) pairs or HeadRefs as HeadRefs; TypeError for anything else."""
    refs = []
    for item in heads:
        if isinstance(item, pb.HeadRef):
            refs.append(pb.HeadRef(layer=item.layer, head=item.head))
            continue
        if (
            not isinstance(item, (tuple, list))
            or len(item) != 2
            or any(isinstance(part, bool) or not hasattr(part, "__index__") for part in item)
        ):
            raise TypeError(f"a head is a (layer, head) pair of ints or a HeadRef, got {item!r}")
        refs.append(pb.HeadRef(layer=int(item[0]), head=int(item[1])))
    return refs


def ablation_request(
    input: InputLike | None = None,
    *,
    image: ImageLike | None = None,
    model: str = "",
    target: pb.Target | None = None,
    mode: str = "per_head",
    value: str = "zero",
    heads: Iterable[HeadLike] = (),
    mean_references: InputsLike | None = None,
    continuation_tokens: int = 0,
    batch_size: int = 0,
    truncate: bool = False,
    cache: str = "use",
) -> pb.StreamHeadAblationRequest:
    """Builds a StreamHeadAblationRequest.

    Args:
        input: one input (text, (text, text_pair), token ids, an image or an Input).
        image: instead of `input`, one image (see `make_image_input`; a str is a path).
        model: model name; "" selects the server's default model.
        target: the score whose change is measured (see `introspect_client.targets`);
            None sends none, and the server names the targets the model supports.
        mode: "per_head" (each head on its own), "joint" (the `heads` together) or
            "importance" (gradient of the target w.r.t. a gate on every head).
        value: "zero" or "mean" (replace a head's output by its mean output).
        heads: (layer, head) pairs: per_head, the heads to ablate (empty: all); joint,
            the set; importance, the heads to report (empty: all).
        mean_references: with value "mean", inputs whose positions the mean is taken
            over (default: the input's own positions).
        continuation_tokens: joint on causal LMs: greedy continuation length with and
            without the ablation (0: none).
        batch_size: ablated variants per forward pass; 0 lets the server choose.
        truncate: cut inputs longer than the model's limit instead of failing.
        cache: result cache policy: "use", "bypass" or "refresh".
    """
    request = pb.StreamHeadAblationRequest(
        input=make_input(chosen_input(input, image)),  # type: ignore[arg-type]
        mode=enum_value(ABLATION_MODES, mode, "mode"),  # type: ignore[arg-type]
        value=enum_value(ABLATION_VALUES, value, "value"),  # type: ignore[arg-type]
        heads=head_refs(heads),
        mean_references=make_inputs(mean_references) if mean_references else [],
        continuation_tokens=int(continuation_tokens),
        batch_size=int(batch_size),
        **shared_fields(model, truncate, cache),
    )
    set_target(request, target)
    return request


@dataclass
class JointAblationResult:
    """A set of heads knocked out together.

    Attributes:
        heads: the (layer, head) pairs ablated.
        ablated_score: the target score with them ablated.
        output_change: KL divergence or cosine distance of the output (see the result's
            output_change_metric).
        base_continuation / ablated_continuation: greedy continuation token ids without
            and with the ablation (empty unless asked for, causal LMs only).
        base_continuation_tokens / ablated_continuation_tokens: their token strings.
    """

    heads: list[tuple[int, int]]
    ablated_score: float
    output_change: float
    base_continuation: list[int] = field(default_factory=list)
    ablated_continuation: list[int] = field(default_factory=list)
    base_continuation_tokens: list[str] = field(default_factory=list)
    ablated_continuation_tokens: list[str] = field(default_factory=list)


@dataclass
class AblationResult(SingleInputResult):
    """Result of a head ablation call.

    Attributes (besides SingleInputResult's: model, fingerprint, cached and the input as
    the model saw it):
        baseline_score: the target score without ablation.
        output_change_metric: "kl_divergence" (next-token or class distribution) or
            "cosine_distance" (pooled embedding).
        target_delta: per_head: [layers, heads] float32, ablated minus unablated score;
            NaN for heads not ablated. None in the other modes.
        output_change: per_head: [layers, heads] float32 output change; NaN likewise.
        joint: the joint result (mode "joint"), else None.
        importance: mode "importance": [layers, heads] float32, d target / d gate of
            every head (NaN for heads not asked for), else None.
        batch_size: per_head: ablated variants per forward pass that ran (the request's
            batch_size, lowered by the server to fit its memory budget, or its choice);
            1 in the other modes.
    """

    baseline_score: float
    output_change_metric: str
    target_delta: np.ndarray | None = None
    output_change: np.ndarray | None = None
    joint: JointAblationResult | None = None
    importance: np.ndarray | None = None
    batch_size: int = 0

    def to_xarray(self) -> Any:
        """The [layer, head] grids as an xarray.Dataset (needs xarray)."""
        from .xarray_views import ablation_dataset

        return ablation_dataset(self)


class AblationAssembler(HeaderFirst):
    """Collects a StreamHeadAblation stream into an AblationResult: feed every message to
    `add`, then call `result`."""

    def __init__(self) -> None:
        super().__init__()
        self._baseline: pb.AblationBaseline | None = None
        self._deltas: np.ndarray | None = None
        self._changes: np.ndarray | None = None
        self._joint: JointAblationResult | None = None
        self._importance: np.ndarray | None = None

    def add(self, message: pb.StreamHeadAblationResponse) -> None:
        """Takes the next message of the stream."""
        kind = self._payload_kind(message)
        if kind == "header":
            return
        if kind == "baseline":
            self._baseline = message.baseline
            grid = (message.baseline.num_layers, message.baseline.num_heads)
            self._deltas = np.full(grid, np.nan, dtype=np.float32)
            self._changes = np.full(grid, np.nan, dtype=np.float32)
            return
        if self._baseline is None or self._deltas is None or self._changes is None:
            raise ValueError(f"the stream sent {kind} before its baseline")
        if kind == "layer":
            self._add_layer(message.layer, self._deltas, self._changes)
        elif kind == "joint":
            joint = message.joint
            self._joint = JointAblationResult(
                heads=[(ref.layer, ref.head) for ref in joint.heads],
                ablated_score=joint.ablated_score,
                output_change=joint.output_change,
                base_continuation=[int(token) for token in joint.base_continuation],
                ablated_continuation=[int(token) for token in joint.ablated_continuation],
                base_continuation_tokens=list(joint.base_continuation_tokens),
                ablated_continuation_tokens=list(joint.ablated_continuation_tokens),
            )
        elif kind == "importance":
            importance = decode_tensor(message.importance.importance).astype(np.float32)
            if importance.shape != self._deltas.shape:
                raise ValueError(f"importance of shape {importance.shape}, expected {self._deltas.shape}")
            self._importance = importance

    @staticmethod
    def _add_layer(layer: pb.LayerAblation, deltas: np.ndarray, changes: np.ndarray) -> None:
        delta = decode_tensor(layer.target_delta)
        change = decode_tensor(layer.output_change)
        heads = list(layer.heads)
        if not 0 <= layer.layer < deltas.shape[0] or any(not 0 <= head < deltas.shape[1] for head in heads):
            raise ValueError(f"layer {layer.layer}, heads {heads} outside the {deltas.shape} grid")
        if delta.shape != (len(heads),) or change.shape != (len(heads),):
            raise ValueError(f"layer {layer.layer}: {len(heads)} heads but tensors of shape {delta.shape}")
        deltas[layer.layer, heads] = delta
        changes[layer.layer, heads] = change

    def result(self) -> AblationResult:
        """The assembled result; ValueError if the stream ended early."""
        if self._header is None or self._baseline is None:
            raise ValueError("the stream ended without its header and baseline")
        per_head = self._joint is None and self._importance is None
        return AblationResult(
            **single_input_fields(self._header),
            baseline_score=self._baseline.target_score,
            output_change_metric=self._baseline.output_change_metric,
            target_delta=self._deltas if per_head else None,
            output_change=self._changes if per_head else None,
            joint=self._joint,
            importance=self._importance,
            batch_size=self._baseline.batch_size,
        )
