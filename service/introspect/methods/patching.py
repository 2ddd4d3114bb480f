"""Circuits: activation patching, attribution patching, direct logit attribution and
attention knockout on (clean, corrupted) input pairs, as one streaming RPC.

This module is the RPC's method: it validates the query, encodes and checks every pair
(its inputs, alignment, positions and the metric's position in each run), lets the
technique the request names (one module each: patching_activation,
patching_attribution, logit_attribution, knockout) check every pair, and only then
starts the stream: the header, then per pair its baseline (the metric bound: the
request's target, or the KL divergence from the clean run's next-token distribution;
both runs scored) and the technique's results, then the means over pairs. Nothing after
the header can be refused as INVALID_ARGUMENT.

The baseline forward is one forward of both runs without gradients, unless the technique
forwards the pair itself (PatchingTechnique.baseline): attribution patching binds the
metric and scores both runs from its own forwards, and activation patching's forward
also stores both runs' activations, so a pair is forwarded once. Baselines run one pair
at a time, just before the pair's results, so what they keep is held for one pair.

Positions: results are indexed by clean positions. Pairs of equal length align position
by position; otherwise the pair gives an alignment (per clean position, the corrupted
one, -1 for none).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields, replace
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
from ..targets import BoundTarget, bind_target, check_target_kind, check_target_values, target_position
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
    target: TargetSpec  # the metric's target: the request's, or next_token at the last position (KL without one)
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

    def scores(self, outputs: torch.Tensor, attention_mask: torch.Tensor, run: str,
               outputs_from: int = 0) -> torch.Tensor:
        """The metric per row [rows] float32 from the model's outputs on rows of the run
        `run` (whose positions the target uses): the target, or KL(clean || row).
        `outputs_from`: the position of the outputs' first (logits kept from the
        metric's position on), 0 when they hold every position."""
        target = self.target(run)
        if outputs_from:
            assert target.position is not None
            target = replace(target, position=target.position - outputs_from)
        if self.kind == "target":
            return target.score(outputs, attention_mask)
        assert self.clean_log_probabilities is not None and target.position is not None
        log_probabilities = torch.log_softmax(outputs[:, target.position].float(), dim=-1)  # [rows, vocab]
        clean = self.clean_log_probabilities.to(log_probabilities.device)
        return (clean.exp() * (clean - log_probabilities)).sum(dim=-1)


@dataclass(frozen=True)
class EncodedPair:
    """One pair encoded and checked, before any forward of it."""

    index: int
    clean: EncodedBatch  # one row
    corrupted: EncodedBatch | None  # one row
    alignment: tuple[int, ...]  # per clean position, the corrupted position (-1: none)
    positions: tuple[int, ...]  # clean positions to patch, resolved, sorted
    clean_metric_position: int | None  # where the metric reads the clean run (next-token targets), else None
    corrupted_metric_position: int | None  # where it reads the corrupted run: the clean one, aligned

    def metric_position(self, run: str) -> int | None:
        """Where the metric reads the outputs of run `run` ("clean" or "corrupted"):
        the target's position in that run, None for targets without one."""
        return self.clean_metric_position if run == "clean" else self.corrupted_metric_position


@dataclass(frozen=True)
class PatchingPair(EncodedPair):
    """One encoded pair, its metric and its unpatched scores."""

    metric: PairMetric
    clean_score: float
    corrupted_score: float
    prepared: Any = None  # what the technique's own baseline (PatchingTechnique.baseline) kept for its run

    @classmethod
    def scored(cls, pair: EncodedPair, metric: PairMetric, clean_score: float, corrupted_score: float,
               prepared: Any = None) -> PatchingPair:
        """`pair` with its bound metric and both runs' scores."""
        encoded = {item.name: getattr(pair, item.name) for item in fields(EncodedPair)}
        return cls(**encoded, metric=metric, clean_score=clean_score, corrupted_score=corrupted_score,
                   prepared=prepared)

    def normalized(self, values: torch.Tensor) -> torch.Tensor | None:
        """(values - corrupted) / (clean - corrupted) for the target metric; None for KL
        (and all NaN when the two runs score the same: nothing to normalise by)."""
        if self.metric.kind != "target":
            return None
        span = self.clean_score - self.corrupted_score
        if span == 0:
            return torch.full_like(values, float("nan"))
        return (values - self.corrupted_score) / span


def bind_metric(model: LoadedModel, options: PatchingOptions, pair: EncodedPair, clean_outputs: torch.Tensor,
                outputs_from: int = 0) -> PairMetric:
    """The pair's metric, bound on the model's outputs on its clean input
    `clean_outputs` [1, ...] (of the positions from `outputs_from` on, or of every one;
    read without gradients): the predicted token or class when the target names none,
    and the clean next-token distribution of the KL metric."""
    clean_outputs = clean_outputs.detach()
    clean_target = bind_target(model, options.target, pair.clean, clean_outputs, outputs_from)
    corrupted_target = None
    if pair.corrupted is not None:
        corrupted_target = replace(clean_target, position=pair.corrupted_metric_position)
    log_probabilities = None
    if options.metric == "kl_divergence":
        assert clean_target.position is not None
        logits = clean_outputs[0, clean_target.position - outputs_from].float()  # [vocab]
        log_probabilities = torch.log_softmax(logits, dim=-1)
    return PairMetric(options.metric, clean_target, corrupted_target, log_probabilities)


