"""Plain result dataclasses that methods emit and the gRPC layer encodes (no torch).

Arrays are numpy, already in their wire storage (see introspect_contract.tensors).
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ImageLayout:
    """How a processed image became tokens (see ImageLayout in the proto)."""

    height: int
    width: int
    patch_height: int
    patch_width: int
    grid_rows: int
    grid_columns: int
    special_tokens: tuple[str, ...]
    original_height: int
    original_width: int

    @property
    def first_patch(self) -> int:
        """Token index of patch (0, 0)."""
        return len(self.special_tokens)

    @property
    def patches(self) -> int:
        """Patch tokens: grid_rows * grid_columns."""
        return self.grid_rows * self.grid_columns


@dataclass(frozen=True, eq=False)
class EncodedInput:
    """An input as the model sees it: token ids, or for an image its processed pixels
    [3, height, width] and their layout (`tokens` then names each token)."""

    token_ids: tuple[int, ...]
    tokens: tuple[str, ...]
    token_type_ids: tuple[int, ...] | None
    truncated: bool
    original_length: int
    image: ImageLayout | None = None
    pixel_values: np.ndarray | None = None  # [3, height, width] float32, images only

    @property
    def length(self) -> int:
        """Number of tokens."""
        return len(self.tokens)

    @property
    def identity(self) -> bytes:
        """What the model sees, as bytes for cache keys: its token ids, or a digest of its
        processed pixels with the image's size as sent (the stream header reports it),
        tagged."""
        if self.pixel_values is not None:
            digest = hashlib.sha256(np.ascontiguousarray(self.pixel_values, dtype="<f4").tobytes()).hexdigest()
            sent = f"{self.image.original_height}x{self.image.original_width}" if self.image is not None else ""
            return f"pixels:{','.join(map(str, self.pixel_values.shape))}:{sent}:{digest}".encode()
        return b"token_ids:" + struct.pack(f"<{len(self.token_ids)}q", *self.token_ids)


@dataclass(frozen=True)
class StreamStart:
    """First item of every stream: which model, and the inputs as it saw them."""

    model: str
    fingerprint: str
    inputs: tuple[EncodedInput, ...]


@dataclass(frozen=True)
class WireArray:
    """A numpy array in the storage of wire dtype `dtype` (bfloat16 as uint16 bits)."""

    values: np.ndarray
    dtype: str


@dataclass(frozen=True)
class AttentionLayerResult:
    """One layer's attention result for one input."""

    input_index: int
    layer: int
    heads: tuple[int, ...]  # empty for views reduced over heads
    view: str
    values: WireArray  # [heads_or_1, query, keys_or_k], or [heads_or_1, grid_rows, grid_columns]
    key_indices: WireArray | None  # int32 [heads_or_1, query, k] with top_k
    grid_rows: int = 0  # patch_grid: values are the [CLS] row laid out as the patch grid
    grid_columns: int = 0
    query_start: int = 0  # the first query row of `values` (a row range starts past 0)


@dataclass(frozen=True)
class SaliencyResult:
    """A partial or final attribution of the target to positions [token_start, token_end).

    Every method's final result covers all positions; integrated gradients sends one
    result per refinement, occlusion partial results as tokens finish.
    """

    scores: WireArray  # float32 [token_end - token_start]
    per_dimension: WireArray | None  # float32 [token_end - token_start, hidden], final results only
    token_start: int
    token_end: int
    target_score: float
    baseline_score: float = 0.0
    steps: int = 0
    convergence_delta: float = 0.0
    final: bool = False
    batch_size: int = 0  # rows per forward that ran (set by methods.saliency)
    converged: bool = False  # final results: False only where a tolerance was missed
    method: str = ""  # set by methods.saliency (CAMs computed together set their own)
    grid_scores: WireArray | None = None  # images: float32 [grid_rows, grid_columns]
    pixel_scores: WireArray | None = None  # images, pixel methods: float32 [height, width]
    upsampled_scores: WireArray | None = None  # images with upsample: float32 [height, width]


@dataclass(frozen=True)
class AblationBaselineResult:
    """The unablated target score, sent before any ablation result."""

    target_score: float
    output_change_metric: str  # "kl_divergence" or "cosine_distance"
    num_layers: int
    num_heads: int
    batch_size: int = 1  # ablated rows per forward that ran (per_head), else 1


@dataclass(frozen=True)
class LayerAblationResult:
    """Each selected head of one layer ablated on its own."""

    layer: int
    heads: tuple[int, ...]
    target_delta: WireArray  # float32 [heads]: ablated score - unablated score
    output_change: WireArray  # float32 [heads]: KL(unablated || ablated) or cosine distance


@dataclass(frozen=True)
class JointAblationResult:
    """A set of heads ablated together, with optional greedy continuations."""

    heads: tuple[tuple[int, int], ...]  # (layer, head)
    ablated_score: float
    output_change: float
    base_continuation: tuple[int, ...] = ()
    ablated_continuation: tuple[int, ...] = ()
    base_continuation_tokens: tuple[str, ...] = ()
    ablated_continuation_tokens: tuple[str, ...] = ()


@dataclass(frozen=True)
class HeadImportanceResult:
    """Head importance (Michel et al. 2019): d target / d head gate, gates at 1."""

    importance: WireArray  # float32 [layers, heads]; NaN for heads not asked for


@dataclass(frozen=True)
class PatchingBaselineResult:
    """One pair's unpatched metric, sent before its results."""

    pair_index: int
    clean_score: float
    corrupted_score: float
    metric: str  # "target" or "kl_divergence"
    num_layers: int
    num_heads: int
    batch_size: int = 1


@dataclass(frozen=True)
class PatchingLayerResult:
    """Patching results of one layer and patch point (see PatchingLayer in the proto)."""

    pair_index: int  # -1: the mean over pairs
    method: str  # "activation" or "attribution"
    point: str  # a PatchPoint name: "resid_pre", "head", ...
    layer: int
    positions: tuple[int, ...]
    heads: tuple[int, ...]
    values: WireArray  # float32 [positions], [heads] or [heads, positions]
    normalized: WireArray | None  # same shape; None for KL


@dataclass(frozen=True)
class PatchingCorrelationResult:
    """Attribution patching against exact patching at one patch point."""

    pair_index: int
    point: str
    pearson: float
    max_abs_difference: float


@dataclass(frozen=True)
class LogitAttributionResult:
    """Direct logit attribution of one clean input, per position."""

    pair_index: int
    heads: WireArray  # float32 [layers, heads, positions]
    mlps: WireArray  # [layers, positions]
    attention_biases: WireArray  # [layers, positions]
    embeddings: WireArray  # [positions]
    bias: WireArray  # [positions]
    logit_difference: WireArray  # [positions]


@dataclass(frozen=True)
class KnockoutResultData:
    """Attention knockout of one clean input, per window of layers."""

    pair_index: int
    window_starts: tuple[int, ...]
    window: int
    values: WireArray  # float32 [windows]
    change: WireArray  # float32 [windows]


@dataclass(frozen=True)
class QueryKeyVectorsResult:
    """One layer's and head's normalised query and key vectors (methods/query_key.py),
    split by rows into QueryKeyVectors messages (rpc/encode.py)."""

    layer: int
    head: int
    vectors: WireArray  # float32 [2T, head_dim]: the queries, then the keys
