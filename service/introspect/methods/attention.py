"""Attention maps: probabilities of chosen layers and heads, or reductions of them
(mean / max over heads, attention rollout, top-k keys), of all query rows or a range
[query_start, query_end) of them, streamed layer by layer while the forward pass runs.

Memory bound: the maps of one layer are computed in the attention function while the
forward passes it and handed off at once; with a row range only those rows are computed
(probe.py, `HookSet.probability_rows`), the layer's output coming from SDPA. With M the
bytes of one layer's probabilities, [batch, heads, rows, keys] float32, the maps alive
at once are at most `map_memory_bound(M)` = (engine.HANDOFF_ITEMS + 2 + TRANSIENT_MAPS)
x M: the result blocked in emit on the worker, HANDOFF_ITEMS waiting for the caller, one
being chunked onto the wire, and the transient of the layer being computed. Nothing
scales with the number of layers, except rollout, which keeps its running [tokens,
tokens] product (and computes every row), and the result cache, which collects a result
up to --cache-max-value-bytes. Tested in tests/test_attention_long.py.

Rollout: Abnar & Zuidema (2020), "Quantifying Attention Flow in Transformers".
Mean attention distance: Dosovitskiy et al. (2021), "An Image is Worth 16x16 Words", fig. 7.
For images, `patch_grid` returns the [CLS] row over the patches laid out as the grid.

Concurrent calls share a forward (dynamic batching, batching.py): each call is a `_Part`
(its inputs encoded and checked alone), `run_parts` runs one padded forward of several
parts and each part reads its own rows; `run` is `run_parts` of one part.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from .. import hooks
from ..batching import Outlet, run_alone
from ..budget import DTYPE_BYTES, Footprint, activation_bytes, output_bytes
from ..engine import HANDOFF_ITEMS, Sink
from ..errors import Cancelled, require
from ..models import LoadedModel, ModelDescription
from ..requests import ATTENTION_VIEWS, VALUE_DTYPES, AttentionQuery
from ..results import AttentionLayerResult, EncodedInput, ImageLayout, StreamStart
from ..wire import to_wire
from .registry import Method, Sharing
from .selection import unique_in_range
from .reductions import head_max, head_mean, mean_attention_distance, patch_centres, residual_attention, rollout_step


TRANSIENT_MAPS = 3
"""Maps of the layer being computed alive at once, beyond those held: its scores and
their successor (scaled, masked, softmaxed), and a copy when heads are selected or
padding is cut."""


def map_memory_bound(map_bytes: int) -> int:
    """Bytes of attention maps a call holds at most, for `map_bytes` the bytes of one
    layer's probabilities [batch, heads, rows, keys] float32 (module docstring)."""
    return (HANDOFF_ITEMS + 2 + TRANSIENT_MAPS) * map_bytes


@dataclass(frozen=True)
class AttentionOptions:
    """A validated attention query."""

    layers: tuple[int, ...]  # sorted, unique
    heads: tuple[int, ...]  # in request order, unique
    view: str
    top_k: int
    dtype: str
    rollout_residual_weight: float
    patch_grid: bool = False
    query_start: int = 0  # as requested: negative counts from the end of each input
    query_end: int = 0  # as requested: 0 is the end

    @property
    def layers_computed(self) -> frozenset[int]:
        """Layers whose probabilities are needed: rollout needs every layer up to the last."""
        if self.view == "rollout":
            return frozenset(range(self.layers[-1] + 1))
        return frozenset(self.layers)


