"""Head ablation: what an attention head does for a target score and for the whole output.

Modes:
* per_head: every selected head knocked out on its own (its output before the output
  projection zeroed, or replaced by its mean output), streamed layer by layer;
* joint: a set of heads knocked out together, with greedy continuations on causal LMs;
* importance: Michel et al. (2019) gate gradients of every head (see head_importance).

Exact per-head ablation is batched without recomputing what an ablation cannot change:
one forward starts from a single clean row, and at the input of layer L's attention output
projection the batch grows by one copy of the clean row per head of layer L to ablate (see
layer_stack), so the rows of layer L share the clean row's layers 0..L-1 and layer L's
attention, and run the rest of layer L and layers L+1..end only. Rows per forward are
bounded by the request's batch_size or by a memory budget.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from .. import hooks
from ..engine import Sink
from ..errors import require
from ..inputs import EncodedBatch
from ..kinds import KINDS
from ..models import LoadedModel, ModelDescription
from ..requests import ABLATION_MODES, ABLATION_VALUES, HeadAblationQuery
from ..results import (
    AblationBaselineResult,
    HeadImportanceResult,
    JointAblationResult,
    LayerAblationResult,
    StreamStart,
)
from ..targets import bind_target, check_target_kind
from ..wire import to_wire
from .registry import Method
from .head_importance import head_importance
from .heads import (ScoringForward, ablation_keep, check_head_refs, forward_footprint, head_editor, head_means,
                    rows_per_forward)
from .layer_stack import growing_batch

MAX_CONTINUATION_TOKENS = 64
MAX_MEAN_REFERENCES = 256

Head = tuple[int, int]  # (layer, head)


@dataclass(frozen=True)
class HeadAblationOptions:
    """A validated head ablation query."""

    mode: str
    value: str
    # per_head and importance: sorted, unique, all when none were asked for;
    # joint: the set, in request order
    heads: tuple[Head, ...]
    all_heads: bool
    continuation_tokens: int
    batch_size: int


def prepare(description: ModelDescription, query: HeadAblationQuery) -> HeadAblationOptions:
    """Validates a head ablation query against the model (no tokenizing)."""
    check_target_kind(description, query.target)
    require(query.mode in ABLATION_MODES, "mode", f"unknown mode {query.mode!r}; use one of {ABLATION_MODES}")
    require(query.value in ABLATION_VALUES, "value", f"unknown value {query.value!r}; use one of {ABLATION_VALUES}")
    check_head_refs(description, query.heads)
    if query.mode == "joint":
        require(bool(query.heads), "heads", "joint ablation needs the set of heads to knock out")
        repeated = sorted({head for head, count in Counter(query.heads).items() if count > 1})
        require(not repeated, "heads", f"(layer, head) pairs {repeated} appear more than once")
        heads = tuple(query.heads)
    else:
        every = [(layer, head) for layer in range(description.num_layers) for head in range(description.num_heads)]
        heads = tuple(sorted(set(query.heads))) or tuple(every)
    tokens = query.continuation_tokens
    require(0 <= tokens <= MAX_CONTINUATION_TOKENS, "continuation_tokens",
            f"must be in [0, {MAX_CONTINUATION_TOKENS}], got {tokens}")
    if tokens:
        require(query.mode == "joint", "continuation_tokens", "continuations are generated in joint mode only")
        require(KINDS[description.kind].causal, "continuation_tokens",
                f"continuations need a causal language model; model {description.name!r} is of kind "
                f"{description.kind!r}")
    require(not query.mean_references or query.value == "mean", "mean_references",
            "reference inputs apply to value=mean only")
    require(len(query.mean_references) <= MAX_MEAN_REFERENCES, "mean_references",
            f"at most {MAX_MEAN_REFERENCES} reference inputs, got {len(query.mean_references)}")
    require(query.batch_size >= 0, "batch_size", f"must be >= 0 (0 picks automatically), got {query.batch_size}")
    return HeadAblationOptions(
        mode=query.mode,
        value=query.value,
        heads=heads,
        all_heads=not query.heads,
        continuation_tokens=tokens,
        batch_size=query.batch_size,
    )


@dataclass(frozen=True)
class _Ablation:
    """What every mode works with."""

    forward: ScoringForward  # of the input, with the target bound
    batch: EncodedBatch  # the input
    options: HeadAblationOptions
    means: torch.Tensor | None  # the heads' mean outputs with value "mean", else None
    check: Callable[[int], None]  # called at every layer: raises once the call is cancelled
    sink: Sink
    batch_size: int  # ablated rows per forward (per_head), else 1


def run(model: LoadedModel, query: HeadAblationQuery, options: HeadAblationOptions, sink: Sink) -> None:
    """Encodes the input (and mean references), binds the target, then streams the
    baseline and the results of the chosen mode."""
    batch = model.encode_batch([query.input], query.truncate, field="input")
    description = model.description
    if options.continuation_tokens:
        length = batch.inputs[0].length
        require(length + options.continuation_tokens <= description.max_tokens, "continuation_tokens",
                f"the input ({length} tokens) plus {options.continuation_tokens} continuation tokens exceed "
                f"the model's limit of {description.max_tokens} tokens")
    references = _reference_batches(model, query)
    forward = ScoringForward.create(model, batch, bind_target(model, query.target, batch))
    batch_size = _batch_size(forward, options)
    sink.emit(StreamStart(description.name, description.fingerprint, batch.inputs))

    def check(_layer: int) -> None:
        sink.check()

    means = head_means(model, references or [batch]) if options.value == "mean" else None
    ablation = _Ablation(forward, batch, options, means, check, sink, batch_size)
    if options.mode == "importance":
        _importance(ablation)
    elif options.mode == "joint":
        _joint(ablation)
    else:
        _per_head(ablation)


def _batch_size(forward: ScoringForward, options: HeadAblationOptions) -> int:
    """Ablated rows per forward (per_head: the request's batch size lowered to the memory
    budget, or as many as fit); 1 in the other modes, once their forwards are known to
    fit (ResourceExhausted otherwise)."""
    model, tokens = forward.model, forward.attention_mask.shape[1]
    if options.mode == "per_head":
        return rows_per_forward(model, tokens, len(options.heads), options.batch_size)
    if options.mode == "importance":
        model.budget.require(forward_footprint(model, tokens, 1, gradients=True))
    else:  # joint: the clean and the ablated row, grown by the continuation
        footprint = forward_footprint(model, tokens + options.continuation_tokens, 1)
        model.budget.require(footprint)
    return 1


def _reference_batches(model: LoadedModel, query: HeadAblationQuery) -> list[EncodedBatch]:
    """The mean references encoded and padded into batches of bounded size."""
    encoded = [
        model.encode(spec, query.truncate, f"mean_references[{index}]")
        for index, spec in enumerate(query.mean_references)
    ]
    if not encoded:
        return []
    longest = max(item.length for item in encoded)
    size = min(rows_per_forward(model, longest, len(encoded)), max(1, model.budget.batch_tokens // longest))
    return [model.batch(encoded[start : start + size]) for start in range(0, len(encoded), size)]


def _baseline(ablation: _Ablation, score: float) -> AblationBaselineResult:
    forward = ablation.forward
    description = forward.model.description
    return AblationBaselineResult(
        target_score=score,
        output_change_metric=forward.target.output_change_metric,
        num_layers=description.num_layers,
        num_heads=description.num_heads,
        batch_size=ablation.batch_size,
    )


def _ablated_forward(
    forward: ScoringForward,
    ablations: Sequence[Sequence[Head]],
    means: torch.Tensor | None,
    check: Callable[[int], None],
) -> tuple[torch.Tensor, torch.Tensor]:
    """One growing-batch forward: row 0 clean, then one row per entry of `ablations` with
    those heads knocked out. Rows must be ordered by the first layer they ablate; a row
    joins the batch at that layer. Returns (scores [rows], summaries [rows, D])."""
    model = forward.model
    copies = Counter(min(layer for layer, _ in heads) for heads in ablations)
    edit = head_editor(_keep_after_clean_row(model, ablations), means, check)
    with growing_batch(model.hooks, copies, edit) as rows, torch.inference_mode():
        outputs = forward.outputs(rows)
    return forward.score(outputs), forward.summary(outputs)


def _keep_after_clean_row(model: LoadedModel, ablations: Sequence[Sequence[Head]]) -> dict[int, torch.Tensor]:
    """Per layer, keep [rows, 1, heads, 1] for a batch of a clean row 0 and one row per
    entry of `ablations`, with that entry's heads knocked out."""
    ablated_at: dict[int, list[tuple[int, int]]] = defaultdict(list)
    for row, heads in enumerate(ablations, start=1):
        for layer, head in heads:
            ablated_at[layer].append((row, head))
    rows, num_heads = 1 + len(ablations), model.description.num_heads
    return {layer: ablation_keep(rows, num_heads, pairs, model.device) for layer, pairs in ablated_at.items()}


