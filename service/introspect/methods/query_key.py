"""Query-key embeddings: the post-rotary queries and keys of every token, jointly
projected to 2-D per layer and head.

Yeh, Chen, Wu, Ma, Wattenberg and Viégas (2023), "AttentionViz: A Global View of
Transformer Attention" (IEEE VIS 2023). For each chosen layer and query head, the query
vector of every token of every input and the key vector of the same tokens are read
where the attention function receives them (the `attn.q` and `attn.k` hook points, after
rotary position embeddings; under grouped-query attention the key head the query head
reads, h // (query heads / key heads)); padding is never a point.

Normalisation (the paper's section 4.1, "vector normalization", translation then
scaling), per (layer, head) over the tokens of all inputs together, in float64:

1. translation: k <- k - mean(k) + mean(q), so the keys' centroid is the queries'
   (each query's scores all shift by q . (mean(q) - mean(k)), which no softmax row sees);
2. scaling: c = sqrt(mean |k| / mean |q|) with the norms after step 1; q <- c q,
   k <- k / c, so both have mean norm sqrt(mean |q| mean |k|) (dot products unchanged).
   The centroids are then c mean(q) and mean(q) / c: they coincide exactly only when
   c = 1 (the paper's order; scaling first would not keep both properties either).

Projection of the 2T normalised vectors (T queries, then the T keys), jointly:

- PCA (default): centred on their joint mean, the first two right singular vectors (torch,
  float64); each axis's sign makes its largest-magnitude loading positive (as
  scikit-learn's PCA does), and the explained variance ratio of each axis is returned;
- UMAP (umap-learn) or t-SNE (scikit-learn, PCA initialisation), random_state 0, when the
  server has those packages; otherwise INVALID_ARGUMENT naming `projection`.

Streamed: the header, the points' labels once, then per layer (ascending) and head (in
request order) its projection and, with include_vectors, its normalised vectors (chunked
by rpc/encode.py). A layer's results are computed in the `attn.k` hook while the forward
passes it (only one layer's queries and keys are held); the forward stops after the last
chosen layer; a cancel is noticed between heads.
"""

from __future__ import annotations

import importlib.util
import math
from dataclasses import dataclass

import numpy as np
import torch
from introspect_contract.enums import PROJECTION_METHOD

from .. import hooks
from ..budget import Footprint, activation_bytes
from ..engine import HANDOFF_ITEMS, Sink
from ..errors import require
from ..models import LoadedModel, ModelDescription
from ..requests import InputSpec
from ..results import EncodedInput, QueryKeyVectorsResult, StreamStart, WireArray
from .registry import Method
from .selection import unique_in_range

PROJECTIONS = PROJECTION_METHOD.names  # ("pca", "umap", "tsne")
NONLINEAR_PACKAGES = {"umap": ("umap", "umap-learn"), "tsne": ("sklearn", "scikit-learn")}
MAX_INPUTS = 32
"""Inputs in one request."""
MAX_TOKENS = 2048
"""Tokens of all inputs together (each gives a query and a key point): PCA."""
MAX_NONLINEAR_TOKENS = 256
"""Tokens of all inputs together for UMAP and t-SNE: superlinear in the points, and a cancel
waits for the projection running (seconds for 512 points of t-SNE on a loaded CPU)."""
MIN_NONLINEAR_TOKENS = 4
"""UMAP's neighbourhoods and t-SNE's perplexity need a few points."""
MAX_VECTOR_BYTES = 16 * 1024 * 1024
"""float32 bytes of normalised vectors one request may return (include_vectors)."""


@dataclass(frozen=True)
class QueryKeyQuery:
    """What StreamQueryKeyEmbeddings was asked for (fields as in its request)."""

    model: str
    inputs: tuple[InputSpec, ...] = ()
    layers: tuple[int, ...] = ()
    heads: tuple[int, ...] = ()
    projection: str = "pca"
    include_vectors: bool = False
    truncate: bool = False


@dataclass(frozen=True)
class QueryKeyOptions:
    """A validated query."""

    layers: tuple[int, ...]  # sorted, unique
    heads: tuple[int, ...]  # request order, unique
    projection: str
    include_vectors: bool


@dataclass(frozen=True)
class QueryKeyPointsResult:
    """The labels of the tokens (fields as in QueryKeyPoints)."""

    input_indices: tuple[int, ...]
    positions: tuple[int, ...]
    tokens: tuple[str, ...]


@dataclass(frozen=True)
class QueryKeyProjectionResult:
    """One layer's and head's projection (fields as in QueryKeyProjection)."""

    layer: int
    head: int
    key_head: int
    projection: str
    coordinates: WireArray  # float32 [2T, 2]
    explained_variance_ratio: tuple[float, ...]
    query_mean_norm: float
    key_mean_norm: float
    scale: float


