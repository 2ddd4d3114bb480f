"""Query-key embeddings (AttentionViz, Yeh et al. 2023) on the client: building a
StreamQueryKeyEmbeddingsRequest and assembling its stream (header, points, then per layer
and head a projection and optionally its vectors) into a `QueryKeyEmbeddingsResult`.

    emb = client.query_key_embeddings(["The cat sat.", "A dog ran."], model="llama", layers=1)
    p = emb.projections[0]          # the first (layer, head)
    p.coordinates[:emb.num_tokens]  # [T, 2]: the queries' points; the keys' follow
    emb.labels()                    # per point: (input_index, position, token, "query" | "key")
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, TypedDict

import numpy as np
from introspect_contract import pb
from introspect_contract.enums import PROJECTION_METHOD
from introspect_contract.tensors import decode_tensor

from .inputs import InputsLike, make_inputs
from .options import enum_choices, enum_value, int_list, shared_fields
from .streams import HeaderFirst, input_fields, stream_fields

PROJECTIONS: dict[str, int] = enum_choices(PROJECTION_METHOD, aliases={"t-sne": "tsne"})
"""Projection name -> ProjectionMethod."""
PROJECTION_NAMES: dict[int, str] = {number: name for name, number in enum_choices(PROJECTION_METHOD).items()} | {
    pb.PROJECTION_METHOD_UNSPECIFIED: "pca"}


class QueryKeyOptions(TypedDict, total=False):
    """Keyword options of `query_key_embeddings` / `stream_query_key_embeddings`."""

    model: str
    layers: int | Iterable[int]
    heads: int | Iterable[int]
    projection: str
    include_vectors: bool
    truncate: bool
    cache: str


def query_key_request(
    inputs: InputsLike,
    *,
    model: str = "",
    layers: int | Iterable[int] = (),
    heads: int | Iterable[int] = (),
    projection: str = "pca",
    include_vectors: bool = False,
    truncate: bool = False,
    cache: str = "use",
) -> pb.StreamQueryKeyEmbeddingsRequest:
    """Builds a StreamQueryKeyEmbeddingsRequest.

    Args:
        inputs: one input or several (text, (text, text_pair), token ids or Input).
        model: model name; "" selects the server's default model.
        layers: layers (0-based); empty means all.
        heads: query heads (0-based); empty means all.
        projection: "pca" (default), "umap" or "tsne" (the last two only on servers with
            umap-learn / scikit-learn installed).
        include_vectors: also return the normalised query and key vectors.
        truncate: cut inputs longer than the model's limit instead of failing.
        cache: result cache policy: "use", "bypass" or "refresh".
    """
    return pb.StreamQueryKeyEmbeddingsRequest(
        inputs=make_inputs(inputs),
        layers=int_list(layers, "layers"),
        heads=int_list(heads, "heads"),
        projection=enum_value(PROJECTIONS, projection, "projection"),  # type: ignore[arg-type]
        include_vectors=bool(include_vectors),
        **shared_fields(model, truncate, cache),
    )


@dataclass
class QueryKeyProjection:
    """One layer's and query head's joint projection.

    Attributes:
        layer, head: which; key_head: the key head shown (grouped-query attention).
        projection: "pca", "umap" or "tsne".
        coordinates: [2T, 2] float32: the T queries' points, then the T keys'.
        explained_variance_ratio: PCA: the share of variance of each axis; else empty.
        query_mean_norm, key_mean_norm, scale: the normalisation (queries x scale,
            translated keys / scale).
        vectors: [2T, head_dim] float32 normalised vectors (with include_vectors), else None.
    """

    layer: int
    head: int
    key_head: int
    projection: str
    coordinates: np.ndarray
    explained_variance_ratio: list[float]
    query_mean_norm: float
    key_mean_norm: float
    scale: float
    vectors: np.ndarray | None = None


@dataclass
class QueryKeyEmbeddingsResult:
    """Result of a query-key embeddings call.

    Attributes:
        model, fingerprint, cached: which model answered; cached when replayed.
        inputs: each input as the model saw it (tokens, token_ids, truncated, ...).
        input_indices, positions, tokens: [T] the labels of the tokens; point i < T is
            token i's query, point T + i its key.
        projections: one per (layer, head), layers ascending, heads in request order.
    """

    model: str
    fingerprint: str
    cached: bool
    inputs: list[dict[str, Any]]
    input_indices: list[int]
    positions: list[int]
    tokens: list[str]
    projections: list[QueryKeyProjection] = field(default_factory=list)

    @property
    def num_tokens(self) -> int:
        """T: tokens of all inputs (each a query point and a key point)."""
        return len(self.tokens)

    @property
    def is_key(self) -> np.ndarray:
        """[2T] bool: whether each point is a key (False: a query)."""
        return np.repeat([False, True], self.num_tokens)

    def labels(self) -> list[tuple[int, int, str, str]]:
        """Per point: (input index, position, token, "query" or "key")."""
        rows = list(zip(self.input_indices, self.positions, self.tokens))
        return [(*row, "query") for row in rows] + [(*row, "key") for row in rows]

    def projection(self, layer: int, head: int) -> QueryKeyProjection:
        """The projection of `layer` and `head`; KeyError when not in the result."""
        for item in self.projections:
            if (item.layer, item.head) == (layer, head):
                return item
        raise KeyError(f"no projection of layer {layer} head {head}")


class QueryKeyAssembler(HeaderFirst):
    """Collects a StreamQueryKeyEmbeddings stream into a QueryKeyEmbeddingsResult."""

    def __init__(self) -> None:
        super().__init__()
        self._points: pb.QueryKeyPoints | None = None
        self._projections: list[QueryKeyProjection] = []
        self._vectors: dict[tuple[int, int], list[pb.QueryKeyVectors]] = {}

    def add(self, message: pb.StreamQueryKeyEmbeddingsResponse) -> None:
        """Takes the next message of the stream."""
        kind = self._payload_kind(message)
        if kind == "points":
            self._points = message.points
        elif kind == "projection":
            item = message.projection
            self._projections.append(QueryKeyProjection(
                layer=item.layer, head=item.head, key_head=item.key_head,
                projection=PROJECTION_NAMES.get(item.projection, "pca"),
                coordinates=decode_tensor(item.coordinates),
                explained_variance_ratio=[float(value) for value in item.explained_variance_ratio],
                query_mean_norm=item.query_mean_norm, key_mean_norm=item.key_mean_norm, scale=item.scale,
            ))
        elif kind == "vectors":
            self._vectors.setdefault((message.vectors.layer, message.vectors.head), []).append(message.vectors)

    def result(self) -> QueryKeyEmbeddingsResult:
        """The assembled result; ValueError if the stream ended before its points."""
        if self._header is None or self._points is None:
            raise ValueError("the stream ended without its header and points")
        for projection in self._projections:
            chunks = sorted(self._vectors.get((projection.layer, projection.head), []), key=lambda c: c.point_start)
            if chunks:
                spans = [(chunk.point_start, chunk.point_end) for chunk in chunks]
                starts = [0] + [end for _, end in spans[:-1]]
                if [start for start, _ in spans] != starts or spans[-1][1] != projection.coordinates.shape[0]:
                    raise ValueError(f"the vectors of layer {projection.layer} head {projection.head} do not cover "
                                     f"points 0..{projection.coordinates.shape[0]} once each: chunks {spans}")
                vectors = np.concatenate([decode_tensor(chunk.vectors) for chunk in chunks])
                if vectors.shape[0] != projection.coordinates.shape[0]:
                    raise ValueError(f"the vectors of layer {projection.layer} head {projection.head} have "
                                     f"{vectors.shape[0]} rows for {projection.coordinates.shape[0]} points")
                projection.vectors = vectors
        points = self._points
        return QueryKeyEmbeddingsResult(
            **stream_fields(self._header),
            inputs=[input_fields(item) for item in self._header.inputs],
            input_indices=[int(value) for value in points.input_indices],
            positions=[int(value) for value in points.positions],
            tokens=list(points.tokens),
            projections=self._projections,
        )
