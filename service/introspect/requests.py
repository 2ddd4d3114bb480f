"""Plain request dataclasses between the gRPC layer and the methods (no gRPC, no torch).

The servicer decodes protobuf messages into these by field name (rpc/decode.py): a field
here has the name of the request's field; an enum field holds the value's plain name
(introspect_contract.enums), and an unset enum or `optional` field holds the default
given here, the one place those defaults are decided. Methods validate the queries
against the model and run them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from introspect_contract.enums import (
    ABLATION_MODE,
    ABLATION_VALUE,
    ATTENTION_VIEW,
    BASELINE,
    CAM_POINT,
    PATCH_DIRECTION,
    PATCH_POINT,
    PATCHING_METHOD,
    PATCHING_METRIC,
    DTYPE,
    INTEGRATION_RULE,
    SALIENCY_METHOD,
    TARGET_KINDS,  # re-exported: the targets module checks kinds against it
)

DEFAULT = "default"
"""An unset enum whose default the method resolves itself (it depends on other options
or on the model), e.g. the integrated-gradients rule or baseline."""
ATTENTION_VIEWS = ATTENTION_VIEW.names
VALUE_DTYPES = tuple(name for name in DTYPE.names if "float" in name)
"""Element types attention values may be returned in (the floating-point ones)."""
DEFAULT_ROLLOUT_RESIDUAL_WEIGHT = 0.5


@dataclass(frozen=True)
class ImageSpec:
    """An image input: an encoded file (PNG, JPEG, WebP), or raw pixels before
    processing, [channels, height, width] of `pixel_dtype` ("uint8" 0-255 or "float32"
    0-1) as little-endian bytes."""

    encoded: bytes | None = None
    pixel_shape: tuple[int, ...] = ()
    pixel_dtype: str = ""
    pixel_data: bytes = b""


@dataclass(frozen=True)
class InputSpec:
    """One requested input: text (with an optional pair), token ids or an image."""

    text: str | None = None
    text_pair: str | None = None
    token_ids: tuple[int, ...] | None = None
    image: ImageSpec | None = None

    @property
    def modality(self) -> str:
        """What the input is: "text" (text or token ids) or "image"; the model wrapper
        picks its processor by it."""
        return "image" if self.image is not None else "text"


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
    patch_grid: bool = False
    query_start: int = 0  # first query row, inclusive; negative counts from the end
    query_end: int = 0  # last query row, exclusive; negative counts from the end; 0 is the end


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


SALIENCY_METHODS = SALIENCY_METHOD.names
BASELINES = (DEFAULT, *BASELINE.names)
INTEGRATION_RULES = INTEGRATION_RULE.names


@dataclass(frozen=True)
class IntegratedGradientsSettings:
    """IntegratedGradientsOptions of a request (0 meaning "the default")."""

    baseline: str = DEFAULT
    baseline_token_ids: tuple[int, ...] = ()
    rule: str = DEFAULT  # Gauss-Legendre, or the trapezoid rule with a tolerance
    steps: int = 0
    batch_size: int = 0
    tolerance: float = 0.0
    blur_sigma: float = 0.0
    seed: int = 0


@dataclass(frozen=True)
class SmoothGradSettings:
    """SmoothGradOptions of a request (0 meaning "the default")."""

    noise_level: float = 0.0
    samples: int = 0
    seed: int = 0
    batch_size: int = 0


@dataclass(frozen=True)
class OcclusionSettings:
    """OcclusionOptions of a request (0 meaning "the default")."""

    span: int = 0
    stride: int = 0
    replacement: str = DEFAULT
    batch_size: int = 0


CAM_POINTS = CAM_POINT.names


@dataclass(frozen=True)
class CamSettings:
    """CamOptions of a request: the CAM layer (None: the last), where in it, and the
    other CAM methods to compute from the same pass."""

    layer: int | None = None
    point: str = "attention_input"
    also: tuple[str, ...] = ()


@dataclass(frozen=True)
class SaliencyQuery:
    """What StreamSaliency was asked for, before validation against the model.

    Each technique reads its own settings; numeric options keep the request's values (0
    meaning "the default"), and the technique resolves the defaults and rejects values
    out of range. `method` is None when the request leaves it unset.
    """

    model: str
    input: InputSpec
    target: TargetSpec | None
    method: str | None = None
    truncate: bool = False
    per_dimension: bool = False
    integrated_gradients: IntegratedGradientsSettings = field(default_factory=IntegratedGradientsSettings)
    smoothgrad: SmoothGradSettings = field(default_factory=SmoothGradSettings)
    occlusion: OcclusionSettings = field(default_factory=OcclusionSettings)
    cam: CamSettings = field(default_factory=CamSettings)
    upsample: bool = False


ABLATION_MODES = ABLATION_MODE.names
ABLATION_VALUES = ABLATION_VALUE.names


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


PATCHING_METHODS = PATCHING_METHOD.names
PATCH_DIRECTIONS = PATCH_DIRECTION.names
PATCH_POINTS = PATCH_POINT.names
PATCHING_METRICS = PATCHING_METRIC.names


@dataclass(frozen=True)
class InputPairSpec:
    """A clean input, its corrupted counterpart (None when not given) and an optional
    alignment: per clean position, the corrupted position (-1: none)."""

    clean: InputSpec
    corrupted: InputSpec | None = None
    alignment: tuple[int, ...] = ()


@dataclass(frozen=True)
class KnockoutSettings:
    """KnockoutOptions of a request (0 meaning "the default")."""

    query_positions: tuple[int, ...] = ()
    key_positions: tuple[int, ...] = ()
    window: int = 0


@dataclass(frozen=True)
class PatchingQuery:
    """What StreamPatching was asked for, before validation against the model."""

    model: str
    pairs: tuple[InputPairSpec, ...]
    target: TargetSpec | None
    method: str = "activation"
    metric: str = "target"
    points: tuple[str, ...] = ()
    direction: str = "denoising"
    layers: tuple[int, ...] = ()
    positions: tuple[int, ...] = ()
    with_exact: bool = False
    knockout: KnockoutSettings = field(default_factory=KnockoutSettings)
    batch_size: int = 0