def prepare(description: ModelDescription, query: AttentionQuery) -> AttentionOptions:
    """Validates an attention query against the model."""
    layers = unique_in_range(query.layers, description.num_layers, "layers", "layer") or tuple(
        range(description.num_layers)
    )
    heads = unique_in_range(query.heads, description.num_heads, "heads", "head") or tuple(
        range(description.num_heads)
    )
    require(query.view in ATTENTION_VIEWS, "view", f"unknown view {query.view!r}; use one of {ATTENTION_VIEWS}")
    require(query.dtype in VALUE_DTYPES, "dtype", f"values can be {VALUE_DTYPES}, not {query.dtype!r}")
    require(query.top_k >= 0, "top_k", "must be >= 0")
    images = "image" in description.modalities
    require(query.view != "mean_distance" or images, "view",
            f"mean_distance is in pixels of an image; model {description.name!r} takes text")
    require(not query.patch_grid or images, "patch_grid", f"applies to images; model {description.name!r} takes text")
    require(not query.patch_grid or query.view != "mean_distance", "patch_grid",
            "applies to the heads, head_mean, head_max and rollout views")
    require(not query.top_k or not (query.patch_grid or query.view == "mean_distance"), "top_k",
            "does not combine with patch_grid or the mean_distance view")
    ranged = bool(query.query_start or query.query_end)
    require(not ranged or not (query.patch_grid or query.view == "mean_distance"), "query_start",
            "a row range does not combine with patch_grid or the mean_distance view")
    require(
        0.0 <= query.rollout_residual_weight <= 1.0,
        "rollout_residual_weight",
        f"must be in [0, 1], got {query.rollout_residual_weight}",
    )
    return AttentionOptions(
        layers=tuple(sorted(layers)),
        heads=heads,
        view=query.view,
        top_k=query.top_k,
        dtype=query.dtype,
        rollout_residual_weight=query.rollout_residual_weight,
        patch_grid=query.patch_grid,
        query_start=query.query_start,
        query_end=query.query_end,
    )


def query_rows(options: AttentionOptions, length: int) -> tuple[int, int]:
    """The query rows [start, end) of an input of `length` tokens that the options ask for;
    InvalidInput naming query_start or query_end when out of range or empty."""
    start = options.query_start + length if options.query_start < 0 else options.query_start
    end = length if options.query_end == 0 else options.query_end + length if options.query_end < 0 else options.query_end
    require(0 <= start < length, "query_start",
            f"{options.query_start} is outside an input of {length} tokens (use -{length} to {length - 1})")
    require(start < end <= length, "query_end",
            f"{options.query_end} gives rows [{start}, {end}) of an input of {length} tokens: "
            f"the end must be in ({start}, {length}] (0 is the end, negative counts from it)")
    return start, end


@dataclass
class _Part:
    """One call's share of an attention forward: its inputs, options, query rows and where
    its results go; `take` reads its rows of each layer's probabilities."""

    model: LoadedModel
    options: AttentionOptions
    inputs: list[EncodedInput]
    outlet: Outlet
    rows: list[tuple[int, int]] = field(init=False)  # per input: its query rows [start, end)
    rollouts: list[torch.Tensor | None] = field(init=False)  # per input: rollout's running product
    layout: ImageLayout | None = field(init=False)
    centres: torch.Tensor | None = field(init=False)  # [patches, 2] pixel centres, images only
    all_heads: bool = field(init=False)
    head_index: torch.Tensor = field(init=False)  # [heads asked for]
    requested: frozenset[int] = field(init=False)
    last_layer: int = field(init=False)

    def __post_init__(self) -> None:
        self.rows = [query_rows(self.options, item.length) for item in self.inputs]
        self.rollouts = [None] * len(self.inputs)
        layout = self.layout = self.inputs[0].image
        self.centres = None if layout is None else patch_centres(layout.grid_rows, layout.grid_columns,
                                                                 layout.patch_height, layout.patch_width)
        self.all_heads = self.options.heads == tuple(range(self.model.description.num_heads))
        self.head_index = torch.tensor(self.options.heads, device=self.model.device)
        self.requested = frozenset(self.options.layers)
        self.last_layer = max(self.options.layers_computed)

    def computed_rows(self, width: int) -> tuple[int, int]:
        """The query rows [start, end) of a forward of `width` tokens this part needs:
        rollout multiplies whole maps, so it needs every row; otherwise its inputs' rows."""
        if self.options.view == "rollout":
            return 0, width
        return min(start for start, _ in self.rows), max(end for _, end in self.rows)

    def start(self) -> None:
        """Emits the stream's header."""
        description = self.model.description
        self.outlet.emit(StreamStart(description.name, description.fingerprint, tuple(self.inputs)))

    def take(self, layer: int, probabilities: torch.Tensor, first_row: int) -> None:
        """Emits this call's results of `layer` from its inputs' probabilities [inputs,
        heads, computed query rows, key] float32 (padded to the batch's width; the
        computed rows begin at query row `first_row`)."""
        if layer > self.last_layer or not self.outlet.open:
            return
        options, layout = self.options, self.layout
        selected = probabilities if self.all_heads else probabilities.index_select(1, self.head_index)
        for row, encoded in enumerate(self.inputs):
            length = encoded.length
            start, end = self.rows[row]
            if options.view == "rollout":
                maps = selected[row, :, :length, :length]  # [heads, query, key], every row (first_row is 0)
                layer_attention = residual_attention(head_mean(maps)[0], options.rollout_residual_weight)
                self.rollouts[row] = rollout_step(self.rollouts[row], layer_attention)
            else:
                maps = selected[row, :, start - first_row:end - first_row, :length]  # [heads, rows, key]
            if layer not in self.requested:
                continue
            view_values = {
                "heads": lambda: maps,
                "head_mean": lambda: head_mean(maps),
                "head_max": lambda: head_max(maps),
                "rollout": lambda: self.rollouts[row][None, start:end],  # type: ignore[index]
                "mean_distance": lambda: mean_attention_distance(maps, layout.first_patch, self.centres)[:, None, None],
            }[options.view]()
            if options.patch_grid:
                assert layout is not None
                # [heads_or_1, tokens, tokens] -> [heads_or_1, rows, columns]: the [CLS] row over the patches
                view_values = view_values[:, 0, layout.first_patch:].reshape(-1, layout.grid_rows, layout.grid_columns)
            self.outlet.emit(_layer_result(row, layer, view_values, options, layout, start))
            if not self.outlet.open:
                return