def _per_head(ablation: _Ablation) -> None:
    """Each head ablated on its own, in forwards of at most batch_size ablated rows (and
    never more than the memory budget allows); a layer's result is emitted as soon as
    all its heads are done."""
    forward, options, sink = ablation.forward, ablation.options, ablation.sink
    model = forward.model
    per_forward = ablation.batch_size
    remaining = Counter(layer for layer, _ in options.heads)
    done: dict[int, list[tuple[int, float, float]]] = defaultdict(list)
    for start in range(0, len(options.heads), per_forward):
        sink.check()
        chunk = options.heads[start : start + per_forward]
        scores, summaries = _ablated_forward(forward, [[head] for head in chunk], ablation.means, ablation.check)
        if start == 0:
            sink.emit(_baseline(ablation, float(scores[0])))
        deltas = (scores[1:] - scores[0]).tolist()
        changes = forward.target.output_change(summaries[0], summaries[1:]).tolist()
        for (layer, head), delta, change in zip(chunk, deltas, changes):
            done[layer].append((head, delta, change))
            remaining[layer] -= 1
        for layer in sorted({layer for layer, _ in chunk}):
            if remaining[layer] == 0:
                heads, layer_deltas, layer_changes = zip(*done.pop(layer))
                sink.emit(
                    LayerAblationResult(
                        layer=layer,
                        heads=tuple(heads),
                        target_delta=to_wire(torch.tensor(layer_deltas), "float32"),
                        output_change=to_wire(torch.tensor(layer_changes), "float32"),
                    )
                )


