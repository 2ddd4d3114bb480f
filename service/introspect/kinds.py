"""Model kinds: what a model's output head is, and everything that depends on it.

The model wrapper (models.py) holds one of these; no other module branches on the kind
of a model: methods ask the kind (its targets, its outputs, whether later positions can
change earlier ones) instead.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers import (
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForImageClassification,
    AutoModelForSequenceClassification,
    PretrainedConfig,
    PreTrainedModel,
)
from transformers.models.auto.auto_factory import _get_model_class

Arguments = Mapping[str, torch.Tensor]


@dataclass(frozen=True)
class ModelKind:
    """An output head: its loader, targets and outputs."""

    name: str  # as ModelKind in the contract: "encoder", "causal_lm", ...
    loader: type
    targets: tuple[str, ...]  # names of the Target kinds it can score
    output_change_metric: str  # how ablation compares whole outputs
    causal: bool  # later positions cannot change earlier ones (and it can generate)
    has_lm_head: bool  # its outputs are next-token logits over the vocabulary
    modality: str = "text"  # what its inputs are: "text" or "image"
    hidden_output: bool = False  # its outputs are the last hidden states (no head)

    def outputs(self, model: PreTrainedModel, arguments: Arguments, last_positions: int | None = None) -> torch.Tensor:
        """Runs the model: logits [batch, tokens, vocab] (causal LM; only the last
        `last_positions` positions when given, and no KV cache), logits [batch, classes]
        (classifier) or last hidden states [batch, tokens, hidden] (encoder)."""
        extra: dict[str, object] = {"use_cache": False} if self.causal else {}
        if self.causal and last_positions:
            extra["logits_to_keep"] = last_positions
        return self.head_output(model(**arguments, **extra))

    def head_output(self, output: Any) -> torch.Tensor:
        """The tensor `outputs` returns, from a transformers model output: the logits of
        models with a head, else the last hidden states."""
        return output.last_hidden_state if self.hidden_output else output.logits

    def trunk(self, model: PreTrainedModel) -> nn.Module:
        """The module whose forward runs every attention layer and nothing after them
        (no head): the base model."""
        return model.base_model

    def eager_reference(self, model: PreTrainedModel, arguments: Arguments) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """(outputs, attention maps per layer) of one forward with the model's attention
        returning its maps (`output_attentions`): the parity reference at load."""
        output = model(**arguments, output_attentions=True, **({"use_cache": False} if self.causal else {}))
        return self.head_output(output), tuple(output.attentions or ())

    def relevant_length(self, position: int | None, length: int) -> int:
        """How many leading tokens can affect a target at `position`: all of them, or
        for a causal model those up to the position (the input may be cut after it)."""
        return position + 1 if self.causal and position is not None else length

    def explained_position(self, target_position: int | None) -> int:
        """The position whose attention explains a target: a causal model's target
        position, else the first token ([CLS], which classifier heads read)."""
        return target_position if self.causal and target_position is not None else 0


class DualEncoderKind(ModelKind):
    """An image-text dual encoder (CLIP, SigLIP) served through its image tower: its
    outputs are the joint-space image embeddings [batch, dim]; text is embedded by the
    text tower only as a reference for similarity targets."""

    def outputs(self, model: PreTrainedModel, arguments: Arguments, last_positions: int | None = None) -> torch.Tensor:
        """Joint-space image embeddings [batch, dim] (the projected pooled output)."""
        return _features(model.get_image_features(**arguments))

    def text_embeddings(self, model: PreTrainedModel, arguments: Arguments) -> torch.Tensor:
        """Joint-space text embeddings [batch, dim] of tokenized text."""
        return _features(model.get_text_features(**arguments))

    def trunk(self, model: PreTrainedModel) -> nn.Module:
        """The image tower."""
        return model.vision_model

    def eager_reference(self, model: PreTrainedModel, arguments: Arguments) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """Image embeddings, and the image tower's maps from a second forward."""
        maps = model.vision_model(**arguments, output_attentions=True).attentions
        return self.outputs(model, arguments), tuple(maps or ())


def _features(output: Any) -> torch.Tensor:
    """get_image_features / get_text_features return a tensor, or (newer transformers)
    an output whose pooler_output is the projected embedding."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


EMBEDDING_TARGETS = ("embedding_similarity", "embedding_norm")
ENCODER = ModelKind("encoder", AutoModel, EMBEDDING_TARGETS, "cosine_distance",
                    causal=False, has_lm_head=False, hidden_output=True)
CAUSAL_LM = ModelKind("causal_lm", AutoModelForCausalLM, ("next_token", "logit_difference"), "kl_divergence",
                      causal=True, has_lm_head=True)
SEQUENCE_CLASSIFIER = ModelKind("sequence_classifier", AutoModelForSequenceClassification, ("class_score",),
                                "kl_divergence", causal=False, has_lm_head=False)
IMAGE_CLASSIFIER = ModelKind("image_classifier", AutoModelForImageClassification, ("class_score",),
                             "kl_divergence", causal=False, has_lm_head=False, modality="image")
IMAGE_ENCODER = ModelKind("image_encoder", AutoModel, EMBEDDING_TARGETS, "cosine_distance", causal=False,
                          has_lm_head=False, modality="image", hidden_output=True)
IMAGE_TEXT_DUAL_ENCODER = DualEncoderKind("image_text_dual_encoder", AutoModel, EMBEDDING_TARGETS, "cosine_distance",
                                          causal=False, has_lm_head=False, modality="image")
KINDS = {kind.name: kind for kind in (ENCODER, CAUSAL_LM, SEQUENCE_CLASSIFIER, IMAGE_CLASSIFIER, IMAGE_ENCODER,
                                      IMAGE_TEXT_DUAL_ENCODER)}
_IMAGE_CLASSIFIER_SUFFIXES = ("ForImageClassification", "ForImageClassificationWithTeacher")


def kind_of(config: PretrainedConfig) -> ModelKind:
    """Decides the output head from the architectures the config names (and, for a model
    without a head, from what its class takes: token ids, pixel values, or both towers)."""
    architectures = config.architectures or []
    if any(name.endswith(("ForCausalLM", "LMHeadModel")) for name in architectures):
        return CAUSAL_LM
    if any(name.endswith("ForSequenceClassification") for name in architectures):
        return SEQUENCE_CLASSIFIER
    if any(name.endswith(_IMAGE_CLASSIFIER_SUFFIXES) for name in architectures):
        return IMAGE_CLASSIFIER
    if (getattr(config, "vision_config", None) is not None and getattr(config, "text_config", None) is not None
            and any(name.endswith("Model") for name in architectures)):
        return IMAGE_TEXT_DUAL_ENCODER
    try:
        main_input = getattr(_get_model_class(config, AutoModel._model_mapping), "main_input_name", "input_ids")
    except (KeyError, ValueError):
        return ENCODER
    return IMAGE_ENCODER if main_input == "pixel_values" else ENCODER