def sharing_key(query: AttentionQuery, options: AttentionOptions) -> tuple[int, str]:
    """Calls share a forward when their inputs are of one modality and they need the same
    depth (no call waits for layers it would not compute alone)."""
    return max(options.layers_computed), query.inputs[0].modality if query.inputs else "text"


def prepare_part(model: LoadedModel, query: AttentionQuery, options: AttentionOptions, outlet: Outlet) -> _Part:
    """Encodes one call's inputs and checks them against its options (rows included) and
    limits."""
    inputs = model.encode_all(query.inputs, query.truncate)
    shortest = min(item.length for item in inputs)
    require(options.top_k <= shortest, "top_k", f"{options.top_k} exceeds the shortest input ({shortest} tokens)")
    layout = inputs[0].image
    require(not options.patch_grid or (layout is not None and layout.first_patch > 0), "patch_grid",
            f"model {model.name!r} has no [CLS] token whose row could be laid out over the patches")
    lengths = [item.length for item in inputs]
    model.budget.check_batch_tokens(len(lengths), max(lengths), "inputs")
    part = _Part(model, options, inputs, outlet)
    first, end = part.computed_rows(max(lengths))
    model.budget.require(footprint(model.description, lengths, options, part.rows, end - first))
    return part


def _union_rows(parts: Sequence[_Part], width: int) -> tuple[int, int]:
    """The query rows [start, end) a forward of `parts` at `width` tokens computes."""
    spans = [part.computed_rows(width) for part in parts]
    return min(start for start, _ in spans), max(end for _, end in spans)


def parts_fit(model: LoadedModel, parts: Sequence[_Part]) -> bool:
    """Whether one padded forward of every part's inputs fits --max-batch-tokens and the
    memory budget (the parts' own returned values plus the merged batch's activations)."""
    lengths = [item.length for part in parts for item in part.inputs]
    width = max(lengths)
    first, end = _union_rows(parts, width)
    fixed = sum(footprint(model.description, [item.length for item in part.inputs], part.options, part.rows).fixed
                for part in parts)
    merged = footprint(model.description, lengths, parts[0].options, computed_rows=end - first)
    needed = fixed + merged.rows * merged.per_row
    return len(lengths) * width <= model.budget.batch_tokens and needed <= model.budget.bytes


