"""Circuits: activation patching, attribution patching, direct logit attribution and
attention knockout on (clean, corrupted) input pairs, as one streaming RPC.

This module is the RPC's method: it validates the query, encodes every pair, binds the
metric (the request's target, or the KL divergence from the clean run's next-token
distribution), sends each pair's baseline and hands the pair to the technique the
request names (one module each: patching_activation, patching_attribution,
logit_attribution, knockout), then sends the means over pairs.

Positions: results are indexed by clean positions. Pairs of equal length align position
by position; otherwise the pair gives an alignment (per clean position, the corrupted
one, -1 for none).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from .. import hooks
from ..engine import Sink
from ..errors import require
from ..inputs import EncodedBatch
from ..models import LoadedModel, ModelDescription
from ..requests import PATCH_DIRECTIONS, PATCH_POINTS, PATCHING_METHODS, PATCHING_METRICS, PatchingQuery, TargetSpec
from ..results import (
    KnockoutResultData,
    LogitAttributionResult,
    PatchingBaselineResult,
    PatchingCorrelationResult,
    PatchingLayerResult,
    StreamStart,
    WireArray,
)
from ..targets import BoundTarget, bind_target, check_target_kind
from ..wire import to_wire
from .registry import Method
from .selection import absolute_positions, unique_in_range

DEFAULT_POINTS = ("resid_pre", "attn_out", "mlp_out", "head")
HOOK_POINTS = {
    "resid_pre": hooks.RESID_PRE,
    "resid_post": hooks.RESID_POST,
    "attn_out": hooks.ATTN_OUT,
    "mlp_out": hooks.MLP_OUT,
    "head": hooks.ATTN_Z,
    "head_position": hooks.ATTN_Z,
}
"""The hook point (hooks.py) each patch point reads or replaces."""
MAX_PAIRS = 64
Check = Callable[[], None]


@dataclass(frozen=True)
class PatchingOptions:
    """A validated patching query (positions are resolved per pair, against its length)."""

    method: str
    metric: str
    points: tuple[str, ...]  # patch points, in request order (activation, attribution)
    direction: str  # "denoising" or "noising"
    layers: tuple[int, ...]  # sorted, unique
    positions: tuple[int, ...]  # as requested (negative from the end); empty: all
    with_exact: bool
    batch_size: int  # 0: automatic
    technique: Any  # the technique's own validated options


@dataclass(frozen=True)
class PairMetric:
    """The scalar patches change, bound to one pair: the target (bound on the clean
    input; its position mapped to the corrupted one) or the KL divergence from the clean
    run's next-token distribution at the target position."""

    kind: str  # "target" or "kl_divergence"
    clean_target: BoundTarget
    corrupted_target: BoundTarget | None
    clean_log_probabilities: torch.Tensor | None  # [vocab] float32, KL only

    def target(self, run: str) -> BoundTarget:
        """The bound target of one run ("clean" or "corrupted")."""
        chosen = self.clean_target if run == "clean" else self.corrupted_target
        assert chosen is not None
        return chosen

    def scores(self, outputs: torch.Tensor, attention_mask: torch.Tensor, run: str) -> torch.Tensor:
        """The metric per row [rows] float32 from the model's outputs on rows of the run
        `run` (whose positions the target uses): the target, or KL(clean || row)."""
        target = self.target(run)
        if self.kind == "target":
            return target.score(outputs, attention_mask)
        assert self.clean_log_probabilities is not None and target.position is not None
        log_probabilities = torch.log_softmax(outputs[:, target.position].float(), dim=-1)  # [rows, vocab]
        clean = self.clean_log_probabilities.to(log_probabilities.device)
        return (clean.exp() * (clean - log_probabilities)).sum(dim=-1)


