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
from transformers import (
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    PretrainedConfig,
    PreTrainedModel,
)

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
        return output.last_hidden_state if self.name == "encoder" else output.logits

    def relevant_length(self, position: int | None, length: int) -> int:
        """How many leading tokens can affect a target at `position`: all of them, or
        for a causal model those up to the position (the input may be cut after it)."""
        return position + 1 if self.causal and position is not None else length

    def explained_position(self, target_position: int | None) -> int:
        """The position whose attention explains a target: a causal model's target
        position, else the first token ([CLS], which classifier heads read)."""
        return target_position if self.causal and target_position is not None else 0


ENCODER = ModelKind("encoder", AutoModel, ("embedding_similarity", "embedding_norm"), "cosine_distance",
                    causal=False, has_lm_head=False)
CAUSAL_LM = ModelKind("causal_lm", AutoModelForCausalLM, ("next_token", "logit_difference"), "kl_divergence",
                      causal=True, has_lm_head=True)
SEQUENCE_CLASSIFIER = ModelKind("sequence_classifier", AutoModelForSequenceClassification, ("class_score",),
                                "kl_divergence", causal=False, has_lm_head=False)
KINDS = {kind.name: kind for kind in (ENCODER, CAUSAL_LM, SEQUENCE_CLASSIFIER)}


def kind_of(config: PretrainedConfig) -> ModelKind:
    """Decides the output head from the architectures the config names."""
    architectures = config.architectures or []
    if any(name.endswith(("ForCausalLM", "LMHeadModel")) for name in architectures):
        return CAUSAL_LM
    if any(name.endswith("ForSequenceClassification") for name in architectures):
        return SEQUENCE_CLASSIFIER
    return ENCODER
