"""Plain request dataclasses between the gRPC layer and the methods (no gRPC, no torch).

The servicer decodes protobuf messages into these; methods validate them against the
model and run them.
"""

from __future__ import annotations

from dataclasses import dataclass

ATTENTION_VIEWS = ("heads", "head_mean", "head_max", "rollout")
VALUE_DTYPES = ("float32", "float16", "bfloat16")
DEFAULT_ROLLOUT_RESIDUAL_WEIGHT = 0.5


@dataclass(frozen=True)
class InputSpec:
    """One requested input: text (with an optional pair) or token ids."""

    text: str | None = None
    text_pair: str | None = None
    token_ids: tuple[int, ...] | None = None


@dataclass(frozen=True)
class AttentionQuery:
    """What StreamAttention was asked for, before validation against the model."""

    model: str
    inputs: tuple[InputSpec, ...]
    truncate: bool = False
    layers: tuple[int, ...] = ()
    heads: tuple[int, ...] = ()
    view: str = "heads"
    top_k: int = 0
    dtype: str = "float32"
    rollout_residual_weight: float = DEFAULT_ROLLOUT_RESIDUAL_WEIGHT


TARGET_KINDS = ("next_token", "logit_difference", "class_score", "embedding_similarity", "embedding_norm")


@dataclass(frozen=True)
class TargetSpec:
    """The scalar that saliency attributes and ablation measures (see Target in the proto)."""

    kind: str
    position: int = -1
    token_id: int | None = None
    contrast_token_id: int | None = None
    class_index: int | None = None
    probability: bool = False
    reference: InputSpec | None = None