@dataclass(frozen=True)
class PatchingPair:
    """One encoded pair, its metric and its unpatched scores."""

    index: int
    clean: EncodedBatch  # one row
    corrupted: EncodedBatch | None  # one row
    alignment: tuple[int, ...]  # per clean position, the corrupted position (-1: none)
    positions: tuple[int, ...]  # clean positions to patch, resolved, sorted
    metric: PairMetric
    clean_score: float
    corrupted_score: float

    def normalized(self, values: torch.Tensor) -> torch.Tensor | None:
        """(values - corrupted) / (clean - corrupted) for the target metric; None for KL
        (and all NaN when the two runs score the same: nothing to normalise by)."""
        if self.metric.kind != "target":
            return None
        span = self.clean_score - self.corrupted_score
        if span == 0:
            return torch.full_like(values, float("nan"))
        return (values - self.corrupted_score) / span


@dataclass(frozen=True)
class PatchingTechnique:
    """A circuit method, registered by name in TECHNIQUES below."""

    name: str
    # (model description, query) -> its validated options (cheap; before queueing)
    prepare: Callable[[ModelDescription, PatchingQuery], Any]
    # (model, options, pair, check) -> the pair's results (PatchingLayerResult,
    # PatchingCorrelationResult, LogitAttributionResult or KnockoutResultData)
    run: Callable[[LoadedModel, PatchingOptions, PatchingPair, Check], Iterator[object]]
    needs_corrupted: bool = True  # every pair must give a corrupted input
    # (model, options, pair) -> patched rows per forward it will run (the baseline reports it)
    rows_per_forward: Callable[[LoadedModel, PatchingOptions, PatchingPair], int] = lambda model, options, pair: 1
    # (model, options, pair): checks against the encoded pair (INVALID_ARGUMENT), for
    # every pair before the stream header
    validate: Callable[[LoadedModel, PatchingOptions, PatchingPair], None] = lambda model, options, pair: None


TECHNIQUES: dict[str, PatchingTechnique] = {}


def register(technique: PatchingTechnique) -> PatchingTechnique:
    """Adds a technique to TECHNIQUES (each technique module calls it once)."""
    TECHNIQUES[technique.name] = technique
    return technique


def prepare(description: ModelDescription, query: PatchingQuery) -> PatchingOptions:
    """Validates a patching query against the model (before queueing)."""
    require(query.method in PATCHING_METHODS, "method", f"unknown method {query.method!r}; use one of {PATCHING_METHODS}")
    technique = TECHNIQUES.get(query.method)
    require(technique is not None, "method", f"{query.method} is not served by this server")
    assert technique is not None
    require(0 < len(query.pairs) <= MAX_PAIRS, "pairs", f"send 1 to {MAX_PAIRS} (clean, corrupted) pairs")
    for index, pair in enumerate(query.pairs):
        require(not technique.needs_corrupted or pair.corrupted is not None, f"pairs[{index}].corrupted",
                f"{query.method} patching needs a corrupted input in every pair")
    require(query.metric in PATCHING_METRICS, "metric", f"unknown metric {query.metric!r}; use {PATCHING_METRICS}")
    if query.metric == "kl_divergence":
        require(description.kind == "causal_lm", "metric",
                f"kl_divergence compares next-token distributions; model {description.name!r} is a "
                f"{description.kind}")
    else:
        check_target_kind(description, query.target)
    require(query.direction in PATCH_DIRECTIONS, "direction", f"unknown direction; use {PATCH_DIRECTIONS}")
    points = tuple(dict.fromkeys(query.points)) or DEFAULT_POINTS
    unknown = [point for point in points if point not in PATCH_POINTS]
    require(not unknown, "points", f"unknown patch points {unknown}; use {PATCH_POINTS}")
    layers = tuple(sorted(unique_in_range(query.layers, description.num_layers, "layers", "layer"))) or tuple(
        range(description.num_layers))
    require(query.batch_size >= 0, "batch_size", f"must be >= 0 (0 picks automatically), got {query.batch_size}")
    options = PatchingOptions(
        method=query.method, metric=query.metric, points=points, direction=query.direction, layers=layers,
        positions=query.positions, with_exact=query.with_exact, batch_size=query.batch_size, technique=None,
    )
    return replace(options, technique=technique.prepare(description, query))