def prepare(description: ModelDescription, query: QueryKeyQuery) -> QueryKeyOptions:
    """Validates the query against the model (cheap: no tokenizing)."""
    require(len(query.inputs) > 0, "inputs", "at least one input is required")
    require(len(query.inputs) <= MAX_INPUTS, "inputs",
            f"{len(query.inputs)} inputs; query-key embeddings take at most {MAX_INPUTS}")
    layers = unique_in_range(query.layers, description.num_layers, "layers", "layer") or tuple(
        range(description.num_layers))
    heads = unique_in_range(query.heads, description.num_heads, "heads", "head") or tuple(
        range(description.num_heads))
    require(query.projection in PROJECTIONS, "projection",
            f"unknown projection {query.projection!r}; use one of {PROJECTIONS}")
    if query.projection in NONLINEAR_PACKAGES:
        module, package = NONLINEAR_PACKAGES[query.projection]
        require(importlib.util.find_spec(module) is not None, "projection",
                f"{query.projection} needs the optional package {package}, which this server does not have "
                "installed; use pca, or install it on the server")
    return QueryKeyOptions(layers=tuple(sorted(layers)), heads=heads, projection=query.projection,
                           include_vectors=query.include_vectors)


def normalise(queries: torch.Tensor, keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, float, float, float]:
    """AttentionViz's normalisation of queries and keys [T, head_dim] (module docstring):
    the normalised queries and keys (float64), the mean query norm, the mean key norm after
    the translation, and the scale c."""
    queries, keys = queries.double(), keys.double()
    keys = keys - keys.mean(dim=0) + queries.mean(dim=0)
    query_norm = float(queries.norm(dim=1).mean())
    key_norm = float(keys.norm(dim=1).mean())
    scale = math.sqrt(key_norm / query_norm) if query_norm > 0 and key_norm > 0 else 1.0
    return queries * scale, keys / scale, query_norm, key_norm, scale


def pca_2d(points: torch.Tensor) -> tuple[torch.Tensor, tuple[float, ...]]:
    """The first two principal coordinates [n, 2] of `points` [n, dim] (float64) and the
    share of the variance each explains; each axis's largest-magnitude loading positive."""
    centred = points - points.mean(dim=0)
    _, singular, vt = torch.linalg.svd(centred, full_matrices=False)
    components = vt[:2]  # [<=2, dim]
    signs = torch.sign(components.gather(1, components.abs().argmax(dim=1, keepdim=True)))
    components = components * torch.where(signs == 0, torch.ones_like(signs), signs)
    coordinates = centred @ components.T  # [n, <=2]
    total = float((singular ** 2).sum())
    ratios = [float(value ** 2) / total if total > 0 else 0.0 for value in singular[:2]]
    if coordinates.shape[1] < 2:  # one dimension or one distinct point: the second axis is 0
        coordinates = torch.cat([coordinates, coordinates.new_zeros(coordinates.shape[0], 2 - coordinates.shape[1])], 1)
        ratios += [0.0] * (2 - len(ratios))
    return coordinates, tuple(ratios)


def nonlinear_2d(points: torch.Tensor, projection: str) -> torch.Tensor:
    """UMAP or t-SNE coordinates [n, 2] of `points` [n, dim] (random_state 0)."""
    data = points.cpu().numpy().astype(np.float32)
    count = data.shape[0]
    if projection == "umap":
        import umap  # type: ignore[import-not-found]

        reducer = umap.UMAP(n_components=2, n_neighbors=min(15, count - 1), random_state=0)
    else:
        from sklearn.manifold import TSNE

        reducer = TSNE(n_components=2, perplexity=min(30.0, (count - 1) / 3), init="pca", random_state=0)
    return torch.from_numpy(np.asarray(reducer.fit_transform(data), dtype=np.float64))


def footprint(description: ModelDescription, lengths: list[int], options: QueryKeyOptions) -> Footprint:
    """One padded forward of every input up to the last chosen layer (it cannot be split),
    one layer's queries and keys of the chosen heads kept in float64 (with their
    normalised copies and the projection's workspace), and with include_vectors the
    vectors of the results held at once (HANDOFF_ITEMS + 2)."""
    tokens, width = sum(lengths), max(lengths)
    per_head = 2 * tokens * description.head_dim * 8
    vectors = min(len(options.heads) * len(options.layers), HANDOFF_ITEMS + 2) * per_head // 2
    return Footprint(
        fixed=4 * len(options.heads) * per_head + (vectors if options.include_vectors else 0),
        per_row=activation_bytes(description, width, gradients=False, attention_rows=0),
        rows=len(lengths),
        field="inputs",
        advice="send fewer or shorter inputs, or ask for fewer heads",
    )


