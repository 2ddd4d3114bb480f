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

    @property
    def modality(self) -> str:
        """What the input is: "text" (text or token ids)."""
        return "text"


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


SALIENCY_METHODS = (
    "gradient",
    "gradient_x_input",
    "integrated_gradients",
    "smoothgrad",
    "occlusion",
    "attention_rollout",
    "attention_flow",
)
BASELINES = ("default", "pad", "zero", "mask", "tokens")
INTEGRATION_RULES = (
    "gauss_legendre",
    "riemann_left",
    "riemann_right",
    "riemann_middle",
    "riemann_trapezoid",
)


@dataclass(frozen=True)
class SaliencyQuery:
    """What StreamSaliency was asked for, before validation against the model.

    Numeric options keep the request's values (0 meaning "the default"); the saliency
    method resolves the defaults and rejects values out of range.
    """

    model: str
    input: InputSpec
    target: TargetSpec | None
    method: str
    truncate: bool = False
    per_dimension: bool = False
    # integrated gradients
    baseline: str = "default"
    baseline_token_ids: tuple[int, ...] = ()
    rule: str = "default"  # Gauss-Legendre, or the trapezoid rule with a tolerance
    steps: int = 0
    batch_size: int = 0
    tolerance: float = 0.0
    # SmoothGrad
    noise_level: float = 0.0
    samples: int = 0
    seed: int = 0
    # occlusion
    span: int = 0
    stride: int = 0
    replacement: str = "default"


ABLATION_MODES = ("per_head", "joint", "importance")
ABLATION_VALUES = ("zero", "mean")


@dataclass(frozen=True)
class HeadAblationQuery:
    """What StreamHeadAblation was asked for, before validation against the model.

    `heads` holds (layer, head) pairs in request order: the heads to ablate one at a time
    (per_head, empty for all), the set ablated together (joint), or the heads to report
    (importance, empty for all).
    """

    model: str
    input: InputSpec
    target: TargetSpec | None
    truncate: bool = False
    mode: str = "per_head"
    value: str = "zero"
    heads: tuple[tuple[int, int], ...] = ()
    mean_references: tuple[InputSpec, ...] = ()
    continuation_tokens: int = 0
    batch_size: int = 0
