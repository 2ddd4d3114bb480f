"""Result types and the reassembly of streamed chunks into numpy arrays.

The server splits one layer's result for one input into chunks by heads and/or by query
row ranges, and chunks of different inputs may interleave. `AttentionAssembler` puts
them back together; the sync and async clients both feed it the messages they receive.
Image inputs add two shapes, both on the query range 0..1: patch-grid chunks (values
[heads_or_1, grid_rows, grid_columns], the [CLS] row over the patches) and the mean
attention distance (values [heads, 1, 1], assembled to [heads] per layer).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from introspect_contract import pb
from .image_layout import ImageLayout
from .options import VIEW_NAMES
from .streams import HeaderFirst, input_fields, stream_fields
from introspect_contract.tensors import decode_tensor


@dataclass
class InputAttention:
    """Attention result of one input.

    Attributes:
        tokens: the tokenizer's string of every token, as the model saw the input.
        token_ids: the token ids fed to the model.
        truncated: True when the input was cut to the model's limit.
        original_length: length in tokens before truncation.
        view: "heads", "head_mean", "head_max", "rollout" or "mean_distance".
        heads: heads along the first axis of every array for views "heads" and
            "mean_distance"; empty for the views reduced over heads (their first axis
            has size 1).
        layers: layer -> values; float32 (float16 when float16 was asked for):
            [heads_or_1, query, keys_or_k], or with patch_grid [heads_or_1, grid_rows,
            grid_columns] (the [CLS] row over the patches), or for "mean_distance"
            [heads] (pixels of the processed image).
        key_indices: with top_k, layer -> int32 key positions [heads_or_1, query, k].
        image: how an image input became tokens; None for text.
        query_start: the token position of the first query row of every array (a
            requested row range starts past 0); the rows run to query_start + query.
    """

    tokens: list[str]
    token_ids: list[int]
    truncated: bool
    original_length: int
    view: str
    heads: list[int] = field(default_factory=list)
    layers: dict[int, np.ndarray] = field(default_factory=dict)
    key_indices: dict[int, np.ndarray] = field(default_factory=dict)
    image: ImageLayout | None = None
    query_start: int = 0

    def stacked(self) -> np.ndarray:
        """All layers' values stacked in layer order: [layers, heads_or_1, query,
        keys_or_k], [layers, heads_or_1, grid_rows, grid_columns] with patch_grid, or
        [layers, heads] for "mean_distance"."""
        if not self.layers:
            raise ValueError("the result holds no layers")
        return np.stack([self.layers[layer] for layer in sorted(self.layers)])

    def to_xarray(self) -> Any:
        """The layers as an xarray.DataArray with named axes ("layer", "head", "query",
        "key") and the tokens as coordinates (xarray_views says more; needs xarray)."""
        from .xarray_views import attention_dataarray

        return attention_dataarray(self)


@dataclass
class AttentionResult:
    """Result of an attention call: one `InputAttention` per input, in request order."""

    model: str
    fingerprint: str
    cached: bool
    inputs: list[InputAttention]

    def __getitem__(self, index: int) -> InputAttention:
        return self.inputs[index]

    def __len__(self) -> int:
        return len(self.inputs)

    def __iter__(self) -> Iterator[InputAttention]:
        return iter(self.inputs)

    def to_xarray(self) -> list[Any]:
        """One xarray.DataArray per input (InputAttention.to_xarray), in request order."""
        return [item.to_xarray() for item in self.inputs]


@dataclass(frozen=True)
class _Piece:
    """One decoded chunk: heads (empty for reduced views), rows [start, end), arrays, and
    the patch grid (rows, columns) of a patch-grid chunk, whose values are flattened to
    one query row."""

    heads: tuple[int, ...]
    query_start: int
    query_end: int
    values: np.ndarray  # [heads_or_1, query_end - query_start, keys_or_k]
    key_indices: np.ndarray | None  # int32, same shape as values, with top_k
    grid: tuple[int, int] | None = None


def _piece_of(chunk: pb.AttentionChunk) -> _Piece:
    values = decode_tensor(chunk.values)
    indices = decode_tensor(chunk.key_indices) if chunk.HasField("key_indices") else None
    where = f"chunk of input {chunk.input_index}, layer {chunk.layer}"
    grid = (chunk.grid_rows, chunk.grid_columns) if chunk.grid_rows or chunk.grid_columns else None
    if grid is not None:  # [heads_or_1, grid_rows, grid_columns] -> [heads_or_1, 1, grid_rows * grid_columns]
        if values.ndim != 3 or values.shape[1:] != grid or (chunk.query_start, chunk.query_end) != (0, 1):
            raise ValueError(
                f"{where}: patch-grid values of shape {values.shape} for a {grid[0]}x{grid[1]} grid, "
                f"query rows [{chunk.query_start}, {chunk.query_end})"
            )
        values = values.reshape(values.shape[0], 1, -1)
        indices = None if indices is None else indices.reshape(values.shape)
    rows = chunk.query_end - chunk.query_start
    if values.ndim != 3 or values.shape[1] != rows or rows <= 0:
        raise ValueError(
            f"{where}: values of shape {values.shape} do not match query rows "
            f"[{chunk.query_start}, {chunk.query_end})"
        )
    if chunk.heads and values.shape[0] != len(chunk.heads):
        raise ValueError(f"{where}: {len(chunk.heads)} heads but values of shape {values.shape}")
    if indices is not None and indices.shape != values.shape:
        raise ValueError(f"{where}: key_indices of shape {indices.shape}, values of shape {values.shape}")
    return _Piece(tuple(chunk.heads), chunk.query_start, chunk.query_end, values, indices, grid)


def _as_slice(indices: list[int]) -> slice | list[int]:
    """`indices` as a slice when they are consecutive and ascending (numpy copies into a
    slice several times faster than into a list of indices)."""
    if indices and indices == list(range(indices[0], indices[0] + len(indices))):
        return slice(indices[0], indices[0] + len(indices))
    return indices


def _assemble_pieces(
    pieces: Sequence[_Piece], query_rows: int, where: str, head_order: Sequence[int] = (), first_row: int = 0
) -> tuple[list[int], np.ndarray, np.ndarray | None]:
    """(heads, values, key_indices) of one layer of one input from its pieces, which
    cover query rows [first_row, first_row + query_rows).

    Per-head values are ordered as in `head_order` (the requested heads, which is the
    order the server uses), with heads not in it after them in ascending order (so all
    heads, when none were requested, come out as 0..n-1). Raises ValueError if the pieces
    disagree or leave any (head, row) unfilled.
    """
    if not pieces:
        raise ValueError(f"{where}: no chunks")
    seen = {head for piece in pieces for head in piece.heads}
    if seen and head_order and seen != set(head_order):
        raise ValueError(f"{where}: chunks for heads {sorted(seen)}, but heads {sorted(set(head_order))} were requested")
    heads = [head for head in dict.fromkeys(head_order) if head in seen]
    heads += sorted(seen.difference(heads))
    if heads and any(not piece.heads for piece in pieces):
        raise ValueError(f"{where}: chunks mix per-head and reduced values")
    first = pieces[0]
    width = first.values.shape[2]
    with_indices = first.key_indices is not None
    head_count = len(heads) if heads else first.values.shape[0]
    values = np.empty((head_count, query_rows, width), dtype=first.values.dtype)
    indices = np.empty((head_count, query_rows, width), dtype=np.int32) if with_indices else None
    filled = np.zeros((head_count, query_rows), dtype=bool)
    position = {head: index for index, head in enumerate(heads)}
    for piece in pieces:
        if piece.values.shape[2] != width or piece.values.dtype != values.dtype:
            raise ValueError(f"{where}: chunks disagree on width or dtype")
        if (piece.key_indices is not None) != with_indices:
            raise ValueError(f"{where}: key_indices on some chunks only")
        if piece.query_start < first_row or piece.query_end > first_row + query_rows:
            raise ValueError(f"{where}: rows [{piece.query_start}, {piece.query_end}) outside the expected "
                             f"[{first_row}, {first_row + query_rows})")
        if heads:
            target: slice | list[int] = _as_slice([position[head] for head in piece.heads])
        else:
            if piece.values.shape[0] != head_count:
                raise ValueError(f"{where}: chunks disagree on the first axis")
            target = slice(None)
        rows = slice(piece.query_start - first_row, piece.query_end - first_row)
        values[target, rows] = piece.values
        if indices is not None:
            indices[target, rows] = piece.key_indices
        filled[target, rows] = True
    if not filled.all():
        missing = int((~filled).sum())
        raise ValueError(f"{where}: the stream left {missing} (head, query row) slices unfilled")
    return heads, values, indices


def _resolved_rows(query_range: tuple[int, int], length: int) -> tuple[int, int]:
    """The rows [start, end) a requested (query_start, query_end) gives an input of
    `length` tokens (negative counts from the end, an end of 0 is the end)."""
    start, end = query_range
    return (start + length if start < 0 else start,
            length if end == 0 else end + length if end < 0 else end)


class AttentionAssembler(HeaderFirst):
    """Collects a StreamAttention stream (header, then chunks) into an AttentionResult.

    Feed every message to `add`, then call `result`. Chunks of one (input, layer) may be
    split by heads and by query rows, in any order as long as the one marked
    layer_complete comes last, and may interleave with other inputs' chunks. `view` is
    the requested view and `heads` the requested heads (their order is the order of the
    first axis of per-head values); `query_start` and `query_end` the requested row range
    (as in the request: negative counts from the end, query_end 0 is the end).
    """

    def __init__(self, view: str = "heads", heads: Sequence[int] = (), query_start: int = 0,
                 query_end: int = 0) -> None:
        super().__init__()
        self._default_view = view
        self._head_order = tuple(heads)
        self._query_range = (query_start, query_end)
        self._inputs: list[InputAttention] = []
        self._pending: dict[tuple[int, int], list[_Piece]] = {}
        self._done: set[tuple[int, int]] = set()

    def add(self, message: pb.StreamAttentionResponse) -> None:
        """Takes the next message of the stream."""
        kind = self._payload_kind(message)
        if kind == "header":
            self._start(message.header)
        elif kind == "chunk":
            self._add_chunk(message.chunk)

    def _start(self, header: pb.StreamHeader) -> None:
        ordered = sorted(header.inputs, key=lambda item: item.input_index)
        self._inputs = [InputAttention(**input_fields(item), view=self._default_view) for item in ordered]
        if [item.input_index for item in ordered] != list(range(len(ordered))):
            raise ValueError("the stream header's input indices are not 0..n-1")

    def _add_chunk(self, chunk: pb.AttentionChunk) -> None:
        if not 0 <= chunk.input_index < len(self._inputs):
            raise ValueError(f"chunk for input {chunk.input_index}, but the request had {len(self._inputs)}")
        key = (chunk.input_index, chunk.layer)
        if key in self._done:
            raise ValueError(f"chunk of input {key[0]}, layer {key[1]} after its layer was complete")
        self._inputs[chunk.input_index].view = VIEW_NAMES.get(chunk.view, self._default_view)
        self._pending.setdefault(key, []).append(_piece_of(chunk))
        if chunk.layer_complete:
            self._finish(key)

    def _finish(self, key: tuple[int, int]) -> None:
        input_index, layer = key
        target = self._inputs[input_index]
        pieces = self._pending.pop(key)
        where = f"input {input_index}, layer {layer}"
        grids = {piece.grid for piece in pieces}
        if len(grids) > 1:
            raise ValueError(f"{where}: chunks disagree on the patch grid: {sorted(map(str, grids))}")
        grid = grids.pop() if grids else None
        one_row = grid is not None or target.view == "mean_distance"
        start, end = (0, 1) if one_row else _resolved_rows(self._query_range, len(target.token_ids) or len(target.tokens))
        heads, values, indices = _assemble_pieces(pieces, end - start, where, self._head_order, start)
        target.query_start = start
        if grid is not None:  # [heads_or_1, 1, rows * columns] -> [heads_or_1, rows, columns]
            values = values.reshape(values.shape[0], *grid)
            indices = None if indices is None else indices.reshape(values.shape)
        elif target.view == "mean_distance":  # [heads, 1, 1] -> [heads]
            if values.shape[1:] != (1, 1):
                raise ValueError(f"{where}: mean distance values of shape {values.shape}, expected [heads, 1, 1]")
            values = values.reshape(values.shape[0])
        target.heads = heads
        target.layers[layer] = values
        if indices is not None:
            target.key_indices[layer] = indices
        self._done.add(key)

    def result(self) -> AttentionResult:
        """The assembled result; ValueError if the stream was incomplete."""
        if self._header is None:
            raise ValueError("the stream ended without a header")
        for key in sorted(self._pending):
            self._finish(key)
        for item in self._inputs:
            item.layers = dict(sorted(item.layers.items()))
            item.key_indices = dict(sorted(item.key_indices.items()))
        return AttentionResult(**stream_fields(self._header), inputs=self._inputs)