def run_parts(model: LoadedModel, parts: Sequence[_Part]) -> None:
    """One padded forward of every part's inputs (rows in part order), each part's layers
    streamed to its own outlet as the forward reaches them; only the query rows some part
    asks for are computed. It stops after the deepest layer any part needs, or once every
    outlet is closed."""
    batch = model.batch([item for part in parts for item in part.inputs])  # [rows, width]
    for part in parts:
        part.start()
    bounds = list(itertools.accumulate((len(part.inputs) for part in parts), initial=0))
    computed = frozenset().union(*(part.options.layers_computed for part in parts))
    last_layer = max(computed)
    first, end = _union_rows(parts, batch.width)

    def on_probabilities(layer: int, probabilities: torch.Tensor) -> None:
        # probabilities: [rows, heads, query rows first..end, key] float32
        for part, begin, stop in zip(parts, bounds, bounds[1:]):
            part.take(layer, probabilities[begin:stop], first)
        if not any(part.outlet.open for part in parts):
            raise Cancelled()
        if layer == last_layer:
            raise hooks.StopForward()  # the layers after it are not needed

    every_row = (first, end) == (0, batch.width)
    capture = hooks.HookSet({hooks.ATTN_PROBS: on_probabilities}, {hooks.ATTN_PROBS: computed},
                            probability_rows=None if every_row else (first, end))
    with model.hooks.active(capture), torch.inference_mode():
        model.run_trunk(batch.model_inputs())


def run(model: LoadedModel, query: AttentionQuery, options: AttentionOptions, sink: Sink) -> None:
    """Encodes the inputs, then streams each requested layer as the forward pass reaches it."""
    run_alone(sink, lambda outlet: prepare_part(model, query, options, outlet), lambda parts: run_parts(model, parts))


def footprint(description: ModelDescription, lengths: list[int], options: AttentionOptions,
              rows: list[tuple[int, int]] | None = None, computed_rows: int | None = None) -> Footprint:
    """One padded forward of every input (it cannot be split) computing `computed_rows`
    query rows of the probabilities (default: all), plus the returned maps held at once:
    those of HANDOFF_ITEMS + 2 layers at most (module docstring), each per input [heads
    or 1, rows, tokens or top_k] values (and int32 key indices with top_k), and rollout's
    running product. `rows`: each input's query rows [start, end) (default: all)."""
    width = max(lengths)
    heads = len(options.heads) if options.view in ("heads", "mean_distance") else 1
    value_bytes = DTYPE_BYTES[options.dtype] + (4 if options.top_k else 0)
    spans = [end - start for start, end in rows] if rows is not None else lengths
    layer_maps = sum(heads * span * (options.top_k or length) * value_bytes for span, length in zip(spans, lengths))
    held = min(len(options.layers), HANDOFF_ITEMS + 2) * layer_maps
    rollout = sum(2 * length * length * 4 for length in lengths) if options.view == "rollout" else 0
    return Footprint(
        fixed=held + rollout,
        per_row=activation_bytes(description, width, gradients=False, attention_rows=computed_rows)
        + output_bytes(description, width, positions=0),
        rows=len(lengths),
        field="inputs",
        advice="send fewer or shorter inputs, or ask for fewer layers or heads, a query row range "
               "(query_start/query_end), a reduced view, top_k or float16",
    )


def _layer_result(row: int, layer: int, values: torch.Tensor, options: AttentionOptions,
                  layout: ImageLayout | None, query_start: int = 0) -> AttentionLayerResult:
    indices = None
    if options.top_k:
        values, top_indices = torch.topk(values, options.top_k, dim=-1)
        indices = to_wire(top_indices, "int32")
    return AttentionLayerResult(
        input_index=row,
        layer=layer,
        heads=options.heads if options.view in ("heads", "mean_distance") else (),
        view=options.view,
        values=to_wire(values, options.dtype),
        key_indices=indices,
        grid_rows=layout.grid_rows if options.patch_grid and layout else 0,
        grid_columns=layout.grid_columns if options.patch_grid and layout else 0,
        query_start=query_start,
    )


METHOD = Method(
    name="attention", rpc="StreamAttention", query_type=AttentionQuery, prepare=prepare, run=run,
    payloads={AttentionLayerResult: "chunk"},
    sharing=Sharing(key=sharing_key, prepare=prepare_part, fits=parts_fit, run=run_parts),
)
