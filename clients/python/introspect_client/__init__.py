"""Python client of the introspect gRPC service (no torch needed).

    from introspect_client import Client

    with Client("127.0.0.1:50051") as client:
        print([model.name for model in client.list_models()])
        result = client.attention("The cat sat on the mat.", layers=[5], view="head_mean")
        print(result[0].tokens, result[0].layers[5].shape)  # [1, query, keys]
"""

from . import targets
from introspect_contract import pb
from .ablation import (
    ABLATION_MODES,
    ABLATION_VALUES,
    AblationAssembler,
    AblationOptions,
    AblationResult,
    JointAblationResult,
    ablation_request,
)
from .client import DEFAULT_MAX_MESSAGE_BYTES, DEFAULT_SERVICE_CONFIG, AsyncClient, Client
from .errors import IntrospectError
from .html import to_html, write_html
from .image_inputs import ImageLike, make_image_input
from .image_layout import ImageLayout, bilinear_resize
from .inputs import InputLike, InputsLike, make_input, make_inputs
from .head_statistics import (
    HeadStatisticsAssembler,
    HeadStatisticsOptions,
    HeadStatisticsResult,
    InputStatistics,
    head_statistics_request,
)
from .logit_lens import LogitLensAssembler, LogitLensOptions, LogitLensResult, logit_lens_request
from .patching import (
    PATCH_DIRECTIONS,
    PATCH_POINTS,
    PATCHING_METHODS,
    PATCHING_METRICS,
    PatchingOptions,
    patching_request,
)
from .query_key import (
    PROJECTIONS,
    QueryKeyAssembler,
    QueryKeyEmbeddingsResult,
    QueryKeyOptions,
    QueryKeyProjection,
    query_key_request,
)
from .patching_results import PairPatching, PatchingAssembler, PatchingMap, PatchingResult
from .options import CACHE_POLICIES, VALUE_DTYPES, VIEWS, AttentionOptions, attention_request
from .results import AttentionAssembler, AttentionResult, InputAttention
from .shapley import (
    ShapleyEstimate,
    ShapleyHeadsAssembler,
    ShapleyHeadsOptions,
    ShapleyHeadsResult,
    shapley_heads_request,
)
from .saliency import (
    BASELINES,
    CAM_METHODS,
    CAM_POINTS,
    INTEGRATION_RULES,
    SALIENCY_METHODS,
    Refinement,
    SaliencyAssembler,
    SaliencyOptions,
    SaliencyResult,
    saliency_request,
)

# The distribution's version: the client, the CLI and the server are one package.
__version__ = "0.1.0"

__all__ = [
    "__version__",
    "ABLATION_MODES",
    "ABLATION_VALUES",
    "BASELINES",
    "CACHE_POLICIES",
    "CAM_METHODS",
    "CAM_POINTS",
    "DEFAULT_MAX_MESSAGE_BYTES",
    "DEFAULT_SERVICE_CONFIG",
    "INTEGRATION_RULES",
    "PATCHING_METHODS",
    "PATCHING_METRICS",
    "PATCH_DIRECTIONS",
    "PATCH_POINTS",
    "SALIENCY_METHODS",
    "VALUE_DTYPES",
    "VIEWS",
    "AblationAssembler",
    "AblationOptions",
    "AblationResult",
    "AsyncClient",
    "AttentionAssembler",
    "AttentionOptions",
    "AttentionResult",
    "Client",
    "ImageLayout",
    "ImageLike",
    "InputAttention",
    "InputLike",
    "InputsLike",
    "IntrospectError",
    "JointAblationResult",
    "HeadStatisticsAssembler",
    "HeadStatisticsOptions",
    "HeadStatisticsResult",
    "InputStatistics",
    "LogitLensAssembler",
    "LogitLensOptions",
    "LogitLensResult",
    "PairPatching",
    "PatchingAssembler",
    "PatchingMap",
    "PatchingOptions",
    "PatchingResult",
    "PROJECTIONS",
    "QueryKeyAssembler",
    "QueryKeyEmbeddingsResult",
    "QueryKeyOptions",
    "QueryKeyProjection",
    "Refinement",
    "SaliencyAssembler",
    "SaliencyOptions",
    "SaliencyResult",
    "ShapleyEstimate",
    "ShapleyHeadsAssembler",
    "ShapleyHeadsOptions",
    "ShapleyHeadsResult",
    "ablation_request",
    "attention_request",
    "bilinear_resize",
    "head_statistics_request",
    "logit_lens_request",
    "make_image_input",
    "make_input",
    "make_inputs",
    "patching_request",
    "pb",
    "query_key_request",
    "saliency_request",
    "shapley_heads_request",
    "targets",
    "to_html",
    "write_html",
]