def forward_baseline(model: LoadedModel, options: PatchingOptions, pair: EncodedPair, check: Check) -> PatchingPair:
    """The pair's baseline from one forward of both runs without gradients (one batch of
    two rows when they have one length: neither is then padded, so the rows cannot
    interact): the metric bound on the clean run's outputs, both runs scored."""
    check()
    clean, corrupted = pair.clean, pair.corrupted
    with torch.no_grad():
        if corrupted is not None and corrupted.width == clean.width:
            both = model.outputs(model.batch([clean.inputs[0], corrupted.inputs[0]]).model_inputs())
            clean_outputs, corrupted_outputs = both[:1], both[1:]
        else:
            clean_outputs = model.outputs(clean.model_inputs())
            corrupted_outputs = None if corrupted is None else model.outputs(corrupted.model_inputs())
    metric = bind_metric(model, options, pair, clean_outputs)
    clean_score = float(metric.scores(clean_outputs, clean.attention_mask, "clean")[0])
    corrupted_score = clean_score
    if corrupted is not None and corrupted_outputs is not None:
        corrupted_score = float(metric.scores(corrupted_outputs, corrupted.attention_mask, "corrupted")[0])
    return PatchingPair.scored(pair, metric, clean_score, corrupted_score)


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
    # every pair before any forward and the stream header
    validate: Callable[[LoadedModel, PatchingOptions, EncodedPair], None] = lambda model, options, pair: None
    # (model, options, pair, check) -> the pair with its metric bound and both runs scored,
    # before the stream header: one forward of both runs, or the technique's own forwards
    # (it keeps what its run needs in PatchingPair.prepared)
    baseline: Callable[[LoadedModel, PatchingOptions, EncodedPair, Check], PatchingPair] = forward_baseline


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
    target = query.target
    if query.metric == "kl_divergence":
        require(description.kind == "causal_lm", "metric",
                f"kl_divergence compares next-token distributions; model {description.name!r} is a "
                f"{description.kind}")
        target = target or TargetSpec(kind="next_token")  # where the distributions are compared
    check_target_values(description, check_target_kind(description, target))
    require(query.direction in PATCH_DIRECTIONS, "direction", f"unknown direction; use {PATCH_DIRECTIONS}")
    points = tuple(dict.fromkeys(query.points)) or DEFAULT_POINTS
    unknown = [point for point in points if point not in PATCH_POINTS]
    require(not unknown, "points", f"unknown patch points {unknown}; use {PATCH_POINTS}")
    layers = tuple(sorted(unique_in_range(query.layers, description.num_layers, "layers", "layer"))) or tuple(
        range(description.num_layers))
    require(query.batch_size >= 0, "batch_size", f"must be >= 0 (0 picks automatically), got {query.batch_size}")
    options = PatchingOptions(
        method=query.method, metric=query.metric, points=points, direction=query.direction, layers=layers,
        positions=query.positions, with_exact=query.with_exact, batch_size=query.batch_size, target=target,
        technique=None,
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


def _metric_positions(options: PatchingOptions, clean_length: int, alignment: tuple[int, ...],
                      has_corrupted: bool, field: str) -> tuple[int | None, int | None]:
    """Where the metric reads the clean and the corrupted run, None for a target without
    a position or a pair without a corrupted input (INVALID_ARGUMENT outside the clean
    input, or where the alignment gives the position no counterpart)."""
    clean = target_position(options.target, clean_length)
    if clean is None or not has_corrupted:
        return clean, None
    corrupted = alignment[clean]
    require(corrupted >= 0, f"{field}.alignment", f"the metric's position {clean} has no corrupted counterpart")
    return clean, corrupted


def encode_pairs(model: LoadedModel, query: PatchingQuery, options: PatchingOptions) -> list[EncodedPair]:
    """Every pair encoded and checked, without a forward (INVALID_ARGUMENT naming the
    field for a bad input, length, alignment, position or metric position)."""
    pairs = []
    for index, spec in enumerate(query.pairs):
        field = f"pairs[{index}]"
        clean = model.encode_batch([spec.clean], False, f"{field}.clean")
        corrupted = None if spec.corrupted is None else model.encode_batch([spec.corrupted], False, f"{field}.corrupted")
        clean_length = clean.inputs[0].length
        alignment = _alignment(spec.alignment, clean_length, None if corrupted is None else corrupted.inputs[0].length,
                               field)
        metric_positions = _metric_positions(options, clean_length, alignment, corrupted is not None, field)
        positions = absolute_positions(options.positions, clean_length, "positions", "the clean input")
        pairs.append(EncodedPair(index, clean, corrupted, alignment, positions, *metric_positions))
    return pairs


def run(model: LoadedModel, query: PatchingQuery, options: PatchingOptions, sink: Sink) -> None:
    """Encodes and checks every pair, forwards each for its baseline, then streams the
    header, each pair's baseline and results, then the means."""
    technique = TECHNIQUES[options.method]
    encoded = encode_pairs(model, query, options)
    for pair in encoded:
        technique.validate(model, options, pair)
    inputs = tuple(item for pair in encoded for item in (pair.clean.inputs[0],) + (
        (pair.corrupted.inputs[0],) if pair.corrupted is not None else ()))
    description = model.description
    sink.emit(StreamStart(description.name, description.fingerprint, inputs))
    means = MeanOverPairs()
    for encoded_pair in encoded:
        sink.check()
        # one pair at a time: what a technique's baseline keeps for its run (activations
        # of both runs, for activation patching) is held for that pair only
        pair = technique.baseline(model, options, encoded_pair, sink.check)
        sink.emit(PatchingBaselineResult(pair.index, pair.clean_score, pair.corrupted_score, options.metric,
                                         description.num_layers, description.num_heads,
                                         batch_size=technique.rows_per_forward(model, options, pair)))
        for result in technique.run(model, options, pair, sink.check):
            means.add(result)
            sink.emit(result)
    if len(encoded) > 1:
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
