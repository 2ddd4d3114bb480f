"""Exact activation patching (Meng et al. 2022, causal tracing; Heimersheim & Nanda 2024,
"How to use and interpret activation patching"): the pair's metric with one activation of
one run replaced by the other run's, for every chosen point, layer and position or head.

Denoising patches the clean run's activation into the corrupted run (at the aligned
corrupted position), noising the corrupted run's into the clean run; the metric is that of
the patched run. The source run's activations are collected once (one forward of the
model's trunk with hooks storing them). The patched rows run in growing batches
(layer_stack): one forward starts from the unpatched row of the patched run, and a row
patched at layer L joins it at layer L, sharing layers 0..L-1:

* at `resid.pre` of layer L, running the whole of layer L, for `resid_pre` patches (they
  change layer L's attention);
* at layer L's attention output projection, as a copy of the unpatched row's per-head
  outputs, for patches after it (`head`, `head_position`, `attn_out`, `mlp_out`,
  `resid_post`): layer L's attention is shared too. Where the model's growth is not
  "projection" these join at `resid.pre` and rerun layer L's attention; where it is
  "none" every row runs from the start.

The patched run's input is cut after the metric's position on causal models (later
tokens cannot change it; ScoringForward), so patches there leave the metric as it is and
need no row. Rows per forward are bounded by the request's batch_size or the memory budget.

On causal models whose suffixes were verified at load (prefix.py), nothing a patch at
position p does reaches an earlier position, so (`forward_chunks`):

* one forward of the unpatched patched run records its activations, keys and values;
* a patch whose source values equal the patched run's own at every position it replaces
  (bitwise: a token both runs share, before their first difference) changes nothing and
  runs no row; its slot keeps the unpatched score;
* the other patches run in order of the first position they change, and each forward
  starts at its patches' earliest, attending to the recorded keys and values before it;
* the final layer's MLP runs on the metric's (last) position alone, where verified at
  load (HookSet.last_position_only).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace

import torch

from .. import hooks
from ..errors import require
from ..inputs import EncodedBatch
from ..models import LoadedModel, ModelDescription
from ..prefix import PrefixKeys
from ..requests import PatchingQuery
from ..results import PatchingLayerResult
from .heads import ScoringForward, rows_per_forward
from .layer_stack import growing_batch
from .patching import (
    HOOK_POINTS, Check, EncodedPair, PairMetric, PatchingOptions, PatchingPair,
    PatchingTechnique, bind_metric, float_array, forward_baseline, register,
)

# Patch points that act after layer L's attention: their rows can join at its output projection.
AFTER_ATTENTION = frozenset({"head", "head_position", "attn_out", "mlp_out", "resid_post"})
PER_HEAD = frozenset({"head", "head_position"})

Move = tuple[int, int]  # (position in the patched run, position in the source run)
Activations = Mapping[tuple[str, int], torch.Tensor]  # (hook point, layer) -> row 0's [tokens, ...]


@dataclass(frozen=True)
class LayerPlan:
    """The patches of one (point, layer): one result message."""

    point: str
    layer: int
    positions: tuple[int, ...]  # clean positions (per-position points), else ()
    heads: tuple[int, ...]  # heads (head points), else ()

    @property
    def shape(self) -> tuple[int, ...]:
        """[positions], [heads] or [heads, positions]."""
        if self.point == "head":
            return (len(self.heads),)
        return (len(self.heads), len(self.positions)) if self.heads else (len(self.positions),)


@dataclass(frozen=True)
class Patch:
    """One patched row: which result slot it fills and what it replaces."""

    plan: int  # index of its LayerPlan
    slot: int  # index into that plan's flattened values
    point: str
    layer: int
    head: int | None  # head points: the head replaced
    moves: tuple[Move, ...]  # positions replaced, and the source positions they take

    @property
    def whole_layer(self) -> bool:
        """Whether the row must run all of its layer (it changes the layer's attention)."""
        return self.point not in AFTER_ATTENTION


def prepare(description: ModelDescription, query: PatchingQuery) -> None:
    """Nothing beyond the shared validation (points the model lacks are refused at run,
    where the hook registry is known)."""


def validate(model: LoadedModel, options: PatchingOptions, pair: EncodedPair) -> None:
    """The model must offer every requested patch point (its modules found at load)."""
    missing = [point for point in options.points if HOOK_POINTS[point] not in model.hooks.available]
    require(not missing, "points", f"model {model.name!r} offers no patch points {missing} (their modules were "
                                   "not found at load)")


@dataclass(frozen=True)
class _Setup:
    """What one pair's patching runs: the scoring forward of the patched run, its metric,
    the plans (one per point and layer) and patches (one per row), rows per forward."""

    patched_run: str
    source: EncodedBatch
    forward: ScoringForward
    metric: PairMetric
    plans: list[LayerPlan]
    patches: list[Patch]
    per_forward: int


def _setup(model: LoadedModel, options: PatchingOptions, pair: PatchingPair) -> _Setup:
    denoising = options.direction == "denoising"
    patched_run = "corrupted" if denoising else "clean"
    patched, source = (pair.corrupted, pair.clean) if denoising else (pair.clean, pair.corrupted)
    assert patched is not None and source is not None
    forward = ScoringForward.create(model, patched, pair.metric.target(patched_run))
    metric = replace(pair.metric, **{f"{patched_run}_target": forward.target})
    moves = effective_moves(pair.alignment, denoising, forward.attention_mask.shape[1])
    plans, patches = plan_patches(options, pair, moves, model.description.num_heads)
    per_forward = rows_per_forward(model, forward.attention_mask.shape[1], max(len(patches), 1), options.batch_size)
    return _Setup(patched_run, source, forward, metric, plans, patches, per_forward)


def batch_rows(model: LoadedModel, options: PatchingOptions, pair: PatchingPair) -> int:
    """Patched rows per forward the pair's patching runs (the baseline reports it)."""
    return _setup(model, options, pair).per_forward


def run(model: LoadedModel, options: PatchingOptions, pair: PatchingPair,
        check: Check) -> Iterator[PatchingLayerResult]:
    """The pair's exact patching results, one PatchingLayerResult per (point, layer), in
    layer order, each sent once all its rows have run."""
    setup = _setup(model, options, pair)
    patched_run, forward, metric, plans = setup.patched_run, setup.forward, setup.metric, setup.plans
    runs = pair.prepared if isinstance(pair.prepared, BothRuns) else None
    activations = runs.source if runs is not None else collect(model, setup.source.model_inputs(),
                                                                wanted_points(options))
    base = pair.corrupted_score if patched_run == "corrupted" else pair.clean_score
    values = [torch.full((int(torch.Size(plan.shape).numel()),), base) for plan in plans]  # flattened
    chunks = forward_chunks(model, forward, setup.patches, activations, setup.per_forward, runs, options)
    remaining = Counter(patch.plan for chunk in chunks for patch in chunk.patches)
    sent = 0
    for chunk in chunks:
        check()
        scores = patched_scores(forward, metric, patched_run, chunk, activations)
        for patch, score in zip(chunk.patches, scores[1:].tolist()):
            values[patch.plan][patch.slot] = score
            remaining[patch.plan] -= 1
        while sent < len(plans) and remaining[sent] == 0:
            yield layer_result(pair, plans[sent], values[sent])
            sent += 1
    for index in range(sent, len(plans)):
        yield layer_result(pair, plans[index], values[index])


@dataclass(frozen=True)
class Chunk:
    """The patches of one forward (in the order they join the batch), and the position
    the forward starts at: 0, or on a causal model reusing its prefix's keys and values
    (prefix.py) the first position any of its patches changes."""

    patches: tuple[Patch, ...]
    start: int = 0
    prefix: PrefixKeys | None = None


def forward_chunks(model: LoadedModel, forward: ScoringForward, patches: Sequence[Patch], activations: Activations,
                   per_forward: int, runs: BothRuns | None, options: PatchingOptions) -> list[Chunk]:
    """The forwards the patches run in, `per_forward` rows each.

    Where the model reuses prefixes (and the metric reads the last position), the patched
    run's own activations and keys and values are recorded (by the baseline's forward,
    `runs`, else in one forward here); a patch whose source values equal them at every
    position it replaces changes nothing and needs no row (its slot keeps the unpatched
    score), and the others run in order of the first position they change, each forward
    starting at its patches' earliest."""
    if not (model.hooks.prefix_reuse and forward.target.position is not None and patches):
        return [Chunk(tuple(patches[start : start + per_forward])) for start in range(0, len(patches), per_forward)]
    if runs is not None:
        own, recorded = runs.own, runs.prefix
    else:
        recorded = PrefixKeys.recording()
        own = collect(model, forward.arguments, wanted_points(options), recorded)
    changes = changed_moves(patches, activations, own)
    firsts = {index: first for index, patch in enumerate(patches)
              if (first := first_change(patch, changes)) is not None}
    order = sorted(firsts, key=lambda index: (firsts[index], index))
    chunks = []
    for begin in range(0, len(order), per_forward):
        members = sorted(order[begin : begin + per_forward])  # back in joining order
        start = min(firsts[index] for index in members)
        chunks.append(Chunk(tuple(patches[index] for index in members), start, recorded.from_position(start)))
    return chunks


Changes = Mapping[tuple[str, int, Move], list[bool]]
"""(hook point, layer, move) -> whether the source value differs from the patched run's
own there: [one flag], or per head for attn.z."""


def changed_moves(patches: Sequence[Patch], source: Activations, own: Activations) -> Changes:
    """Which moves of the patches replace a value by a different one (exact comparison),
    compared per (hook point, layer) in one vectorized step."""
    moves_of: dict[tuple[str, int], set[Move]] = defaultdict(set)
    for patch in patches:
        moves_of[(HOOK_POINTS[patch.point], patch.layer)].update(patch.moves)
    changes: dict[tuple[str, int, Move], list[bool]] = {}
    for key, moves in moves_of.items():
        ordered = sorted(moves)
        targets = [target for target, _ in ordered]
        origins = [origin for _, origin in ordered]
        differs = own[key][targets] != source[key][origins]  # [moves, hidden] or [moves, heads, head_dim]
        flags = differs.flatten(2).any(dim=-1) if key[0] == hooks.ATTN_Z else differs.any(dim=-1, keepdim=True)
        for move, row in zip(ordered, flags.tolist()):
            changes[(*key, move)] = row
    return changes


def first_change(patch: Patch, changes: Changes) -> int | None:
    """The first patched-run position where `patch` replaces a value by a different one
    (None: it replaces nothing by anything new)."""
    point, column = HOOK_POINTS[patch.point], patch.head or 0
    changed = [target for target, origin in patch.moves if changes[(point, patch.layer, (target, origin))][column]]
    return min(changed, default=None)


def effective_moves(alignment: Sequence[int], denoising: bool, patched_length: int) -> dict[int, Move]:
    """Per clean position with a counterpart: (patched-run position, source position),
    for the positions inside the patched run's (possibly cut) input."""
    moves = {}
    for clean, corrupted in enumerate(alignment):
        if corrupted < 0:
            continue
        move = (corrupted, clean) if denoising else (clean, corrupted)
        if move[0] < patched_length:
            moves[clean] = move
    return moves


def plan_patches(options: PatchingOptions, pair: PatchingPair, moves: Mapping[int, Move],
                 num_heads: int) -> tuple[list[LayerPlan], list[Patch]]:
    """The result plans in the order they are sent (by layer; within a layer the points
    whose rows run the whole layer first, then request order) and their patched rows in
    the same order, so that rows joining at earlier layers come first and, within a
    layer, the whole-layer rows precede those joining at the output projection."""
    positions = tuple(position for position in pair.positions if pair.alignment[position] >= 0)
    every_move = tuple(moves.values())
    ordered = sorted(((layer, point in AFTER_ATTENTION, rank, point) for rank, point in enumerate(options.points)
                      for layer in options.layers))
    plans: list[LayerPlan] = []
    patches: list[Patch] = []
    for layer, _, _, point in ordered:
        index = len(plans)
        heads = tuple(range(num_heads)) if point in PER_HEAD else ()
        plans.append(LayerPlan(point, layer, () if point == "head" else positions, heads))
        if point == "head":
            spots = [(head, head, every_move) for head in heads if every_move]
        else:
            per_position = [(slot, position) for slot, position in enumerate(positions) if position in moves]
            spots = [((head or 0) * len(positions) + slot, head, (moves[position],))
                     for head in (heads or (None,)) for slot, position in per_position]
        patches += [Patch(index, slot, point, layer, head, spot_moves) for slot, head, spot_moves in spots]
    return plans, patches


def wanted_points(options: PatchingOptions) -> set[tuple[str, int]]:
    """The (hook point, layer)s whose activations the request's patches replace."""
    return {(HOOK_POINTS[point], layer) for point in options.points for layer in options.layers}


def storing_hooks(wanted: set[tuple[str, int]], prefix: PrefixKeys | None = None
                  ) -> tuple[hooks.HookSet, dict[tuple[str, int], torch.Tensor]]:
    """A hook set storing every row's activations at the (hook point, layer)s wanted
    ([rows, tokens, hidden], attn.z [rows, tokens, heads, head_dim]) in the dict it
    returns, and recording keys and values in `prefix` when given."""
    stored: dict[tuple[str, int], torch.Tensor] = {}
    by_point: dict[str, set[int]] = defaultdict(set)
    for point, layer in wanted:
        by_point[point].add(layer)

    def store_at(point: str) -> hooks.Hook:
        def store(layer: int, value: torch.Tensor) -> None:
            stored[(point, layer)] = value.clone()

        return store

    hookset = hooks.HookSet({point: store_at(point) for point in by_point},
                            {point: frozenset(layers) for point, layers in by_point.items()}, prefix)
    return hookset, stored


def collect(model: LoadedModel, arguments: Mapping[str, torch.Tensor], wanted: set[tuple[str, int]],
            prefix: PrefixKeys | None = None) -> Activations:
    """Row 0's activations at the (hook point, layer)s wanted, from one forward of the
    model's trunk: [tokens, hidden] for residual points, [tokens, heads, head_dim] for
    attn.z (and its keys and values recorded in `prefix`, when given)."""
    hookset, stored = storing_hooks(wanted, prefix)
    with model.hooks.active(hookset), torch.inference_mode():
        model.run_trunk(arguments)
    return {key: value[0] for key, value in stored.items()}


@dataclass(frozen=True)
class BothRuns:
    """What the baseline's one forward of both runs keeps for the patching run: the
    source run's activations, the patched run's own, and its keys and values."""

    source: Activations
    own: Activations
    prefix: PrefixKeys


def baseline(model: LoadedModel, options: PatchingOptions, pair: EncodedPair, check: Check) -> PatchingPair:
    """The pair's baseline. Where patching will reuse prefixes (a causal model verified
    at load, a metric at a position, runs of one length), the one forward of both runs
    that scores them also stores both runs' activations and the patched run's keys and
    values (BothRuns), and keeps logits from the metric's position on only; otherwise
    the shared baseline forward."""
    clean, corrupted = pair.clean, pair.corrupted
    positions = (pair.clean_metric_position, pair.corrupted_metric_position)
    if not (model.hooks.prefix_reuse and corrupted is not None and corrupted.width == clean.width
            and None not in positions):
        return forward_baseline(model, options, pair, check)
    check()
    denoising = options.direction == "denoising"
    patched_row = 1 if denoising else 0  # rows: clean, corrupted
    recorded = PrefixKeys.recording(patched_row)
    hookset, stored = storing_hooks(wanted_points(options), recorded)
    outputs_from = min(position for position in positions if position is not None)
    with model.hooks.active(hookset), torch.inference_mode():
        outputs = model.outputs(model.batch([clean.inputs[0], corrupted.inputs[0]]).model_inputs(),
                                last_positions=clean.width - outputs_from)
    clean_outputs, corrupted_outputs = outputs[:1], outputs[1:]
    metric = bind_metric(model, options, pair, clean_outputs, outputs_from)
    clean_score = float(metric.scores(clean_outputs, clean.attention_mask, "clean", outputs_from)[0])
    corrupted_score = float(metric.scores(corrupted_outputs, corrupted.attention_mask, "corrupted", outputs_from)[0])
    source_row = 1 - patched_row
    runs = BothRuns({key: value[source_row] for key, value in stored.items()},
                    {key: value[patched_row] for key, value in stored.items()}, recorded)
    return PatchingPair.scored(pair, metric, clean_score, corrupted_score, runs)


def patched_scores(forward: ScoringForward, metric: PairMetric, run: str, chunk: Chunk,
                   activations: Activations) -> torch.Tensor:
    """One growing-batch forward of the patched run (from the chunk's start): row 0
    unpatched, then one row per patch of the chunk (ordered by the layer it joins at).
    Returns the metric [1 + patches]."""
    whole = Counter(patch.layer for patch in chunk.patches if patch.whole_layer)
    after_attention = Counter(patch.layer for patch in chunk.patches if not patch.whole_layer)
    replacements = replacement_index(chunk.patches, activations, chunk.start)

    def replace_at(point: str) -> hooks.Hook:
        def hook(layer: int, value: torch.Tensor) -> torch.Tensor | None:
            found = replacements.get((point, layer))
            if found is None:
                return None
            index, new = found
            value = value.clone()
            value[index] = new.to(value.dtype)
            return value

        return hook

    edits = {point: replace_at(point) for point in (hooks.RESID_PRE, hooks.ATTN_OUT, hooks.MLP_OUT, hooks.RESID_POST)
             if any(key[0] == point for key in replacements)}
    replace_z = replace_at(hooks.ATTN_Z)

    def edit_z(layer: int, z: torch.Tensor) -> torch.Tensor:
        replaced = replace_z(layer, z)  # z: [batch, query, heads, head_dim]
        return z if replaced is None else replaced

    model = forward.model
    suffix = forward if chunk.start == 0 else forward.from_position(chunk.start)
    last_position_only = model.kind.causal and forward.target.position is not None
    with growing_batch(model.hooks, after_attention, edit_z, whole, edits, chunk.prefix, last_position_only) as rows, \
            torch.inference_mode():
        outputs = suffix.outputs(rows)
    return metric.scores(outputs, forward.attention_mask.expand(outputs.shape[0], -1), run)


def replacement_index(chunk: Sequence[Patch], activations: Activations, start: int = 0
                      ) -> dict[tuple[str, int], tuple[tuple[torch.Tensor, ...], torch.Tensor]]:
    """Per (hook point, layer): the index into the batch's value ([batch, tokens, hidden]:
    (rows, positions); attn.z [batch, query, heads, head_dim]: (rows, positions, heads))
    and the source values to put there, for a forward of the positions from `start` (the
    moves before it replace nothing: forward_chunks). Patch i is row i + 1."""
    parts: dict[tuple[str, int], list[tuple[list[int], list[int], list[int], torch.Tensor]]] = defaultdict(list)
    for row, patch in enumerate(chunk, start=1):
        key = (HOOK_POINTS[patch.point], patch.layer)
        moves = [(target - start, source) for target, source in patch.moves if target >= start]
        targets = [target for target, _ in moves]
        sources = [source for _, source in moves]
        heads = [patch.head] * len(targets) if patch.head is not None else []
        source = activations[key][sources]  # [moves, hidden] or [moves, heads, head_dim]
        parts[key].append(([row] * len(targets), targets, heads, source[:, patch.head] if heads else source))
    index = {}
    for key, items in parts.items():
        rows = torch.tensor([row for item in items for row in item[0]])
        positions = torch.tensor([position for item in items for position in item[1]])
        values = torch.cat([item[3] for item in items])
        if key[0] == hooks.ATTN_Z:
            heads = torch.tensor([head for item in items for head in item[2]])
            index[key] = ((rows, positions, heads), values)
        else:
            index[key] = ((rows, positions), values)
    return index


def layer_result(pair: PatchingPair, plan: LayerPlan, values: torch.Tensor) -> PatchingLayerResult:
    """The result message of one (point, layer)."""
    shaped = values.reshape(plan.shape)
    normalized = pair.normalized(shaped)
    return PatchingLayerResult(
        pair_index=pair.index, method="activation", point=plan.point, layer=plan.layer, positions=plan.positions,
        heads=plan.heads, values=float_array(shaped),
        normalized=None if normalized is None else float_array(normalized),
    )


TECHNIQUE = register(PatchingTechnique("activation", prepare, run, rows_per_forward=batch_rows, validate=validate,
                                       baseline=baseline))
