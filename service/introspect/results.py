"""Plain result dataclasses that methods emit and the gRPC layer encodes (no torch).

Arrays are numpy, already in their wire storage (see introspect_contract.tensors).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class EncodedInput:
    """An input as the model sees it."""

    token_ids: tuple[int, ...]
    tokens: tuple[str, ...]
    token_type_ids: tuple[int, ...] | None
    truncated: bool
    original_length: int

    @property
    def length(self) -> int:
        """Number of tokens."""
        return len(self.token_ids)

    @property
    def identity(self) -> bytes:
        """What the model sees, as bytes for cache keys: its token ids, tagged."""
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
    values: WireArray  # [heads_or_1, query, keys_or_k]
    key_indices: WireArray | None  # int32 [heads_or_1, query, k] with top_k


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
