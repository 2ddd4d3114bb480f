"""Shapley values of attention heads for a target score.

Held & Yang (2023), "Shapley Head Pruning: Identifying and Removing Interference in
Multilingual Transformers"; the Shapley value itself from Shapley (1953), its permutation
estimate from Castro, Gómez & Tejada (2009), antithetic permutations from Mitchell et al.
(2022), "Sampling Permutations for Shapley Value Estimation".

The players are the chosen heads; the value of a coalition S is the target score with
the heads of S kept and the other chosen heads ablated (zeroed or replaced by their mean
output, as head ablation does: methods/heads.py). Heads not chosen are never touched.

* Exact: with at most 12 chosen heads every coalition (2^n, at most 4,096) is evaluated
  and phi_i = sum over S not holding i of |S|! (n - |S| - 1)! / n! (v(S + i) - v(S)).
* Sampled: permutations of the heads in antithetic pairs (a permutation and its
  reverse); each permutation adds the heads one by one from the empty coalition, and a
  head's marginal contribution is the change its addition makes. The n - 1 coalitions
  strictly between the empty and the full one are evaluated per permutation (the two
  ends once per call). The estimate of a head is the mean of its pair-averaged
  contributions, its standard error their standard deviation over sqrt(pairs). Sampling
  stops once the largest standard error is at most the requested one, or at the budget.

Coalitions are evaluated as head ablation's ablated variants are: many rows per forward
in one growing batch (methods/layer_stack.py), a row joining at the first layer it
ablates, so it shares the clean row's earlier layers; a causal model with a next-token
target runs only up to the target position, computes logits there alone and runs the
final MLP on the last position alone.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from ..engine import Sink
from ..errors import require
from ..models import LoadedModel, ModelDescription
from ..requests import ABLATION_VALUES, InputSpec, TargetSpec
from ..results import StreamStart, WireArray
from ..targets import bind_target, check_target_kind
from ..wire import to_wire
from .heads import ScoringForward, check_head_refs, head_editor, head_means, rows_per_forward
from .layer_stack import growing_batch
from .registry import Method

MAX_EXACT_HEADS = 12  # 4,096 coalitions
MAX_PERMUTATIONS = 20_000
DEFAULT_PERMUTATIONS = 200
MIN_PERMUTATIONS_TO_STOP = 8  # a standard error from fewer antithetic pairs is too noisy to stop on
MAX_SEED = 2**63 - 1

Head = tuple[int, int]  # (layer, head)


@dataclass(frozen=True)
class ShapleyHeadsQuery:
    """What StreamShapleyHeads was asked for (fields as in StreamShapleyHeadsRequest)."""

    model: str
    input: InputSpec
    target: TargetSpec | None
    truncate: bool = False
    heads: tuple[tuple[int, int], ...] = ()
    all_heads: bool = False
    value: str = "zero"
    max_standard_error: float = 0.0
    max_permutations: int = 0
    seed: int = 0
    batch_size: int = 0
    sample: bool = False


@dataclass(frozen=True)
class ShapleyHeadsOptions:
    """A validated query."""

    heads: tuple[Head, ...]  # the players, sorted
    value: str
    exact: bool
    max_standard_error: float
    max_permutations: int  # even
    seed: int
    batch_size: int


@dataclass(frozen=True)
class ShapleyBaselineResult:
    heads: tuple[tuple[int, int], ...]
    full_score: float
    empty_score: float
    num_layers: int
    num_heads: int
    exact: bool
    batch_size: int


@dataclass(frozen=True)
class ShapleyEstimateResult:
    values: WireArray  # float32 [heads]
    standard_errors: WireArray  # float32 [heads]
    permutations: int
    evaluations: int


@dataclass(frozen=True)
class ShapleyFinalResult:
    values: WireArray  # float32 [heads]
    standard_errors: WireArray  # float32 [heads]
    permutations: int
    evaluations: int
    exact: bool
    converged: bool


def prepare(description: ModelDescription, query: ShapleyHeadsQuery) -> ShapleyHeadsOptions:
    """Validates the query against the model (no tokenizing)."""
    check_target_kind(description, query.target)
    require(query.value in ABLATION_VALUES, "value", f"unknown value {query.value!r}; use one of {ABLATION_VALUES}")
    check_head_refs(description, query.heads)
    repeated = sorted({head for head, count in Counter(query.heads).items() if count > 1})
    require(not repeated, "heads", f"(layer, head) pairs {repeated} appear more than once")
    every = [(layer, head) for layer in range(description.num_layers) for head in range(description.num_heads)]
    require(not (query.all_heads and query.heads), "all_heads", "give heads or all_heads, not both")
    require(bool(query.heads) or query.all_heads, "heads",
            "the set of heads is empty: name (layer, head) pairs, or set all_heads for every head")
    heads = tuple(every) if query.all_heads else tuple(sorted(query.heads))
    error = query.max_standard_error
    require(math.isfinite(error) and error >= 0, "max_standard_error",
            f"must be a finite number >= 0 (0 runs to max_permutations), got {error}")
    permutations = query.max_permutations
    require(0 <= permutations <= MAX_PERMUTATIONS, "max_permutations",
            f"must be in [0, {MAX_PERMUTATIONS}] (0 picks {DEFAULT_PERMUTATIONS}), got {permutations}")
    permutations = permutations or DEFAULT_PERMUTATIONS
    require(0 <= query.seed <= MAX_SEED, "seed", f"must be in [0, {MAX_SEED}], got {query.seed}")
    require(query.batch_size >= 0, "batch_size", f"must be >= 0 (0 picks automatically), got {query.batch_size}")
    return ShapleyHeadsOptions(
        heads=heads,
        value=query.value,
        exact=len(heads) <= MAX_EXACT_HEADS and not query.sample,
        max_standard_error=float(error),
        max_permutations=permutations + permutations % 2,
        seed=int(query.seed),
        batch_size=query.batch_size,
    )


class Coalitions:
    """Evaluates coalitions of the players: v(S) per row of a boolean `kept` [rows, players]."""

    def __init__(self, forward: ScoringForward, heads: Sequence[Head], means: torch.Tensor | None,
                 check: Callable[[int], None], per_forward: int) -> None:
        self.forward, self.means, self.check, self.per_forward = forward, means, check, per_forward
        model = forward.model
        self.layers = torch.tensor([layer for layer, _ in heads])
        self.head_index = torch.tensor([head for _, head in heads])
        self.num_heads, self.num_layers = model.description.num_heads, model.description.num_layers
        self.last_position_only = model.kind.causal and forward.target.position is not None
        self.evaluations = 0

    def clean_score(self) -> float:
        """v(all players kept): the unablated model."""
        return float(self._scores(torch.ones(0, len(self.layers), dtype=torch.bool))[0])

    def values(self, kept: torch.Tensor, sink: Sink) -> torch.Tensor:
        """v per row of `kept` [rows, players] (no row keeps every player), float64 [rows],
        in forwards of at most `per_forward` rows, with a cancellation check between them."""
        scores = []
        for start in range(0, kept.shape[0], self.per_forward):
            sink.check()
            scores.append(self._scores(kept[start : start + self.per_forward])[1:])
        return torch.cat(scores) if scores else torch.zeros(0, dtype=torch.float64)

    def _scores(self, kept: torch.Tensor) -> torch.Tensor:
        """One growing-batch forward: row 0 clean, then one row per coalition, each joining
        at the first layer it ablates. Returns float64 [1 + rows], row 0 first, rows in
        the order given."""
        rows = kept.shape[0]
        first = torch.where(~kept, self.layers[None], self.num_layers).amin(dim=1) if rows else torch.zeros(0)
        order = torch.argsort(first, stable=True)
        kept, first = kept[order], first[order]
        keep = torch.ones(self.num_layers, 1 + rows, 1, self.num_heads, 1)
        keep[self.layers, 1:, 0, self.head_index, 0] = kept.T.to(keep.dtype)  # [players, rows] per (layer, head)
        device = self.forward.model.device
        factors = {layer: keep[layer].to(device) for layer in sorted(set(self.layers.tolist()))}
        edit = head_editor(factors, self.means, self.check)
        copies = Counter(first.tolist())
        with growing_batch(self.forward.model.hooks, copies, edit, last_position_only=self.last_position_only) as start, \
                torch.inference_mode():
            scores = self.forward.score(self.forward.outputs(start)).double().cpu()
        self.evaluations += rows
        unsorted = torch.empty(rows, dtype=torch.float64)
        unsorted[order] = scores[1:]
        return torch.cat([scores[:1], unsorted])


def run(model: LoadedModel, query: ShapleyHeadsQuery, options: ShapleyHeadsOptions, sink: Sink) -> None:
    """Encodes the input, binds the target, then streams the baseline, the estimates
    (sampling) and the final values."""
    batch = model.encode_batch([query.input], query.truncate, field="input")
    forward = ScoringForward.create(model, batch, bind_target(model, query.target, batch))
    players = len(options.heads)
    tokens = forward.attention_mask.shape[1]
    wanted = 2**players - 1 if options.exact else options.max_permutations * max(players - 1, 1)
    per_forward = rows_per_forward(model, tokens, wanted, options.batch_size)
    sink.emit(StreamStart(model.description.name, model.description.fingerprint, batch.inputs))

    def check(_layer: int) -> None:
        sink.check()

    means = head_means(model, [batch]) if options.value == "mean" else None
    coalitions = Coalitions(forward, options.heads, means, check, per_forward)
    full = coalitions.clean_score()
    empty = float(coalitions.values(torch.zeros(1, players, dtype=torch.bool), sink)[0])
    description = model.description
    sink.emit(ShapleyBaselineResult(
        heads=options.heads, full_score=full, empty_score=empty, num_layers=description.num_layers,
        num_heads=description.num_heads, exact=options.exact, batch_size=per_forward,
    ))
    if options.exact:
        _exact(coalitions, players, full, empty, sink)
    else:
        _sampled(coalitions, options, full, empty, sink)


def shapley_weights(players: int) -> torch.Tensor:
    """|S|! (n - |S| - 1)! / n! for |S| = 0..n-1, float64."""
    sizes = torch.arange(players, dtype=torch.float64)
    return torch.exp(torch.lgamma(sizes + 1) + torch.lgamma(players - sizes) - math.lgamma(players + 1))


def exact_values(value: torch.Tensor, players: int) -> torch.Tensor:
    """Shapley values from v over all coalitions, `value` [2^n] indexed by bit mask
    (bit i set: player i kept), float64 [n]."""
    masks = torch.arange(2**players)
    sizes = torch.zeros(2**players, dtype=torch.long)
    for player in range(players):
        sizes += (masks >> player) & 1
    weights = shapley_weights(players)
    result = torch.zeros(players, dtype=torch.float64)
    for player in range(players):
        without = masks[((masks >> player) & 1) == 0]
        result[player] = (weights[sizes[without]] * (value[without | (1 << player)] - value[without])).sum()
    return result


def _exact(coalitions: Coalitions, players: int, full: float, empty: float, sink: Sink) -> None:
    masks = torch.arange(1, 2**players - 1)  # every coalition but the empty and the full one
    kept = ((masks[:, None] >> torch.arange(players)[None]) & 1).bool()
    value = torch.empty(2**players, dtype=torch.float64)
    value[0], value[-1] = empty, full
    value[1:-1] = coalitions.values(kept, sink)
    values = exact_values(value, players)
    sink.emit(ShapleyFinalResult(
        values=to_wire(values, "float32"), standard_errors=to_wire(torch.zeros(players), "float32"),
        permutations=0, evaluations=coalitions.evaluations + 1, exact=True, converged=False,
    ))


def _sampled(coalitions: Coalitions, options: ShapleyHeadsOptions, full: float, empty: float, sink: Sink) -> None:
    """Antithetic pairs of permutations, as many per round as one forward carries (at
    least one pair), an estimate after each round."""
    players = len(options.heads)
    generator = torch.Generator().manual_seed(options.seed)
    pairs_per_round = max(1, coalitions.per_forward // (2 * max(players - 1, 1)))
    total_pairs = options.max_permutations // 2
    samples: list[torch.Tensor] = []  # per pair, the pair-averaged marginal contributions [players]
    converged = False
    while len(samples) < total_pairs and not converged:
        sink.check()
        pairs = min(pairs_per_round, total_pairs - len(samples))
        orders = []
        for _ in range(pairs):
            order = torch.randperm(players, generator=generator)
            orders += [order, order.flip(0)]
        # coalition k of an order: its first k players kept, k = 1..n-1
        ranks = torch.stack([torch.argsort(order) for order in orders])  # [orders, players]: position of each
        sizes = torch.arange(1, players)
        kept = ranks[:, None, :] < sizes[None, :, None]  # [orders, n - 1, players]
        interior = coalitions.values(kept.reshape(-1, players), sink).reshape(len(orders), players - 1)
        chain = torch.cat([torch.full((len(orders), 1), empty, dtype=torch.float64), interior,
                           torch.full((len(orders), 1), full, dtype=torch.float64)], dim=1)  # v(S_0..S_n)
        steps = chain[:, 1:] - chain[:, :-1]  # [orders, n]: the contribution of the k-th player added
        contributions = steps.gather(1, ranks)  # [orders, players]
        samples += list(contributions.reshape(pairs, 2, players).mean(dim=1))
        mean, error = _estimate(samples)
        permutations = 2 * len(samples)
        converged = (options.max_standard_error > 0 and permutations >= MIN_PERMUTATIONS_TO_STOP
                     and bool(error.max() <= options.max_standard_error))
        sink.emit(ShapleyEstimateResult(
            values=to_wire(mean, "float32"), standard_errors=to_wire(error, "float32"),
            permutations=permutations, evaluations=coalitions.evaluations + 1,
        ))
    mean, error = _estimate(samples)
    sink.emit(ShapleyFinalResult(
        values=to_wire(mean, "float32"), standard_errors=to_wire(error, "float32"),
        permutations=2 * len(samples), evaluations=coalitions.evaluations + 1, exact=False, converged=converged,
    ))


def _estimate(samples: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and standard error per player over the pair samples (NaN errors below two)."""
    stacked = torch.stack(list(samples))
    mean = stacked.mean(dim=0)
    if len(samples) < 2:
        return mean, torch.full_like(mean, float("nan"))
    return mean, stacked.std(dim=0, unbiased=True) / math.sqrt(len(samples))


METHOD = Method(
    name="shapley_heads",
    rpc="StreamShapleyHeads",
    query_type=ShapleyHeadsQuery,
    prepare=prepare,
    run=run,
    payloads={
        ShapleyBaselineResult: "baseline",
        ShapleyEstimateResult: "estimate",
        ShapleyFinalResult: "final",
    },
)