def _alignment(given: tuple[int, ...], clean: int, corrupted: int | None, field: str) -> tuple[int, ...]:
    if corrupted is None:
        return ()
    if not given:
        require(clean == corrupted, f"{field}.corrupted",
                f"the clean input has {clean} tokens and the corrupted {corrupted}: send inputs of equal length "
                "or an alignment (per clean position, the corrupted position)")
        return tuple(range(clean))
    require(len(given) == clean, f"{field}.alignment",
            f"{len(given)} entries for a clean input of {clean} tokens (one per clean position)")
    bad = [position for position in given if not -1 <= position < corrupted]
    require(not bad, f"{field}.alignment", f"positions {bad[:5]} are outside the corrupted input ({corrupted} tokens;"
                                          " -1 for none)")
    return tuple(given)


def _bind_metric(model: LoadedModel, query: PatchingQuery, options: PatchingOptions, clean: EncodedBatch,
                 clean_outputs: torch.Tensor, corrupted: EncodedBatch | None, alignment: tuple[int, ...],
                 field: str) -> PairMetric:
    target_spec = query.target
    if options.metric == "kl_divergence" and target_spec is None:
        target_spec = TargetSpec(kind="next_token")
    clean_target = bind_target(model, target_spec, clean, clean_outputs)
    corrupted_target = None
    if corrupted is not None:
        position = clean_target.position
        if position is not None:
            mapped = alignment[position]
            require(mapped >= 0, f"{field}.alignment",
                    f"the metric's position {position} has no corrupted counterpart")
            position = mapped
        corrupted_target = replace(clean_target, position=position)
    log_probabilities = None
    if options.metric == "kl_divergence":
        log_probabilities = torch.log_softmax(clean_outputs[0, clean_target.position].float(), dim=-1)
    return PairMetric(options.metric, clean_target, corrupted_target, log_probabilities)