def check_sizes(model: LoadedModel, inputs: list[EncodedInput], options: QueryKeyOptions) -> None:
    """The limits that depend on the tokens: points, vectors, batch tokens and memory."""
    lengths = [item.length for item in inputs]
    tokens = sum(lengths)
    nonlinear = options.projection != "pca"
    limit = MAX_NONLINEAR_TOKENS if nonlinear else MAX_TOKENS
    require(tokens <= limit, "inputs",
            f"{tokens} tokens in all; {options.projection} embeds at most {limit} (each token is a query and a key point)")
    require(not nonlinear or tokens >= MIN_NONLINEAR_TOKENS, "inputs",
            f"{tokens} tokens; {options.projection} needs at least {MIN_NONLINEAR_TOKENS} (use pca)")
    if options.include_vectors:
        size = 2 * tokens * model.description.head_dim * 4 * len(options.layers) * len(options.heads)
        require(size <= MAX_VECTOR_BYTES, "include_vectors",
                f"the vectors would take {size} bytes; at most {MAX_VECTOR_BYTES} are returned: ask for fewer "
                "layers, heads or tokens")
    model.budget.check_batch_tokens(len(lengths), max(lengths), "inputs")
    model.budget.require(footprint(model.description, lengths, options))


def run(model: LoadedModel, query: QueryKeyQuery, options: QueryKeyOptions, sink: Sink) -> None:
    """Encodes the inputs, then streams each chosen layer's and head's projection as the
    forward passes the layer."""
    inputs = model.encode_all(query.inputs, query.truncate)
    check_sizes(model, inputs, options)
    batch = model.batch(inputs)
    description = model.description
    sink.emit(StreamStart(description.name, description.fingerprint, batch.inputs))
    sink.emit(QueryKeyPointsResult(
        input_indices=tuple(index for index, item in enumerate(inputs) for _ in range(item.length)),
        positions=tuple(position for item in inputs for position in range(item.length)),
        tokens=tuple(token for item in inputs for token in item.tokens),
    ))
    lengths = [item.length for item in inputs]
    last_layer = options.layers[-1]
    queries_of: dict[int, torch.Tensor] = {}

    def gather(values: torch.Tensor, head: int) -> torch.Tensor:
        # values [batch, heads, width, head_dim] -> [T, head_dim]: every input's real tokens
        return torch.cat([values[row, head, :length] for row, length in enumerate(lengths)])

    def on_query(layer: int, query_values: torch.Tensor) -> None:
        queries_of[layer] = query_values

    def on_key(layer: int, key_values: torch.Tensor) -> None:
        query_values = queries_of.pop(layer)
        group = query_values.shape[1] // key_values.shape[1]
        for head in options.heads:
            sink.check()
            key_head = head // group
            queries, keys, query_norm, key_norm, scale = normalise(gather(query_values, head),
                                                                   gather(key_values, key_head))
            points = torch.cat([queries, keys])  # [2T, head_dim]
            if options.projection == "pca":
                coordinates, ratios = pca_2d(points)
            else:
                coordinates, ratios = nonlinear_2d(points, options.projection), ()
            sink.emit(QueryKeyProjectionResult(
                layer=layer, head=head, key_head=key_head, projection=options.projection,
                coordinates=WireArray(coordinates.float().cpu().numpy(), "float32"),
                explained_variance_ratio=ratios, query_mean_norm=query_norm, key_mean_norm=key_norm, scale=scale,
            ))
            if options.include_vectors:
                sink.emit(QueryKeyVectorsResult(layer=layer, head=head,
                                                vectors=WireArray(points.float().cpu().numpy(), "float32")))
        if layer == last_layer:
            raise hooks.StopForward()

    chosen = frozenset(options.layers)
    capture = hooks.HookSet({hooks.ATTN_Q: on_query, hooks.ATTN_K: on_key},
                            {hooks.ATTN_Q: chosen, hooks.ATTN_K: chosen})
    with model.hooks.active(capture), torch.inference_mode():
        model.run_trunk(batch.model_inputs())


METHOD = Method(
    name="query_key_embeddings",
    rpc="StreamQueryKeyEmbeddings",
    query_type=QueryKeyQuery,
    prepare=prepare,
    run=run,
    payloads={QueryKeyPointsResult: "points", QueryKeyProjectionResult: "projection", QueryKeyVectorsResult: "vectors"},
)
