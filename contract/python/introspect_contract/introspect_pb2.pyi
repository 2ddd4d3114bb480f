from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Dtype(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DTYPE_UNSPECIFIED: _ClassVar[Dtype]
    DTYPE_FLOAT32: _ClassVar[Dtype]
    DTYPE_FLOAT16: _ClassVar[Dtype]
    DTYPE_BFLOAT16: _ClassVar[Dtype]
    DTYPE_INT32: _ClassVar[Dtype]
    DTYPE_UINT8: _ClassVar[Dtype]

class ModelKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MODEL_KIND_UNSPECIFIED: _ClassVar[ModelKind]
    MODEL_KIND_ENCODER: _ClassVar[ModelKind]
    MODEL_KIND_CAUSAL_LM: _ClassVar[ModelKind]
    MODEL_KIND_SEQUENCE_CLASSIFIER: _ClassVar[ModelKind]
    MODEL_KIND_IMAGE_CLASSIFIER: _ClassVar[ModelKind]
    MODEL_KIND_IMAGE_ENCODER: _ClassVar[ModelKind]
    MODEL_KIND_IMAGE_TEXT_DUAL_ENCODER: _ClassVar[ModelKind]

class Modality(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MODALITY_UNSPECIFIED: _ClassVar[Modality]
    MODALITY_TEXT: _ClassVar[Modality]
    MODALITY_IMAGE: _ClassVar[Modality]

class CachePolicy(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CACHE_POLICY_UNSPECIFIED: _ClassVar[CachePolicy]
    CACHE_POLICY_BYPASS: _ClassVar[CachePolicy]
    CACHE_POLICY_REFRESH: _ClassVar[CachePolicy]

class AttentionView(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ATTENTION_VIEW_UNSPECIFIED: _ClassVar[AttentionView]
    ATTENTION_VIEW_HEADS: _ClassVar[AttentionView]
    ATTENTION_VIEW_HEAD_MEAN: _ClassVar[AttentionView]
    ATTENTION_VIEW_HEAD_MAX: _ClassVar[AttentionView]
    ATTENTION_VIEW_ROLLOUT: _ClassVar[AttentionView]
    ATTENTION_VIEW_MEAN_DISTANCE: _ClassVar[AttentionView]

class SaliencyMethod(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SALIENCY_METHOD_UNSPECIFIED: _ClassVar[SaliencyMethod]
    SALIENCY_METHOD_GRADIENT: _ClassVar[SaliencyMethod]
    SALIENCY_METHOD_GRADIENT_X_INPUT: _ClassVar[SaliencyMethod]
    SALIENCY_METHOD_INTEGRATED_GRADIENTS: _ClassVar[SaliencyMethod]
    SALIENCY_METHOD_SMOOTHGRAD: _ClassVar[SaliencyMethod]
    SALIENCY_METHOD_OCCLUSION: _ClassVar[SaliencyMethod]
    SALIENCY_METHOD_ATTENTION_ROLLOUT: _ClassVar[SaliencyMethod]
    SALIENCY_METHOD_ATTENTION_FLOW: _ClassVar[SaliencyMethod]
    SALIENCY_METHOD_GRAD_CAM: _ClassVar[SaliencyMethod]
    SALIENCY_METHOD_HI_RES_CAM: _ClassVar[SaliencyMethod]
    SALIENCY_METHOD_XGRAD_CAM: _ClassVar[SaliencyMethod]
    SALIENCY_METHOD_LAYER_CAM: _ClassVar[SaliencyMethod]

class Baseline(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    BASELINE_UNSPECIFIED: _ClassVar[Baseline]
    BASELINE_PAD: _ClassVar[Baseline]
    BASELINE_ZERO: _ClassVar[Baseline]
    BASELINE_MASK: _ClassVar[Baseline]
    BASELINE_TOKENS: _ClassVar[Baseline]
    BASELINE_BLACK: _ClassVar[Baseline]
    BASELINE_BLUR: _ClassVar[Baseline]
    BASELINE_NOISE: _ClassVar[Baseline]

class IntegrationRule(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    INTEGRATION_RULE_UNSPECIFIED: _ClassVar[IntegrationRule]
    INTEGRATION_RULE_GAUSS_LEGENDRE: _ClassVar[IntegrationRule]
    INTEGRATION_RULE_RIEMANN_LEFT: _ClassVar[IntegrationRule]
    INTEGRATION_RULE_RIEMANN_RIGHT: _ClassVar[IntegrationRule]
    INTEGRATION_RULE_RIEMANN_MIDDLE: _ClassVar[IntegrationRule]
    INTEGRATION_RULE_RIEMANN_TRAPEZOID: _ClassVar[IntegrationRule]

class CamPoint(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CAM_POINT_UNSPECIFIED: _ClassVar[CamPoint]
    CAM_POINT_ATTENTION_INPUT: _ClassVar[CamPoint]
    CAM_POINT_BLOCK_INPUT: _ClassVar[CamPoint]
    CAM_POINT_BLOCK_OUTPUT: _ClassVar[CamPoint]

class AblationMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ABLATION_MODE_UNSPECIFIED: _ClassVar[AblationMode]
    ABLATION_MODE_PER_HEAD: _ClassVar[AblationMode]
    ABLATION_MODE_JOINT: _ClassVar[AblationMode]
    ABLATION_MODE_IMPORTANCE: _ClassVar[AblationMode]

class AblationValue(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ABLATION_VALUE_UNSPECIFIED: _ClassVar[AblationValue]
    ABLATION_VALUE_ZERO: _ClassVar[AblationValue]
    ABLATION_VALUE_MEAN: _ClassVar[AblationValue]

class PatchingMethod(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PATCHING_METHOD_UNSPECIFIED: _ClassVar[PatchingMethod]
    PATCHING_METHOD_ACTIVATION: _ClassVar[PatchingMethod]
    PATCHING_METHOD_ATTRIBUTION: _ClassVar[PatchingMethod]
    PATCHING_METHOD_DIRECT_LOGIT_ATTRIBUTION: _ClassVar[PatchingMethod]
    PATCHING_METHOD_ATTENTION_KNOCKOUT: _ClassVar[PatchingMethod]

class PatchDirection(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PATCH_DIRECTION_UNSPECIFIED: _ClassVar[PatchDirection]
    PATCH_DIRECTION_DENOISING: _ClassVar[PatchDirection]
    PATCH_DIRECTION_NOISING: _ClassVar[PatchDirection]

class PatchPoint(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PATCH_POINT_UNSPECIFIED: _ClassVar[PatchPoint]
    PATCH_POINT_RESID_PRE: _ClassVar[PatchPoint]
    PATCH_POINT_RESID_POST: _ClassVar[PatchPoint]
    PATCH_POINT_ATTN_OUT: _ClassVar[PatchPoint]
    PATCH_POINT_MLP_OUT: _ClassVar[PatchPoint]
    PATCH_POINT_HEAD: _ClassVar[PatchPoint]
    PATCH_POINT_HEAD_POSITION: _ClassVar[PatchPoint]

class PatchingMetric(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PATCHING_METRIC_UNSPECIFIED: _ClassVar[PatchingMetric]
    PATCHING_METRIC_TARGET: _ClassVar[PatchingMetric]
    PATCHING_METRIC_KL_DIVERGENCE: _ClassVar[PatchingMetric]

class ProjectionMethod(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PROJECTION_METHOD_UNSPECIFIED: _ClassVar[ProjectionMethod]
    PROJECTION_METHOD_PCA: _ClassVar[ProjectionMethod]
    PROJECTION_METHOD_UMAP: _ClassVar[ProjectionMethod]
    PROJECTION_METHOD_TSNE: _ClassVar[ProjectionMethod]

class HeadStatistic(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    HEAD_STATISTIC_UNSPECIFIED: _ClassVar[HeadStatistic]
    HEAD_STATISTIC_ENTROPY: _ClassVar[HeadStatistic]
    HEAD_STATISTIC_FIRST_TOKEN: _ClassVar[HeadStatistic]
    HEAD_STATISTIC_SPECIAL_TOKENS: _ClassVar[HeadStatistic]
    HEAD_STATISTIC_DELIMITERS: _ClassVar[HeadStatistic]
    HEAD_STATISTIC_MEAN_DISTANCE: _ClassVar[HeadStatistic]
    HEAD_STATISTIC_PREVIOUS_TOKEN: _ClassVar[HeadStatistic]
    HEAD_STATISTIC_SAME_TOKEN: _ClassVar[HeadStatistic]
    HEAD_STATISTIC_HIDDEN_NORM: _ClassVar[HeadStatistic]
    HEAD_STATISTIC_INDUCTION: _ClassVar[HeadStatistic]
    HEAD_STATISTIC_RETRIEVAL: _ClassVar[HeadStatistic]
DTYPE_UNSPECIFIED: Dtype
DTYPE_FLOAT32: Dtype
DTYPE_FLOAT16: Dtype
DTYPE_BFLOAT16: Dtype
DTYPE_INT32: Dtype
DTYPE_UINT8: Dtype
MODEL_KIND_UNSPECIFIED: ModelKind
MODEL_KIND_ENCODER: ModelKind
MODEL_KIND_CAUSAL_LM: ModelKind
MODEL_KIND_SEQUENCE_CLASSIFIER: ModelKind
MODEL_KIND_IMAGE_CLASSIFIER: ModelKind
MODEL_KIND_IMAGE_ENCODER: ModelKind
MODEL_KIND_IMAGE_TEXT_DUAL_ENCODER: ModelKind
MODALITY_UNSPECIFIED: Modality
MODALITY_TEXT: Modality
MODALITY_IMAGE: Modality
CACHE_POLICY_UNSPECIFIED: CachePolicy
CACHE_POLICY_BYPASS: CachePolicy
CACHE_POLICY_REFRESH: CachePolicy
ATTENTION_VIEW_UNSPECIFIED: AttentionView
ATTENTION_VIEW_HEADS: AttentionView
ATTENTION_VIEW_HEAD_MEAN: AttentionView
ATTENTION_VIEW_HEAD_MAX: AttentionView
ATTENTION_VIEW_ROLLOUT: AttentionView
ATTENTION_VIEW_MEAN_DISTANCE: AttentionView
SALIENCY_METHOD_UNSPECIFIED: SaliencyMethod
SALIENCY_METHOD_GRADIENT: SaliencyMethod
SALIENCY_METHOD_GRADIENT_X_INPUT: SaliencyMethod
SALIENCY_METHOD_INTEGRATED_GRADIENTS: SaliencyMethod
SALIENCY_METHOD_SMOOTHGRAD: SaliencyMethod
SALIENCY_METHOD_OCCLUSION: SaliencyMethod
SALIENCY_METHOD_ATTENTION_ROLLOUT: SaliencyMethod
SALIENCY_METHOD_ATTENTION_FLOW: SaliencyMethod
SALIENCY_METHOD_GRAD_CAM: SaliencyMethod
SALIENCY_METHOD_HI_RES_CAM: SaliencyMethod
SALIENCY_METHOD_XGRAD_CAM: SaliencyMethod
SALIENCY_METHOD_LAYER_CAM: SaliencyMethod
BASELINE_UNSPECIFIED: Baseline
BASELINE_PAD: Baseline
BASELINE_ZERO: Baseline
BASELINE_MASK: Baseline
BASELINE_TOKENS: Baseline
BASELINE_BLACK: Baseline
BASELINE_BLUR: Baseline
BASELINE_NOISE: Baseline
INTEGRATION_RULE_UNSPECIFIED: IntegrationRule
INTEGRATION_RULE_GAUSS_LEGENDRE: IntegrationRule
INTEGRATION_RULE_RIEMANN_LEFT: IntegrationRule
INTEGRATION_RULE_RIEMANN_RIGHT: IntegrationRule
INTEGRATION_RULE_RIEMANN_MIDDLE: IntegrationRule
INTEGRATION_RULE_RIEMANN_TRAPEZOID: IntegrationRule
CAM_POINT_UNSPECIFIED: CamPoint
CAM_POINT_ATTENTION_INPUT: CamPoint
CAM_POINT_BLOCK_INPUT: CamPoint
CAM_POINT_BLOCK_OUTPUT: CamPoint
ABLATION_MODE_UNSPECIFIED: AblationMode
ABLATION_MODE_PER_HEAD: AblationMode
ABLATION_MODE_JOINT: AblationMode
ABLATION_MODE_IMPORTANCE: AblationMode
ABLATION_VALUE_UNSPECIFIED: AblationValue
ABLATION_VALUE_ZERO: AblationValue
ABLATION_VALUE_MEAN: AblationValue
PATCHING_METHOD_UNSPECIFIED: PatchingMethod
PATCHING_METHOD_ACTIVATION: PatchingMethod
PATCHING_METHOD_ATTRIBUTION: PatchingMethod
PATCHING_METHOD_DIRECT_LOGIT_ATTRIBUTION: PatchingMethod
PATCHING_METHOD_ATTENTION_KNOCKOUT: PatchingMethod
PATCH_DIRECTION_UNSPECIFIED: PatchDirection
PATCH_DIRECTION_DENOISING: PatchDirection
PATCH_DIRECTION_NOISING: PatchDirection
PATCH_POINT_UNSPECIFIED: PatchPoint
PATCH_POINT_RESID_PRE: PatchPoint
PATCH_POINT_RESID_POST: PatchPoint
PATCH_POINT_ATTN_OUT: PatchPoint
PATCH_POINT_MLP_OUT: PatchPoint
PATCH_POINT_HEAD: PatchPoint
PATCH_POINT_HEAD_POSITION: PatchPoint
PATCHING_METRIC_UNSPECIFIED: PatchingMetric
PATCHING_METRIC_TARGET: PatchingMetric
PATCHING_METRIC_KL_DIVERGENCE: PatchingMetric
PROJECTION_METHOD_UNSPECIFIED: ProjectionMethod
PROJECTION_METHOD_PCA: ProjectionMethod
PROJECTION_METHOD_UMAP: ProjectionMethod
PROJECTION_METHOD_TSNE: ProjectionMethod
HEAD_STATISTIC_UNSPECIFIED: HeadStatistic
HEAD_STATISTIC_ENTROPY: HeadStatistic
HEAD_STATISTIC_FIRST_TOKEN: HeadStatistic
HEAD_STATISTIC_SPECIAL_TOKENS: HeadStatistic
HEAD_STATISTIC_DELIMITERS: HeadStatistic
HEAD_STATISTIC_MEAN_DISTANCE: HeadStatistic
HEAD_STATISTIC_PREVIOUS_TOKEN: HeadStatistic
HEAD_STATISTIC_SAME_TOKEN: HeadStatistic
HEAD_STATISTIC_HIDDEN_NORM: HeadStatistic
HEAD_STATISTIC_INDUCTION: HeadStatistic
HEAD_STATISTIC_RETRIEVAL: HeadStatistic

class Tensor(_message.Message):
    __slots__ = ("shape", "dtype", "data")
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    shape: _containers.RepeatedScalarFieldContainer[int]
    dtype: Dtype
    data: bytes
    def __init__(self, shape: _Optional[_Iterable[int]] = ..., dtype: _Optional[_Union[Dtype, str]] = ..., data: _Optional[bytes] = ...) -> None: ...

class ListModelsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetServerInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetServerInfoResponse(_message.Message):
    __slots__ = ("server_version", "contract_version")
    SERVER_VERSION_FIELD_NUMBER: _ClassVar[int]
    CONTRACT_VERSION_FIELD_NUMBER: _ClassVar[int]
    server_version: str
    contract_version: str
    def __init__(self, server_version: _Optional[str] = ..., contract_version: _Optional[str] = ...) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("models",)
    MODELS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[ModelInfo]
    def __init__(self, models: _Optional[_Iterable[_Union[ModelInfo, _Mapping]]] = ...) -> None: ...

class GetModelRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class GetModelResponse(_message.Message):
    __slots__ = ("model",)
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: ModelInfo
    def __init__(self, model: _Optional[_Union[ModelInfo, _Mapping]] = ...) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("name", "architecture", "model_type", "num_layers", "num_heads", "num_key_value_heads", "max_tokens", "dtype", "device", "fingerprint", "kind", "hidden_size", "vocab_size", "num_labels", "supported_targets", "modalities")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ARCHITECTURE_FIELD_NUMBER: _ClassVar[int]
    MODEL_TYPE_FIELD_NUMBER: _ClassVar[int]
    NUM_LAYERS_FIELD_NUMBER: _ClassVar[int]
    NUM_HEADS_FIELD_NUMBER: _ClassVar[int]
    NUM_KEY_VALUE_HEADS_FIELD_NUMBER: _ClassVar[int]
    MAX_TOKENS_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    HIDDEN_SIZE_FIELD_NUMBER: _ClassVar[int]
    VOCAB_SIZE_FIELD_NUMBER: _ClassVar[int]
    NUM_LABELS_FIELD_NUMBER: _ClassVar[int]
    SUPPORTED_TARGETS_FIELD_NUMBER: _ClassVar[int]
    MODALITIES_FIELD_NUMBER: _ClassVar[int]
    name: str
    architecture: str
    model_type: str
    num_layers: int
    num_heads: int
    num_key_value_heads: int
    max_tokens: int
    dtype: str
    device: str
    fingerprint: str
    kind: ModelKind
    hidden_size: int
    vocab_size: int
    num_labels: int
    supported_targets: _containers.RepeatedScalarFieldContainer[str]
    modalities: _containers.RepeatedScalarFieldContainer[Modality]
    def __init__(self, name: _Optional[str] = ..., architecture: _Optional[str] = ..., model_type: _Optional[str] = ..., num_layers: _Optional[int] = ..., num_heads: _Optional[int] = ..., num_key_value_heads: _Optional[int] = ..., max_tokens: _Optional[int] = ..., dtype: _Optional[str] = ..., device: _Optional[str] = ..., fingerprint: _Optional[str] = ..., kind: _Optional[_Union[ModelKind, str]] = ..., hidden_size: _Optional[int] = ..., vocab_size: _Optional[int] = ..., num_labels: _Optional[int] = ..., supported_targets: _Optional[_Iterable[str]] = ..., modalities: _Optional[_Iterable[_Union[Modality, str]]] = ...) -> None: ...

class TextInput(_message.Message):
    __slots__ = ("text", "text_pair")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    TEXT_PAIR_FIELD_NUMBER: _ClassVar[int]
    text: str
    text_pair: str
    def __init__(self, text: _Optional[str] = ..., text_pair: _Optional[str] = ...) -> None: ...

class TokenIds(_message.Message):
    __slots__ = ("ids",)
    IDS_FIELD_NUMBER: _ClassVar[int]
    ids: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, ids: _Optional[_Iterable[int]] = ...) -> None: ...

class ImageInput(_message.Message):
    __slots__ = ("encoded", "pixels")
    ENCODED_FIELD_NUMBER: _ClassVar[int]
    PIXELS_FIELD_NUMBER: _ClassVar[int]
    encoded: bytes
    pixels: Tensor
    def __init__(self, encoded: _Optional[bytes] = ..., pixels: _Optional[_Union[Tensor, _Mapping]] = ...) -> None: ...

class Input(_message.Message):
    __slots__ = ("text", "token_ids", "image")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    text: TextInput
    token_ids: TokenIds
    image: ImageInput
    def __init__(self, text: _Optional[_Union[TextInput, _Mapping]] = ..., token_ids: _Optional[_Union[TokenIds, _Mapping]] = ..., image: _Optional[_Union[ImageInput, _Mapping]] = ...) -> None: ...

class TokenizedInput(_message.Message):
    __slots__ = ("input_index", "token_ids", "tokens", "truncated", "original_length", "image")
    INPUT_INDEX_FIELD_NUMBER: _ClassVar[int]
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    ORIGINAL_LENGTH_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    input_index: int
    token_ids: _containers.RepeatedScalarFieldContainer[int]
    tokens: _containers.RepeatedScalarFieldContainer[str]
    truncated: bool
    original_length: int
    image: ImageLayout
    def __init__(self, input_index: _Optional[int] = ..., token_ids: _Optional[_Iterable[int]] = ..., tokens: _Optional[_Iterable[str]] = ..., truncated: _Optional[bool] = ..., original_length: _Optional[int] = ..., image: _Optional[_Union[ImageLayout, _Mapping]] = ...) -> None: ...

class ImageLayout(_message.Message):
    __slots__ = ("height", "width", "patch_height", "patch_width", "grid_rows", "grid_columns", "special_tokens", "first_patch", "original_height", "original_width")
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    PATCH_HEIGHT_FIELD_NUMBER: _ClassVar[int]
    PATCH_WIDTH_FIELD_NUMBER: _ClassVar[int]
    GRID_ROWS_FIELD_NUMBER: _ClassVar[int]
    GRID_COLUMNS_FIELD_NUMBER: _ClassVar[int]
    SPECIAL_TOKENS_FIELD_NUMBER: _ClassVar[int]
    FIRST_PATCH_FIELD_NUMBER: _ClassVar[int]
    ORIGINAL_HEIGHT_FIELD_NUMBER: _ClassVar[int]
    ORIGINAL_WIDTH_FIELD_NUMBER: _ClassVar[int]
    height: int
    width: int
    patch_height: int
    patch_width: int
    grid_rows: int
    grid_columns: int
    special_tokens: _containers.RepeatedScalarFieldContainer[str]
    first_patch: int
    original_height: int
    original_width: int
    def __init__(self, height: _Optional[int] = ..., width: _Optional[int] = ..., patch_height: _Optional[int] = ..., patch_width: _Optional[int] = ..., grid_rows: _Optional[int] = ..., grid_columns: _Optional[int] = ..., special_tokens: _Optional[_Iterable[str]] = ..., first_patch: _Optional[int] = ..., original_height: _Optional[int] = ..., original_width: _Optional[int] = ...) -> None: ...

class StreamHeader(_message.Message):
    __slots__ = ("model", "fingerprint", "inputs", "cached")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    CACHED_FIELD_NUMBER: _ClassVar[int]
    model: str
    fingerprint: str
    inputs: _containers.RepeatedCompositeFieldContainer[TokenizedInput]
    cached: bool
    def __init__(self, model: _Optional[str] = ..., fingerprint: _Optional[str] = ..., inputs: _Optional[_Iterable[_Union[TokenizedInput, _Mapping]]] = ..., cached: _Optional[bool] = ...) -> None: ...

class StreamAttentionRequest(_message.Message):
    __slots__ = ("model", "inputs", "truncate", "layers", "heads", "view", "top_k", "dtype", "rollout_residual_weight", "cache", "patch_grid", "query_start", "query_end")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    TRUNCATE_FIELD_NUMBER: _ClassVar[int]
    LAYERS_FIELD_NUMBER: _ClassVar[int]
    HEADS_FIELD_NUMBER: _ClassVar[int]
    VIEW_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    ROLLOUT_RESIDUAL_WEIGHT_FIELD_NUMBER: _ClassVar[int]
    CACHE_FIELD_NUMBER: _ClassVar[int]
    PATCH_GRID_FIELD_NUMBER: _ClassVar[int]
    QUERY_START_FIELD_NUMBER: _ClassVar[int]
    QUERY_END_FIELD_NUMBER: _ClassVar[int]
    model: str
    inputs: _containers.RepeatedCompositeFieldContainer[Input]
    truncate: bool
    layers: _containers.RepeatedScalarFieldContainer[int]
    heads: _containers.RepeatedScalarFieldContainer[int]
    view: AttentionView
    top_k: int
    dtype: Dtype
    rollout_residual_weight: float
    cache: CachePolicy
    patch_grid: bool
    query_start: int
    query_end: int
    def __init__(self, model: _Optional[str] = ..., inputs: _Optional[_Iterable[_Union[Input, _Mapping]]] = ..., truncate: _Optional[bool] = ..., layers: _Optional[_Iterable[int]] = ..., heads: _Optional[_Iterable[int]] = ..., view: _Optional[_Union[AttentionView, str]] = ..., top_k: _Optional[int] = ..., dtype: _Optional[_Union[Dtype, str]] = ..., rollout_residual_weight: _Optional[float] = ..., cache: _Optional[_Union[CachePolicy, str]] = ..., patch_grid: _Optional[bool] = ..., query_start: _Optional[int] = ..., query_end: _Optional[int] = ...) -> None: ...

class AttentionChunk(_message.Message):
    __slots__ = ("input_index", "layer", "heads", "query_start", "query_end", "view", "values", "key_indices", "layer_complete", "grid_rows", "grid_columns")
    INPUT_INDEX_FIELD_NUMBER: _ClassVar[int]
    LAYER_FIELD_NUMBER: _ClassVar[int]
    HEADS_FIELD_NUMBER: _ClassVar[int]
    QUERY_START_FIELD_NUMBER: _ClassVar[int]
    QUERY_END_FIELD_NUMBER: _ClassVar[int]
    VIEW_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    KEY_INDICES_FIELD_NUMBER: _ClassVar[int]
    LAYER_COMPLETE_FIELD_NUMBER: _ClassVar[int]
    GRID_ROWS_FIELD_NUMBER: _ClassVar[int]
    GRID_COLUMNS_FIELD_NUMBER: _ClassVar[int]
    input_index: int
    layer: int
    heads: _containers.RepeatedScalarFieldContainer[int]
    query_start: int
    query_end: int
    view: AttentionView
    values: Tensor
    key_indices: Tensor
    layer_complete: bool
    grid_rows: int
    grid_columns: int
    def __init__(self, input_index: _Optional[int] = ..., layer: _Optional[int] = ..., heads: _Optional[_Iterable[int]] = ..., query_start: _Optional[int] = ..., query_end: _Optional[int] = ..., view: _Optional[_Union[AttentionView, str]] = ..., values: _Optional[_Union[Tensor, _Mapping]] = ..., key_indices: _Optional[_Union[Tensor, _Mapping]] = ..., layer_complete: _Optional[bool] = ..., grid_rows: _Optional[int] = ..., grid_columns: _Optional[int] = ...) -> None: ...

class StreamAttentionResponse(_message.Message):
    __slots__ = ("header", "chunk")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    header: StreamHeader
    chunk: AttentionChunk
    def __init__(self, header: _Optional[_Union[StreamHeader, _Mapping]] = ..., chunk: _Optional[_Union[AttentionChunk, _Mapping]] = ...) -> None: ...

class NextTokenTarget(_message.Message):
    __slots__ = ("position", "token_id")
    POSITION_FIELD_NUMBER: _ClassVar[int]
    TOKEN_ID_FIELD_NUMBER: _ClassVar[int]
    position: int
    token_id: int
    def __init__(self, position: _Optional[int] = ..., token_id: _Optional[int] = ...) -> None: ...

class LogitDifferenceTarget(_message.Message):
    __slots__ = ("position", "token_id", "contrast_token_id")
    POSITION_FIELD_NUMBER: _ClassVar[int]
    TOKEN_ID_FIELD_NUMBER: _ClassVar[int]
    CONTRAST_TOKEN_ID_FIELD_NUMBER: _ClassVar[int]
    position: int
    token_id: int
    contrast_token_id: int
    def __init__(self, position: _Optional[int] = ..., token_id: _Optional[int] = ..., contrast_token_id: _Optional[int] = ...) -> None: ...

class ClassTarget(_message.Message):
    __slots__ = ("class_index", "probability")
    CLASS_INDEX_FIELD_NUMBER: _ClassVar[int]
    PROBABILITY_FIELD_NUMBER: _ClassVar[int]
    class_index: int
    probability: bool
    def __init__(self, class_index: _Optional[int] = ..., probability: _Optional[bool] = ...) -> None: ...

class EmbeddingSimilarityTarget(_message.Message):
    __slots__ = ("reference",)
    REFERENCE_FIELD_NUMBER: _ClassVar[int]
    reference: Input
    def __init__(self, reference: _Optional[_Union[Input, _Mapping]] = ...) -> None: ...

class EmbeddingNormTarget(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Target(_message.Message):
    __slots__ = ("next_token", "logit_difference", "class_score", "embedding_similarity", "embedding_norm")
    NEXT_TOKEN_FIELD_NUMBER: _ClassVar[int]
    LOGIT_DIFFERENCE_FIELD_NUMBER: _ClassVar[int]
    CLASS_SCORE_FIELD_NUMBER: _ClassVar[int]
    EMBEDDING_SIMILARITY_FIELD_NUMBER: _ClassVar[int]
    EMBEDDING_NORM_FIELD_NUMBER: _ClassVar[int]
    next_token: NextTokenTarget
    logit_difference: LogitDifferenceTarget
    class_score: ClassTarget
    embedding_similarity: EmbeddingSimilarityTarget
    embedding_norm: EmbeddingNormTarget
    def __init__(self, next_token: _Optional[_Union[NextTokenTarget, _Mapping]] = ..., logit_difference: _Optional[_Union[LogitDifferenceTarget, _Mapping]] = ..., class_score: _Optional[_Union[ClassTarget, _Mapping]] = ..., embedding_similarity: _Optional[_Union[EmbeddingSimilarityTarget, _Mapping]] = ..., embedding_norm: _Optional[_Union[EmbeddingNormTarget, _Mapping]] = ...) -> None: ...

class IntegratedGradientsOptions(_message.Message):
    __slots__ = ("baseline", "baseline_token_ids", "rule", "steps", "batch_size", "tolerance", "blur_sigma", "seed")
    BASELINE_FIELD_NUMBER: _ClassVar[int]
    BASELINE_TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    RULE_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    TOLERANCE_FIELD_NUMBER: _ClassVar[int]
    BLUR_SIGMA_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    baseline: Baseline
    baseline_token_ids: _containers.RepeatedScalarFieldContainer[int]
    rule: IntegrationRule
    steps: int
    batch_size: int
    tolerance: float
    blur_sigma: float
    seed: int
    def __init__(self, baseline: _Optional[_Union[Baseline, str]] = ..., baseline_token_ids: _Optional[_Iterable[int]] = ..., rule: _Optional[_Union[IntegrationRule, str]] = ..., steps: _Optional[int] = ..., batch_size: _Optional[int] = ..., tolerance: _Optional[float] = ..., blur_sigma: _Optional[float] = ..., seed: _Optional[int] = ...) -> None: ...

class SmoothGradOptions(_message.Message):
    __slots__ = ("noise_level", "samples", "seed", "batch_size")
    NOISE_LEVEL_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    noise_level: float
    samples: int
    seed: int
    batch_size: int
    def __init__(self, noise_level: _Optional[float] = ..., samples: _Optional[int] = ..., seed: _Optional[int] = ..., batch_size: _Optional[int] = ...) -> None: ...

class OcclusionOptions(_message.Message):
    __slots__ = ("span", "stride", "replacement", "batch_size")
    SPAN_FIELD_NUMBER: _ClassVar[int]
    STRIDE_FIELD_NUMBER: _ClassVar[int]
    REPLACEMENT_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    span: int
    stride: int
    replacement: Baseline
    batch_size: int
    def __init__(self, span: _Optional[int] = ..., stride: _Optional[int] = ..., replacement: _Optional[_Union[Baseline, str]] = ..., batch_size: _Optional[int] = ...) -> None: ...

class StreamSaliencyRequest(_message.Message):
    __slots__ = ("model", "input", "truncate", "target", "method", "integrated_gradients", "smoothgrad", "occlusion", "per_dimension", "cache", "cam", "upsample")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    INPUT_FIELD_NUMBER: _ClassVar[int]
    TRUNCATE_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    INTEGRATED_GRADIENTS_FIELD_NUMBER: _ClassVar[int]
    SMOOTHGRAD_FIELD_NUMBER: _ClassVar[int]
    OCCLUSION_FIELD_NUMBER: _ClassVar[int]
    PER_DIMENSION_FIELD_NUMBER: _ClassVar[int]
    CACHE_FIELD_NUMBER: _ClassVar[int]
    CAM_FIELD_NUMBER: _ClassVar[int]
    UPSAMPLE_FIELD_NUMBER: _ClassVar[int]
    model: str
    input: Input
    truncate: bool
    target: Target
    method: SaliencyMethod
    integrated_gradients: IntegratedGradientsOptions
    smoothgrad: SmoothGradOptions
    occlusion: OcclusionOptions
    per_dimension: bool
    cache: CachePolicy
    cam: CamOptions
    upsample: bool
    def __init__(self, model: _Optional[str] = ..., input: _Optional[_Union[Input, _Mapping]] = ..., truncate: _Optional[bool] = ..., target: _Optional[_Union[Target, _Mapping]] = ..., method: _Optional[_Union[SaliencyMethod, str]] = ..., integrated_gradients: _Optional[_Union[IntegratedGradientsOptions, _Mapping]] = ..., smoothgrad: _Optional[_Union[SmoothGradOptions, _Mapping]] = ..., occlusion: _Optional[_Union[OcclusionOptions, _Mapping]] = ..., per_dimension: _Optional[bool] = ..., cache: _Optional[_Union[CachePolicy, str]] = ..., cam: _Optional[_Union[CamOptions, _Mapping]] = ..., upsample: _Optional[bool] = ...) -> None: ...

class CamOptions(_message.Message):
    __slots__ = ("layer", "point", "also")
    LAYER_FIELD_NUMBER: _ClassVar[int]
    POINT_FIELD_NUMBER: _ClassVar[int]
    ALSO_FIELD_NUMBER: _ClassVar[int]
    layer: int
    point: CamPoint
    also: _containers.RepeatedScalarFieldContainer[SaliencyMethod]
    def __init__(self, layer: _Optional[int] = ..., point: _Optional[_Union[CamPoint, str]] = ..., also: _Optional[_Iterable[_Union[SaliencyMethod, str]]] = ...) -> None: ...

class SaliencyChunk(_message.Message):
    __slots__ = ("scores", "per_dimension", "target_score", "baseline_score", "steps", "convergence_delta", "final", "token_start", "token_end", "batch_size", "converged", "method", "grid_scores", "pixel_scores", "upsampled_scores")
    SCORES_FIELD_NUMBER: _ClassVar[int]
    PER_DIMENSION_FIELD_NUMBER: _ClassVar[int]
    TARGET_SCORE_FIELD_NUMBER: _ClassVar[int]
    BASELINE_SCORE_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    CONVERGENCE_DELTA_FIELD_NUMBER: _ClassVar[int]
    FINAL_FIELD_NUMBER: _ClassVar[int]
    TOKEN_START_FIELD_NUMBER: _ClassVar[int]
    TOKEN_END_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    CONVERGED_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    GRID_SCORES_FIELD_NUMBER: _ClassVar[int]
    PIXEL_SCORES_FIELD_NUMBER: _ClassVar[int]
    UPSAMPLED_SCORES_FIELD_NUMBER: _ClassVar[int]
    scores: Tensor
    per_dimension: Tensor
    target_score: float
    baseline_score: float
    steps: int
    convergence_delta: float
    final: bool
    token_start: int
    token_end: int
    batch_size: int
    converged: bool
    method: SaliencyMethod
    grid_scores: Tensor
    pixel_scores: Tensor
    upsampled_scores: Tensor
    def __init__(self, scores: _Optional[_Union[Tensor, _Mapping]] = ..., per_dimension: _Optional[_Union[Tensor, _Mapping]] = ..., target_score: _Optional[float] = ..., baseline_score: _Optional[float] = ..., steps: _Optional[int] = ..., convergence_delta: _Optional[float] = ..., final: _Optional[bool] = ..., token_start: _Optional[int] = ..., token_end: _Optional[int] = ..., batch_size: _Optional[int] = ..., converged: _Optional[bool] = ..., method: _Optional[_Union[SaliencyMethod, str]] = ..., grid_scores: _Optional[_Union[Tensor, _Mapping]] = ..., pixel_scores: _Optional[_Union[Tensor, _Mapping]] = ..., upsampled_scores: _Optional[_Union[Tensor, _Mapping]] = ...) -> None: ...

class StreamSaliencyResponse(_message.Message):
    __slots__ = ("header", "chunk")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    header: StreamHeader
    chunk: SaliencyChunk
    def __init__(self, header: _Optional[_Union[StreamHeader, _Mapping]] = ..., chunk: _Optional[_Union[SaliencyChunk, _Mapping]] = ...) -> None: ...

class HeadRef(_message.Message):
    __slots__ = ("layer", "head")
    LAYER_FIELD_NUMBER: _ClassVar[int]
    HEAD_FIELD_NUMBER: _ClassVar[int]
    layer: int
    head: int
    def __init__(self, layer: _Optional[int] = ..., head: _Optional[int] = ...) -> None: ...

class StreamHeadAblationRequest(_message.Message):
    __slots__ = ("model", "input", "truncate", "target", "mode", "value", "heads", "mean_references", "continuation_tokens", "batch_size", "cache")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    INPUT_FIELD_NUMBER: _ClassVar[int]
    TRUNCATE_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    HEADS_FIELD_NUMBER: _ClassVar[int]
    MEAN_REFERENCES_FIELD_NUMBER: _ClassVar[int]
    CONTINUATION_TOKENS_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    CACHE_FIELD_NUMBER: _ClassVar[int]
    model: str
    input: Input
    truncate: bool
    target: Target
    mode: AblationMode
    value: AblationValue
    heads: _containers.RepeatedCompositeFieldContainer[HeadRef]
    mean_references: _containers.RepeatedCompositeFieldContainer[Input]
    continuation_tokens: int
    batch_size: int
    cache: CachePolicy
    def __init__(self, model: _Optional[str] = ..., input: _Optional[_Union[Input, _Mapping]] = ..., truncate: _Optional[bool] = ..., target: _Optional[_Union[Target, _Mapping]] = ..., mode: _Optional[_Union[AblationMode, str]] = ..., value: _Optional[_Union[AblationValue, str]] = ..., heads: _Optional[_Iterable[_Union[HeadRef, _Mapping]]] = ..., mean_references: _Optional[_Iterable[_Union[Input, _Mapping]]] = ..., continuation_tokens: _Optional[int] = ..., batch_size: _Optional[int] = ..., cache: _Optional[_Union[CachePolicy, str]] = ...) -> None: ...

class LayerAblation(_message.Message):
    __slots__ = ("layer", "heads", "target_delta", "output_change")
    LAYER_FIELD_NUMBER: _ClassVar[int]
    HEADS_FIELD_NUMBER: _ClassVar[int]
    TARGET_DELTA_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_CHANGE_FIELD_NUMBER: _ClassVar[int]
    layer: int
    heads: _containers.RepeatedScalarFieldContainer[int]
    target_delta: Tensor
    output_change: Tensor
    def __init__(self, layer: _Optional[int] = ..., heads: _Optional[_Iterable[int]] = ..., target_delta: _Optional[_Union[Tensor, _Mapping]] = ..., output_change: _Optional[_Union[Tensor, _Mapping]] = ...) -> None: ...

class JointAblation(_message.Message):
    __slots__ = ("heads", "ablated_score", "output_change", "base_continuation", "ablated_continuation", "base_continuation_tokens", "ablated_continuation_tokens")
    HEADS_FIELD_NUMBER: _ClassVar[int]
    ABLATED_SCORE_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_CHANGE_FIELD_NUMBER: _ClassVar[int]
    BASE_CONTINUATION_FIELD_NUMBER: _ClassVar[int]
    ABLATED_CONTINUATION_FIELD_NUMBER: _ClassVar[int]
    BASE_CONTINUATION_TOKENS_FIELD_NUMBER: _ClassVar[int]
    ABLATED_CONTINUATION_TOKENS_FIELD_NUMBER: _ClassVar[int]
    heads: _containers.RepeatedCompositeFieldContainer[HeadRef]
    ablated_score: float
    output_change: float
    base_continuation: _containers.RepeatedScalarFieldContainer[int]
    ablated_continuation: _containers.RepeatedScalarFieldContainer[int]
    base_continuation_tokens: _containers.RepeatedScalarFieldContainer[str]
    ablated_continuation_tokens: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, heads: _Optional[_Iterable[_Union[HeadRef, _Mapping]]] = ..., ablated_score: _Optional[float] = ..., output_change: _Optional[float] = ..., base_continuation: _Optional[_Iterable[int]] = ..., ablated_continuation: _Optional[_Iterable[int]] = ..., base_continuation_tokens: _Optional[_Iterable[str]] = ..., ablated_continuation_tokens: _Optional[_Iterable[str]] = ...) -> None: ...

class HeadImportance(_message.Message):
    __slots__ = ("importance",)
    IMPORTANCE_FIELD_NUMBER: _ClassVar[int]
    importance: Tensor
    def __init__(self, importance: _Optional[_Union[Tensor, _Mapping]] = ...) -> None: ...

class AblationBaseline(_message.Message):
    __slots__ = ("target_score", "output_change_metric", "num_layers", "num_heads", "batch_size")
    TARGET_SCORE_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_CHANGE_METRIC_FIELD_NUMBER: _ClassVar[int]
    NUM_LAYERS_FIELD_NUMBER: _ClassVar[int]
    NUM_HEADS_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    target_score: float
    output_change_metric: str
    num_layers: int
    num_heads: int
    batch_size: int
    def __init__(self, target_score: _Optional[float] = ..., output_change_metric: _Optional[str] = ..., num_layers: _Optional[int] = ..., num_heads: _Optional[int] = ..., batch_size: _Optional[int] = ...) -> None: ...

class StreamHeadAblationResponse(_message.Message):
    __slots__ = ("header", "baseline", "layer", "joint", "importance")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    BASELINE_FIELD_NUMBER: _ClassVar[int]
    LAYER_FIELD_NUMBER: _ClassVar[int]
    JOINT_FIELD_NUMBER: _ClassVar[int]
    IMPORTANCE_FIELD_NUMBER: _ClassVar[int]
    header: StreamHeader
    baseline: AblationBaseline
    layer: LayerAblation
    joint: JointAblation
    importance: HeadImportance
    def __init__(self, header: _Optional[_Union[StreamHeader, _Mapping]] = ..., baseline: _Optional[_Union[AblationBaseline, _Mapping]] = ..., layer: _Optional[_Union[LayerAblation, _Mapping]] = ..., joint: _Optional[_Union[JointAblation, _Mapping]] = ..., importance: _Optional[_Union[HeadImportance, _Mapping]] = ...) -> None: ...

class StreamLogitLensRequest(_message.Message):
    __slots__ = ("model", "input", "truncate", "layers", "positions", "top_k", "token_id", "cache")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    INPUT_FIELD_NUMBER: _ClassVar[int]
    TRUNCATE_FIELD_NUMBER: _ClassVar[int]
    LAYERS_FIELD_NUMBER: _ClassVar[int]
    POSITIONS_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    TOKEN_ID_FIELD_NUMBER: _ClassVar[int]
    CACHE_FIELD_NUMBER: _ClassVar[int]
    model: str
    input: Input
    truncate: bool
    layers: _containers.RepeatedScalarFieldContainer[int]
    positions: _containers.RepeatedScalarFieldContainer[int]
    top_k: int
    token_id: int
    cache: CachePolicy
    def __init__(self, model: _Optional[str] = ..., input: _Optional[_Union[Input, _Mapping]] = ..., truncate: _Optional[bool] = ..., layers: _Optional[_Iterable[int]] = ..., positions: _Optional[_Iterable[int]] = ..., top_k: _Optional[int] = ..., token_id: _Optional[int] = ..., cache: _Optional[_Union[CachePolicy, str]] = ...) -> None: ...

class LogitLensLayer(_message.Message):
    __slots__ = ("layer", "positions", "top_token_ids", "top_probabilities", "top_tokens", "chosen_token_ids", "chosen_probabilities")
    LAYER_FIELD_NUMBER: _ClassVar[int]
    POSITIONS_FIELD_NUMBER: _ClassVar[int]
    TOP_TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    TOP_PROBABILITIES_FIELD_NUMBER: _ClassVar[int]
    TOP_TOKENS_FIELD_NUMBER: _ClassVar[int]
    CHOSEN_TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    CHOSEN_PROBABILITIES_FIELD_NUMBER: _ClassVar[int]
    layer: int
    positions: _containers.RepeatedScalarFieldContainer[int]
    top_token_ids: Tensor
    top_probabilities: Tensor
    top_tokens: _containers.RepeatedScalarFieldContainer[str]
    chosen_token_ids: _containers.RepeatedScalarFieldContainer[int]
    chosen_probabilities: Tensor
    def __init__(self, layer: _Optional[int] = ..., positions: _Optional[_Iterable[int]] = ..., top_token_ids: _Optional[_Union[Tensor, _Mapping]] = ..., top_probabilities: _Optional[_Union[Tensor, _Mapping]] = ..., top_tokens: _Optional[_Iterable[str]] = ..., chosen_token_ids: _Optional[_Iterable[int]] = ..., chosen_probabilities: _Optional[_Union[Tensor, _Mapping]] = ...) -> None: ...

class StreamLogitLensResponse(_message.Message):
    __slots__ = ("header", "layer")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    LAYER_FIELD_NUMBER: _ClassVar[int]
    header: StreamHeader
    layer: LogitLensLayer
    def __init__(self, header: _Optional[_Union[StreamHeader, _Mapping]] = ..., layer: _Optional[_Union[LogitLensLayer, _Mapping]] = ...) -> None: ...

class InputPair(_message.Message):
    __slots__ = ("clean", "corrupted", "alignment")
    CLEAN_FIELD_NUMBER: _ClassVar[int]
    CORRUPTED_FIELD_NUMBER: _ClassVar[int]
    ALIGNMENT_FIELD_NUMBER: _ClassVar[int]
    clean: Input
    corrupted: Input
    alignment: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, clean: _Optional[_Union[Input, _Mapping]] = ..., corrupted: _Optional[_Union[Input, _Mapping]] = ..., alignment: _Optional[_Iterable[int]] = ...) -> None: ...

class KnockoutOptions(_message.Message):
    __slots__ = ("query_positions", "key_positions", "window")
    QUERY_POSITIONS_FIELD_NUMBER: _ClassVar[int]
    KEY_POSITIONS_FIELD_NUMBER: _ClassVar[int]
    WINDOW_FIELD_NUMBER: _ClassVar[int]
    query_positions: _containers.RepeatedScalarFieldContainer[int]
    key_positions: _containers.RepeatedScalarFieldContainer[int]
    window: int
    def __init__(self, query_positions: _Optional[_Iterable[int]] = ..., key_positions: _Optional[_Iterable[int]] = ..., window: _Optional[int] = ...) -> None: ...

class StreamPatchingRequest(_message.Message):
    __slots__ = ("model", "pairs", "method", "target", "metric", "points", "direction", "layers", "positions", "with_exact", "knockout", "batch_size", "cache")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    PAIRS_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    METRIC_FIELD_NUMBER: _ClassVar[int]
    POINTS_FIELD_NUMBER: _ClassVar[int]
    DIRECTION_FIELD_NUMBER: _ClassVar[int]
    LAYERS_FIELD_NUMBER: _ClassVar[int]
    POSITIONS_FIELD_NUMBER: _ClassVar[int]
    WITH_EXACT_FIELD_NUMBER: _ClassVar[int]
    KNOCKOUT_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    CACHE_FIELD_NUMBER: _ClassVar[int]
    model: str
    pairs: _containers.RepeatedCompositeFieldContainer[InputPair]
    method: PatchingMethod
    target: Target
    metric: PatchingMetric
    points: _containers.RepeatedScalarFieldContainer[PatchPoint]
    direction: PatchDirection
    layers: _containers.RepeatedScalarFieldContainer[int]
    positions: _containers.RepeatedScalarFieldContainer[int]
    with_exact: bool
    knockout: KnockoutOptions
    batch_size: int
    cache: CachePolicy
    def __init__(self, model: _Optional[str] = ..., pairs: _Optional[_Iterable[_Union[InputPair, _Mapping]]] = ..., method: _Optional[_Union[PatchingMethod, str]] = ..., target: _Optional[_Union[Target, _Mapping]] = ..., metric: _Optional[_Union[PatchingMetric, str]] = ..., points: _Optional[_Iterable[_Union[PatchPoint, str]]] = ..., direction: _Optional[_Union[PatchDirection, str]] = ..., layers: _Optional[_Iterable[int]] = ..., positions: _Optional[_Iterable[int]] = ..., with_exact: _Optional[bool] = ..., knockout: _Optional[_Union[KnockoutOptions, _Mapping]] = ..., batch_size: _Optional[int] = ..., cache: _Optional[_Union[CachePolicy, str]] = ...) -> None: ...

class PatchingBaseline(_message.Message):
    __slots__ = ("pair_index", "clean_score", "corrupted_score", "metric", "num_layers", "num_heads", "batch_size")
    PAIR_INDEX_FIELD_NUMBER: _ClassVar[int]
    CLEAN_SCORE_FIELD_NUMBER: _ClassVar[int]
    CORRUPTED_SCORE_FIELD_NUMBER: _ClassVar[int]
    METRIC_FIELD_NUMBER: _ClassVar[int]
    NUM_LAYERS_FIELD_NUMBER: _ClassVar[int]
    NUM_HEADS_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    pair_index: int
    clean_score: float
    corrupted_score: float
    metric: str
    num_layers: int
    num_heads: int
    batch_size: int
    def __init__(self, pair_index: _Optional[int] = ..., clean_score: _Optional[float] = ..., corrupted_score: _Optional[float] = ..., metric: _Optional[str] = ..., num_layers: _Optional[int] = ..., num_heads: _Optional[int] = ..., batch_size: _Optional[int] = ...) -> None: ...

class PatchingLayer(_message.Message):
    __slots__ = ("pair_index", "method", "point", "layer", "positions", "heads", "values", "normalized")
    PAIR_INDEX_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    POINT_FIELD_NUMBER: _ClassVar[int]
    LAYER_FIELD_NUMBER: _ClassVar[int]
    POSITIONS_FIELD_NUMBER: _ClassVar[int]
    HEADS_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    NORMALIZED_FIELD_NUMBER: _ClassVar[int]
    pair_index: int
    method: PatchingMethod
    point: PatchPoint
    layer: int
    positions: _containers.RepeatedScalarFieldContainer[int]
    heads: _containers.RepeatedScalarFieldContainer[int]
    values: Tensor
    normalized: Tensor
    def __init__(self, pair_index: _Optional[int] = ..., method: _Optional[_Union[PatchingMethod, str]] = ..., point: _Optional[_Union[PatchPoint, str]] = ..., layer: _Optional[int] = ..., positions: _Optional[_Iterable[int]] = ..., heads: _Optional[_Iterable[int]] = ..., values: _Optional[_Union[Tensor, _Mapping]] = ..., normalized: _Optional[_Union[Tensor, _Mapping]] = ...) -> None: ...

class PatchingCorrelation(_message.Message):
    __slots__ = ("pair_index", "point", "pearson", "max_abs_difference")
    PAIR_INDEX_FIELD_NUMBER: _ClassVar[int]
    POINT_FIELD_NUMBER: _ClassVar[int]
    PEARSON_FIELD_NUMBER: _ClassVar[int]
    MAX_ABS_DIFFERENCE_FIELD_NUMBER: _ClassVar[int]
    pair_index: int
    point: PatchPoint
    pearson: float
    max_abs_difference: float
    def __init__(self, pair_index: _Optional[int] = ..., point: _Optional[_Union[PatchPoint, str]] = ..., pearson: _Optional[float] = ..., max_abs_difference: _Optional[float] = ...) -> None: ...

class LogitAttribution(_message.Message):
    __slots__ = ("pair_index", "heads", "mlps", "attention_biases", "embeddings", "bias", "logit_difference")
    PAIR_INDEX_FIELD_NUMBER: _ClassVar[int]
    HEADS_FIELD_NUMBER: _ClassVar[int]
    MLPS_FIELD_NUMBER: _ClassVar[int]
    ATTENTION_BIASES_FIELD_NUMBER: _ClassVar[int]
    EMBEDDINGS_FIELD_NUMBER: _ClassVar[int]
    BIAS_FIELD_NUMBER: _ClassVar[int]
    LOGIT_DIFFERENCE_FIELD_NUMBER: _ClassVar[int]
    pair_index: int
    heads: Tensor
    mlps: Tensor
    attention_biases: Tensor
    embeddings: Tensor
    bias: Tensor
    logit_difference: Tensor
    def __init__(self, pair_index: _Optional[int] = ..., heads: _Optional[_Union[Tensor, _Mapping]] = ..., mlps: _Optional[_Union[Tensor, _Mapping]] = ..., attention_biases: _Optional[_Union[Tensor, _Mapping]] = ..., embeddings: _Optional[_Union[Tensor, _Mapping]] = ..., bias: _Optional[_Union[Tensor, _Mapping]] = ..., logit_difference: _Optional[_Union[Tensor, _Mapping]] = ...) -> None: ...

class KnockoutResult(_message.Message):
    __slots__ = ("pair_index", "window_starts", "window", "values", "change")
    PAIR_INDEX_FIELD_NUMBER: _ClassVar[int]
    WINDOW_STARTS_FIELD_NUMBER: _ClassVar[int]
    WINDOW_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    CHANGE_FIELD_NUMBER: _ClassVar[int]
    pair_index: int
    window_starts: _containers.RepeatedScalarFieldContainer[int]
    window: int
    values: Tensor
    change: Tensor
    def __init__(self, pair_index: _Optional[int] = ..., window_starts: _Optional[_Iterable[int]] = ..., window: _Optional[int] = ..., values: _Optional[_Union[Tensor, _Mapping]] = ..., change: _Optional[_Union[Tensor, _Mapping]] = ...) -> None: ...

class StreamPatchingResponse(_message.Message):
    __slots__ = ("header", "baseline", "layer", "correlation", "logit_attribution", "knockout")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    BASELINE_FIELD_NUMBER: _ClassVar[int]
    LAYER_FIELD_NUMBER: _ClassVar[int]
    CORRELATION_FIELD_NUMBER: _ClassVar[int]
    LOGIT_ATTRIBUTION_FIELD_NUMBER: _ClassVar[int]
    KNOCKOUT_FIELD_NUMBER: _ClassVar[int]
    header: StreamHeader
    baseline: PatchingBaseline
    layer: PatchingLayer
    correlation: PatchingCorrelation
    logit_attribution: LogitAttribution
    knockout: KnockoutResult
    def __init__(self, header: _Optional[_Union[StreamHeader, _Mapping]] = ..., baseline: _Optional[_Union[PatchingBaseline, _Mapping]] = ..., layer: _Optional[_Union[PatchingLayer, _Mapping]] = ..., correlation: _Optional[_Union[PatchingCorrelation, _Mapping]] = ..., logit_attribution: _Optional[_Union[LogitAttribution, _Mapping]] = ..., knockout: _Optional[_Union[KnockoutResult, _Mapping]] = ...) -> None: ...

class StreamShapleyHeadsRequest(_message.Message):
    __slots__ = ("model", "input", "truncate", "target", "heads", "all_heads", "value", "max_standard_error", "max_permutations", "seed", "batch_size", "sample", "cache")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    INPUT_FIELD_NUMBER: _ClassVar[int]
    TRUNCATE_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    HEADS_FIELD_NUMBER: _ClassVar[int]
    ALL_HEADS_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    MAX_STANDARD_ERROR_FIELD_NUMBER: _ClassVar[int]
    MAX_PERMUTATIONS_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_FIELD_NUMBER: _ClassVar[int]
    CACHE_FIELD_NUMBER: _ClassVar[int]
    model: str
    input: Input
    truncate: bool
    target: Target
    heads: _containers.RepeatedCompositeFieldContainer[HeadRef]
    all_heads: bool
    value: AblationValue
    max_standard_error: float
    max_permutations: int
    seed: int
    batch_size: int
    sample: bool
    cache: CachePolicy
    def __init__(self, model: _Optional[str] = ..., input: _Optional[_Union[Input, _Mapping]] = ..., truncate: _Optional[bool] = ..., target: _Optional[_Union[Target, _Mapping]] = ..., heads: _Optional[_Iterable[_Union[HeadRef, _Mapping]]] = ..., all_heads: _Optional[bool] = ..., value: _Optional[_Union[AblationValue, str]] = ..., max_standard_error: _Optional[float] = ..., max_permutations: _Optional[int] = ..., seed: _Optional[int] = ..., batch_size: _Optional[int] = ..., sample: _Optional[bool] = ..., cache: _Optional[_Union[CachePolicy, str]] = ...) -> None: ...

class ShapleyBaseline(_message.Message):
    __slots__ = ("heads", "full_score", "empty_score", "num_layers", "num_heads", "exact", "batch_size")
    HEADS_FIELD_NUMBER: _ClassVar[int]
    FULL_SCORE_FIELD_NUMBER: _ClassVar[int]
    EMPTY_SCORE_FIELD_NUMBER: _ClassVar[int]
    NUM_LAYERS_FIELD_NUMBER: _ClassVar[int]
    NUM_HEADS_FIELD_NUMBER: _ClassVar[int]
    EXACT_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    heads: _containers.RepeatedCompositeFieldContainer[HeadRef]
    full_score: float
    empty_score: float
    num_layers: int
    num_heads: int
    exact: bool
    batch_size: int
    def __init__(self, heads: _Optional[_Iterable[_Union[HeadRef, _Mapping]]] = ..., full_score: _Optional[float] = ..., empty_score: _Optional[float] = ..., num_layers: _Optional[int] = ..., num_heads: _Optional[int] = ..., exact: _Optional[bool] = ..., batch_size: _Optional[int] = ...) -> None: ...

class ShapleyEstimate(_message.Message):
    __slots__ = ("values", "standard_errors", "permutations", "evaluations")
    VALUES_FIELD_NUMBER: _ClassVar[int]
    STANDARD_ERRORS_FIELD_NUMBER: _ClassVar[int]
    PERMUTATIONS_FIELD_NUMBER: _ClassVar[int]
    EVALUATIONS_FIELD_NUMBER: _ClassVar[int]
    values: Tensor
    standard_errors: Tensor
    permutations: int
    evaluations: int
    def __init__(self, values: _Optional[_Union[Tensor, _Mapping]] = ..., standard_errors: _Optional[_Union[Tensor, _Mapping]] = ..., permutations: _Optional[int] = ..., evaluations: _Optional[int] = ...) -> None: ...

class ShapleyFinal(_message.Message):
    __slots__ = ("values", "standard_errors", "permutations", "evaluations", "exact", "converged")
    VALUES_FIELD_NUMBER: _ClassVar[int]
    STANDARD_ERRORS_FIELD_NUMBER: _ClassVar[int]
    PERMUTATIONS_FIELD_NUMBER: _ClassVar[int]
    EVALUATIONS_FIELD_NUMBER: _ClassVar[int]
    EXACT_FIELD_NUMBER: _ClassVar[int]
    CONVERGED_FIELD_NUMBER: _ClassVar[int]
    values: Tensor
    standard_errors: Tensor
    permutations: int
    evaluations: int
    exact: bool
    converged: bool
    def __init__(self, values: _Optional[_Union[Tensor, _Mapping]] = ..., standard_errors: _Optional[_Union[Tensor, _Mapping]] = ..., permutations: _Optional[int] = ..., evaluations: _Optional[int] = ..., exact: _Optional[bool] = ..., converged: _Optional[bool] = ...) -> None: ...

class StreamShapleyHeadsResponse(_message.Message):
    __slots__ = ("header", "baseline", "estimate", "final")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    BASELINE_FIELD_NUMBER: _ClassVar[int]
    ESTIMATE_FIELD_NUMBER: _ClassVar[int]
    FINAL_FIELD_NUMBER: _ClassVar[int]
    header: StreamHeader
    baseline: ShapleyBaseline
    estimate: ShapleyEstimate
    final: ShapleyFinal
    def __init__(self, header: _Optional[_Union[StreamHeader, _Mapping]] = ..., baseline: _Optional[_Union[ShapleyBaseline, _Mapping]] = ..., estimate: _Optional[_Union[ShapleyEstimate, _Mapping]] = ..., final: _Optional[_Union[ShapleyFinal, _Mapping]] = ...) -> None: ...

class StreamQueryKeyEmbeddingsRequest(_message.Message):
    __slots__ = ("model", "inputs", "layers", "heads", "projection", "include_vectors", "truncate", "cache")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    LAYERS_FIELD_NUMBER: _ClassVar[int]
    HEADS_FIELD_NUMBER: _ClassVar[int]
    PROJECTION_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_VECTORS_FIELD_NUMBER: _ClassVar[int]
    TRUNCATE_FIELD_NUMBER: _ClassVar[int]
    CACHE_FIELD_NUMBER: _ClassVar[int]
    model: str
    inputs: _containers.RepeatedCompositeFieldContainer[Input]
    layers: _containers.RepeatedScalarFieldContainer[int]
    heads: _containers.RepeatedScalarFieldContainer[int]
    projection: ProjectionMethod
    include_vectors: bool
    truncate: bool
    cache: CachePolicy
    def __init__(self, model: _Optional[str] = ..., inputs: _Optional[_Iterable[_Union[Input, _Mapping]]] = ..., layers: _Optional[_Iterable[int]] = ..., heads: _Optional[_Iterable[int]] = ..., projection: _Optional[_Union[ProjectionMethod, str]] = ..., include_vectors: _Optional[bool] = ..., truncate: _Optional[bool] = ..., cache: _Optional[_Union[CachePolicy, str]] = ...) -> None: ...

class QueryKeyPoints(_message.Message):
    __slots__ = ("input_indices", "positions", "tokens")
    INPUT_INDICES_FIELD_NUMBER: _ClassVar[int]
    POSITIONS_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    input_indices: _containers.RepeatedScalarFieldContainer[int]
    positions: _containers.RepeatedScalarFieldContainer[int]
    tokens: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, input_indices: _Optional[_Iterable[int]] = ..., positions: _Optional[_Iterable[int]] = ..., tokens: _Optional[_Iterable[str]] = ...) -> None: ...

class QueryKeyProjection(_message.Message):
    __slots__ = ("layer", "head", "key_head", "projection", "coordinates", "explained_variance_ratio", "query_mean_norm", "key_mean_norm", "scale")
    LAYER_FIELD_NUMBER: _ClassVar[int]
    HEAD_FIELD_NUMBER: _ClassVar[int]
    KEY_HEAD_FIELD_NUMBER: _ClassVar[int]
    PROJECTION_FIELD_NUMBER: _ClassVar[int]
    COORDINATES_FIELD_NUMBER: _ClassVar[int]
    EXPLAINED_VARIANCE_RATIO_FIELD_NUMBER: _ClassVar[int]
    QUERY_MEAN_NORM_FIELD_NUMBER: _ClassVar[int]
    KEY_MEAN_NORM_FIELD_NUMBER: _ClassVar[int]
    SCALE_FIELD_NUMBER: _ClassVar[int]
    layer: int
    head: int
    key_head: int
    projection: ProjectionMethod
    coordinates: Tensor
    explained_variance_ratio: _containers.RepeatedScalarFieldContainer[float]
    query_mean_norm: float
    key_mean_norm: float
    scale: float
    def __init__(self, layer: _Optional[int] = ..., head: _Optional[int] = ..., key_head: _Optional[int] = ..., projection: _Optional[_Union[ProjectionMethod, str]] = ..., coordinates: _Optional[_Union[Tensor, _Mapping]] = ..., explained_variance_ratio: _Optional[_Iterable[float]] = ..., query_mean_norm: _Optional[float] = ..., key_mean_norm: _Optional[float] = ..., scale: _Optional[float] = ...) -> None: ...

class QueryKeyVectors(_message.Message):
    __slots__ = ("layer", "head", "point_start", "point_end", "vectors")
    LAYER_FIELD_NUMBER: _ClassVar[int]
    HEAD_FIELD_NUMBER: _ClassVar[int]
    POINT_START_FIELD_NUMBER: _ClassVar[int]
    POINT_END_FIELD_NUMBER: _ClassVar[int]
    VECTORS_FIELD_NUMBER: _ClassVar[int]
    layer: int
    head: int
    point_start: int
    point_end: int
    vectors: Tensor
    def __init__(self, layer: _Optional[int] = ..., head: _Optional[int] = ..., point_start: _Optional[int] = ..., point_end: _Optional[int] = ..., vectors: _Optional[_Union[Tensor, _Mapping]] = ...) -> None: ...

class StreamQueryKeyEmbeddingsResponse(_message.Message):
    __slots__ = ("header", "points", "projection", "vectors")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    POINTS_FIELD_NUMBER: _ClassVar[int]
    PROJECTION_FIELD_NUMBER: _ClassVar[int]
    VECTORS_FIELD_NUMBER: _ClassVar[int]
    header: StreamHeader
    points: QueryKeyPoints
    projection: QueryKeyProjection
    vectors: QueryKeyVectors
    def __init__(self, header: _Optional[_Union[StreamHeader, _Mapping]] = ..., points: _Optional[_Union[QueryKeyPoints, _Mapping]] = ..., projection: _Optional[_Union[QueryKeyProjection, _Mapping]] = ..., vectors: _Optional[_Union[QueryKeyVectors, _Mapping]] = ...) -> None: ...

class StreamHeadStatisticsRequest(_message.Message):
    __slots__ = ("model", "inputs", "truncate", "cache", "statistics", "layers", "heads", "induction_length", "induction_samples", "induction_seed", "retrieval_steps", "needle_start", "needle_end")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    TRUNCATE_FIELD_NUMBER: _ClassVar[int]
    CACHE_FIELD_NUMBER: _ClassVar[int]
    STATISTICS_FIELD_NUMBER: _ClassVar[int]
    LAYERS_FIELD_NUMBER: _ClassVar[int]
    HEADS_FIELD_NUMBER: _ClassVar[int]
    INDUCTION_LENGTH_FIELD_NUMBER: _ClassVar[int]
    INDUCTION_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    INDUCTION_SEED_FIELD_NUMBER: _ClassVar[int]
    RETRIEVAL_STEPS_FIELD_NUMBER: _ClassVar[int]
    NEEDLE_START_FIELD_NUMBER: _ClassVar[int]
    NEEDLE_END_FIELD_NUMBER: _ClassVar[int]
    model: str
    inputs: _containers.RepeatedCompositeFieldContainer[Input]
    truncate: bool
    cache: CachePolicy
    statistics: _containers.RepeatedScalarFieldContainer[HeadStatistic]
    layers: _containers.RepeatedScalarFieldContainer[int]
    heads: _containers.RepeatedScalarFieldContainer[int]
    induction_length: int
    induction_samples: int
    induction_seed: int
    retrieval_steps: int
    needle_start: int
    needle_end: int
    def __init__(self, model: _Optional[str] = ..., inputs: _Optional[_Iterable[_Union[Input, _Mapping]]] = ..., truncate: _Optional[bool] = ..., cache: _Optional[_Union[CachePolicy, str]] = ..., statistics: _Optional[_Iterable[_Union[HeadStatistic, str]]] = ..., layers: _Optional[_Iterable[int]] = ..., heads: _Optional[_Iterable[int]] = ..., induction_length: _Optional[int] = ..., induction_samples: _Optional[int] = ..., induction_seed: _Optional[int] = ..., retrieval_steps: _Optional[int] = ..., needle_start: _Optional[int] = ..., needle_end: _Optional[int] = ...) -> None: ...

class HeadStatisticValues(_message.Message):
    __slots__ = ("statistic", "count", "layers", "heads", "mean", "std")
    STATISTIC_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    LAYERS_FIELD_NUMBER: _ClassVar[int]
    HEADS_FIELD_NUMBER: _ClassVar[int]
    MEAN_FIELD_NUMBER: _ClassVar[int]
    STD_FIELD_NUMBER: _ClassVar[int]
    statistic: HeadStatistic
    count: int
    layers: _containers.RepeatedScalarFieldContainer[int]
    heads: _containers.RepeatedScalarFieldContainer[int]
    mean: Tensor
    std: Tensor
    def __init__(self, statistic: _Optional[_Union[HeadStatistic, str]] = ..., count: _Optional[int] = ..., layers: _Optional[_Iterable[int]] = ..., heads: _Optional[_Iterable[int]] = ..., mean: _Optional[_Union[Tensor, _Mapping]] = ..., std: _Optional[_Union[Tensor, _Mapping]] = ...) -> None: ...

class HeadStatisticsInput(_message.Message):
    __slots__ = ("input_index", "values", "hidden_norms", "generated_token_ids", "generated_tokens")
    INPUT_INDEX_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    HIDDEN_NORMS_FIELD_NUMBER: _ClassVar[int]
    GENERATED_TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    GENERATED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    input_index: int
    values: _containers.RepeatedCompositeFieldContainer[HeadStatisticValues]
    hidden_norms: Tensor
    generated_token_ids: _containers.RepeatedScalarFieldContainer[int]
    generated_tokens: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, input_index: _Optional[int] = ..., values: _Optional[_Iterable[_Union[HeadStatisticValues, _Mapping]]] = ..., hidden_norms: _Optional[_Union[Tensor, _Mapping]] = ..., generated_token_ids: _Optional[_Iterable[int]] = ..., generated_tokens: _Optional[_Iterable[str]] = ...) -> None: ...

class HeadStatisticsAggregate(_message.Message):
    __slots__ = ("inputs_done", "inputs_total", "values")
    INPUTS_DONE_FIELD_NUMBER: _ClassVar[int]
    INPUTS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    inputs_done: int
    inputs_total: int
    values: _containers.RepeatedCompositeFieldContainer[HeadStatisticValues]
    def __init__(self, inputs_done: _Optional[int] = ..., inputs_total: _Optional[int] = ..., values: _Optional[_Iterable[_Union[HeadStatisticValues, _Mapping]]] = ...) -> None: ...

class StreamHeadStatisticsResponse(_message.Message):
    __slots__ = ("header", "input", "aggregate")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    INPUT_FIELD_NUMBER: _ClassVar[int]
    AGGREGATE_FIELD_NUMBER: _ClassVar[int]
    header: StreamHeader
    input: HeadStatisticsInput
    aggregate: HeadStatisticsAggregate
    def __init__(self, header: _Optional[_Union[StreamHeader, _Mapping]] = ..., input: _Optional[_Union[HeadStatisticsInput, _Mapping]] = ..., aggregate: _Optional[_Union[HeadStatisticsAggregate, _Mapping]] = ...) -> None: ...