def _outputs(model: LoadedModel, clean: EncodedBatch, corrupted: EncodedBatch | None
             ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The model's outputs on the clean and the corrupted input: one forward of both rows
    when they have one length (neither is then padded, so the rows cannot interact)."""
    with torch.no_grad():
        if corrupted is not None and corrupted.width == clean.width:
            both = model.outputs(model.batch([clean.inputs[0], corrupted.inputs[0]]).model_inputs())
            return both[:1], both[1:]
        return (model.outputs(clean.model_inputs()),
                None if corrupted is None else model.outputs(corrupted.model_inputs()))


def encode_pairs(model: LoadedModel, query: PatchingQuery, options: PatchingOptions) -> list[PatchingPair]:
    """Every pair encoded (INVALID_ARGUMENT naming the field for a bad input, length or
    alignment), its metric bound and its two runs scored (one forward of both)."""
    pairs = []
    for index, spec in enumerate(query.pairs):
        field = f"pairs[{index}]"
        clean = model.encode_batch([spec.clean], False, f"{field}.clean")
        corrupted = None if spec.corrupted is None else model.encode_batch([spec.corrupted], False, f"{field}.corrupted")
        clean_length = clean.inputs[0].length
        alignment = _alignment(spec.alignment, clean_length, None if corrupted is None else corrupted.inputs[0].length,
                               field)
        clean_outputs, corrupted_outputs = _outputs(model, clean, corrupted)
        metric = _bind_metric(model, query, options, clean, clean_outputs, corrupted, alignment, field)
        clean_score = float(metric.scores(clean_outputs, clean.attention_mask, "clean")[0])
        corrupted_score = clean_score
        if corrupted is not None and corrupted_outputs is not None:
            corrupted_score = float(metric.scores(corrupted_outputs, corrupted.attention_mask, "corrupted")[0])
        positions = absolute_positions(options.positions, clean_length, "positions", "the clean input")
        pairs.append(PatchingPair(index, clean, corrupted, alignment, positions, metric, clean_score, corrupted_score))
    return pairs


def run(model: LoadedModel, query: PatchingQuery, options: PatchingOptions, sink: Sink) -> None:
    """Encodes the pairs, then streams each pair's baseline and results, then the means."""
    pairs = encode_pairs(model, query, options)
    technique = TECHNIQUES[options.method]
    for pair in pairs:
        technique.validate(model, options, pair)
    encoded = tuple(item for pair in pairs for item in (pair.clean.inputs[0],) + (
        (pair.corrupted.inputs[0],) if pair.corrupted is not None else ()))
    description = model.description
    sink.emit(StreamStart(description.name, description.fingerprint, encoded))
    means = MeanOverPairs()
    for pair in pairs:
        sink.check()
        sink.emit(PatchingBaselineResult(pair.index, pair.clean_score, pair.corrupted_score, options.metric,
                                         description.num_layers, description.num_heads,
                                         batch_size=technique.rows_per_forward(model, options, pair)))
        for result in technique.run(model, options, pair, sink.check):
            means.add(result)
            sink.emit(result)
    if len(pairs) > 1:
        for result in means.results():
            sink.emit(result)


class MeanOverPairs:
    """Collects every pair's results and gives their means (pair_index -1): per key
    (result type, method, point, layer), when every pair's arrays have one shape."""

    def __init__(self) -> None:
        self._groups: dict[tuple[Any, ...], list[object]] = defaultdict(list)

    def add(self, result: object) -> None:
        """Adds one pair's result."""
        key = (type(result).__name__, getattr(result, "method", ""), getattr(result, "point", ""),
               getattr(result, "layer", 0))
        self._groups[key].append(result)

    def results(self) -> Iterator[object]:
        """The mean of each group whose arrays agree in shape across pairs."""
        for group in self._groups.values():
            mean = _mean(group)
            if mean is not None:
                yield mean


def _mean_array(arrays: list[WireArray | None]) -> WireArray | None:
    if any(array is None for array in arrays):
        return None
    values = [array.values for array in arrays if array is not None]
    if len({value.shape for value in values}) != 1:
        raise ValueError("shapes differ")
    return WireArray(np.mean(np.stack(values), axis=0).astype(np.float32), "float32")


def _mean(group: list[object]) -> object | None:
    first = group[0]
    try:
        if isinstance(first, PatchingCorrelationResult):
            return replace(first, pair_index=-1, pearson=float(np.mean([item.pearson for item in group])),  # type: ignore[attr-defined]
                           max_abs_difference=float(max(item.max_abs_difference for item in group)))  # type: ignore[attr-defined]
        if isinstance(first, KnockoutResultData) and len({item.window_starts for item in group}) != 1:  # type: ignore[attr-defined]
            return None
        if isinstance(first, PatchingLayerResult) and len({(item.positions, item.heads) for item in group}) != 1:  # type: ignore[attr-defined]
            return None
        arrays = {name: _mean_array([getattr(item, name) for item in group])
                  for name in ("values", "normalized", "change", "heads", "mlps", "attention_biases", "embeddings",
                               "bias", "logit_difference") if hasattr(first, name)
                  and not isinstance(getattr(first, name), tuple)}
    except ValueError:
        return None
    return replace(first, pair_index=-1, **arrays)  # type: ignore[type-var]


def float_array(values: torch.Tensor) -> WireArray:
    """A result tensor as float32 wire storage."""
    return to_wire(values.float(), "float32")


METHOD = Method(
    name="patching", rpc="StreamPatching", query_type=PatchingQuery, prepare=prepare, run=run,
    payloads={
        PatchingBaselineResult: "baseline",
        PatchingLayerResult: "layer",
        PatchingCorrelationResult: "correlation",
        LogitAttributionResult: "logit_attribution",
        KnockoutResultData: "knockout",
    },
)