def _joint(ablation: _Ablation) -> None:
    """The heads knocked out together, and the greedy continuations with and without."""
    forward, options, means, check = ablation.forward, ablation.options, ablation.means, ablation.check
    scores, summaries = _ablated_forward(forward, [options.heads], means, check)
    ablation.sink.emit(_baseline(ablation, float(scores[0])))
    change = float(forward.target.output_change(summaries[0], summaries[1:])[0])
    base, ablated = [], []
    if options.continuation_tokens:
        base, ablated = greedy_continuations(
            forward.model, ablation.batch, options.heads, means, options.continuation_tokens, check
        )
    base_tokens = forward.model.text.tokens(base) if base else ()
    ablated_tokens = forward.model.text.tokens(ablated) if ablated else ()
    ablation.sink.emit(
        JointAblationResult(
            heads=options.heads,
            ablated_score=float(scores[1]),
            output_change=change,
            base_continuation=tuple(base),
            ablated_continuation=tuple(ablated),
            base_continuation_tokens=base_tokens,
            ablated_continuation_tokens=ablated_tokens,
        )
    )


def greedy_continuations(
    model: LoadedModel,
    batch: EncodedBatch,
    heads: Sequence[Head],
    means: torch.Tensor | None,
    steps: int,
    check: Callable[[int], None],
) -> tuple[list[int], list[int]]:
    """Greedy continuations of the first input of `batch`, `steps` tokens each, without
    and with `heads` knocked out: two rows decoded side by side, each step one full
    forward without a KV cache (exact, and the attn.z hook edits every position)."""
    length = batch.inputs[0].length
    ids = batch.input_ids[:1, :length].expand(2, -1)
    edit = head_editor(_keep_after_clean_row(model, [heads]), means, check)
    with model.hooks.active(hooks.HookSet({hooks.ATTN_Z: edit})), torch.inference_mode():
        for _ in range(steps):
            logits = model.outputs({"input_ids": ids, "attention_mask": torch.ones_like(ids)}, last_positions=1)[:, -1]
            ids = torch.cat([ids, logits.argmax(dim=-1, keepdim=True)], dim=1)
    generated = ids[:, length:].tolist()
    return generated[0], generated[1]


def _importance(ablation: _Ablation) -> None:
    """The gate gradient of every head (NaN for heads not asked for)."""
    score, gradient = head_importance(ablation.forward, ablation.means, ablation.check)
    ablation.sink.emit(_baseline(ablation, score))
    if not ablation.options.all_heads:
        selected = torch.zeros_like(gradient, dtype=torch.bool)
        layers, heads = zip(*ablation.options.heads)
        selected[list(layers), list(heads)] = True
        gradient = gradient.masked_fill(~selected, float("nan"))
    ablation.sink.emit(HeadImportanceResult(importance=to_wire(gradient, "float32")))


METHOD = Method(
    name="head_ablation",
    rpc="StreamHeadAblation",
    query_type=HeadAblationQuery,
    prepare=prepare,
    run=run,
    payloads={
        AblationBaselineResult: "baseline",
        LayerAblationResult: "layer",
        JointAblationResult: "joint",
        HeadImportanceResult: "importance",
    },
)
