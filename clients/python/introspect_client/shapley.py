"""Shapley head values on the client: building a StreamShapleyHeadsRequest and assembling
its stream (header, baseline, running estimates, final values) into a `ShapleyHeadsResult`.

    result = client.shapley_heads("The capital of France is", model="gpt2",
                                  target=targets.next_token(), heads=[(0, 1), (2, 3)])
    result.values            # [heads]: Shapley value of each head, in result.heads order
    result.grid()            # [layers, heads] with NaN for heads not chosen
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TypedDict

import numpy as np
from introspect_contract import pb
from introspect_contract.tensors import decode_tensor

from .ablation import ABLATION_VALUES, HeadLike, head_refs
from .image_inputs import ImageLike
from .inputs import InputLike, chosen_input, make_input
from .options import enum_value, set_target, shared_fields
from .streams import HeaderFirst, SingleInputResult, single_input_fields


class ShapleyHeadsOptions(TypedDict, total=False):
    """Keyword options of `shapley_heads` / `stream_shapley_heads` (see `shapley_heads_request`)."""

    image: ImageLike | None
    model: str
    target: pb.Target | None
    heads: Iterable[HeadLike] | str
    value: str
    max_standard_error: float
    max_permutations: int
    seed: int
    batch_size: int
    sample: bool
    truncate: bool
    cache: str


def shapley_heads_request(
    input: InputLike | None = None,
    *,
    image: ImageLike | None = None,
    model: str = "",
    target: pb.Target | None = None,
    heads: Iterable[HeadLike] | str = "all",
    value: str = "zero",
    max_standard_error: float = 0.0,
    max_permutations: int = 0,
    seed: int = 0,
    batch_size: int = 0,
    sample: bool = False,
    truncate: bool = False,
    cache: str = "use",
) -> pb.StreamShapleyHeadsRequest:
    """Builds a StreamShapleyHeadsRequest.

    Args:
        input: one input (text, (text, text_pair), token ids, an image or an Input).
        image: instead of `input`, one image (a str is a path).
        model: model name; "" selects the server's default model.
        target: the score the heads are valued for (see `introspect_client.targets`).
        heads: (layer, head) pairs, the players, or "all" for every head of the model.
        value: how a head left out of a coalition is ablated: "zero" or "mean".
        max_standard_error: sampling stops once every head's standard error is at most
            this; 0 runs to max_permutations.
        max_permutations: sample budget (rounded up to even: antithetic pairs); 0 lets
            the server choose.
        seed: seed of the permutation sampler.
        batch_size: coalitions per forward pass; 0 lets the server choose.
        sample: sample even when 12 heads or fewer would be enumerated exactly.
        truncate: cut inputs longer than the model's limit instead of failing.
        cache: result cache policy: "use", "bypass" or "refresh".
    """
    if int(seed) < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    request = pb.StreamShapleyHeadsRequest(
        input=make_input(chosen_input(input, image)),  # type: ignore[arg-type]
        heads=[] if heads == "all" else head_refs(heads),
        all_heads=heads == "all",
        value=enum_value(ABLATION_VALUES, value, "value"),  # type: ignore[arg-type]
        max_standard_error=float(max_standard_error),
        max_permutations=int(max_permutations),
        seed=int(seed),
        batch_size=int(batch_size),
        sample=bool(sample),
        **shared_fields(model, truncate, cache),
    )
    set_target(request, target)
    return request


@dataclass
class ShapleyEstimate:
    """One running estimate of the stream (sampling)."""

    values: np.ndarray
    standard_errors: np.ndarray
    permutations: int
    evaluations: int


@dataclass
class ShapleyHeadsResult(SingleInputResult):
    """Result of a Shapley head values call.

    Attributes (besides SingleInputResult's):
        heads: the chosen (layer, head) pairs, the order of `values`.
        values: [heads] float32 Shapley values (they sum to full_score - empty_score).
        standard_errors: [heads] float32 (0 when exact).
        full_score: the target score with every chosen head kept.
        empty_score: the target score with every chosen head ablated.
        num_layers, num_heads: the model's grid.
        exact: whether every coalition was enumerated.
        converged: whether sampling reached the requested standard error.
        permutations: permutations sampled (0 when exact).
        evaluations: coalitions evaluated.
        batch_size: coalitions per forward pass that ran.
        estimates: the running estimates, in stream order.
    """

    heads: list[tuple[int, int]]
    values: np.ndarray
    standard_errors: np.ndarray
    full_score: float
    empty_score: float
    num_layers: int
    num_heads: int
    exact: bool
    converged: bool
    permutations: int
    evaluations: int
    batch_size: int
    estimates: list[ShapleyEstimate] = field(default_factory=list)

    def grid(self, what: str = "values") -> np.ndarray:
        """`values` or `standard_errors` as a [layers, heads] grid, NaN for heads not chosen."""
        grid = np.full((self.num_layers, self.num_heads), np.nan, dtype=np.float32)
        source = self.values if what == "values" else self.standard_errors
        for (layer, head), item in zip(self.heads, source):
            grid[layer, head] = item
        return grid


class ShapleyHeadsAssembler(HeaderFirst):
    """Collects a StreamShapleyHeads stream into a ShapleyHeadsResult."""

    def __init__(self) -> None:
        super().__init__()
        self._baseline: pb.ShapleyBaseline | None = None
        self._estimates: list[ShapleyEstimate] = []
        self._final: pb.ShapleyFinal | None = None

    def _per_head(self, tensor: pb.Tensor) -> np.ndarray:
        assert self._baseline is not None
        values = decode_tensor(tensor).astype(np.float32)
        if values.shape != (len(self._baseline.heads),):
            raise ValueError(f"a per-head tensor of shape {values.shape} for {len(self._baseline.heads)} heads")
        return values

    def add(self, message: pb.StreamShapleyHeadsResponse) -> None:
        """Takes the next message of the stream."""
        kind = self._payload_kind(message)
        if kind == "header":
            return
        if kind == "baseline":
            self._baseline = message.baseline
            return
        if self._baseline is None:
            raise ValueError(f"the stream sent {kind} before its baseline")
        if kind == "estimate":
            estimate = message.estimate
            self._estimates.append(ShapleyEstimate(
                self._per_head(estimate.values), self._per_head(estimate.standard_errors),
                estimate.permutations, estimate.evaluations,
            ))
        elif kind == "final":
            self._final = message.final

    def result(self) -> ShapleyHeadsResult:
        """The assembled result; ValueError if the stream ended before the final values."""
        if self._header is None or self._baseline is None or self._final is None:
            raise ValueError("the stream ended without its header, baseline and final values")
        baseline, final = self._baseline, self._final
        return ShapleyHeadsResult(
            **single_input_fields(self._header),
            heads=[(ref.layer, ref.head) for ref in baseline.heads],
            values=self._per_head(final.values),
            standard_errors=self._per_head(final.standard_errors),
            full_score=baseline.full_score,
            empty_score=baseline.empty_score,
            num_layers=baseline.num_layers,
            num_heads=baseline.num_heads,
            exact=final.exact,
            converged=final.converged,
            permutations=final.permutations,
            evaluations=final.evaluations,
            batch_size=baseline.batch_size,
            estimates=self._estimates,
        )
