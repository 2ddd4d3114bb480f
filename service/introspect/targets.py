"""Targets: the scalar a saliency method attributes and a head ablation measures, plus
the whole-output summary that ablation compares (next-token or class distribution, or
the pooled embedding).

A TargetSpec is bound to one model and one input (`bind_target`) once: the predicted
token or class is fixed then, and a reference embedding computed, so every later
forward pass (baselines, noisy samples, ablated variants) scores the same thing.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .errors import InvalidInput, require
from .inputs import EncodedBatch
from .kinds import ModelKind
from .models import LoadedModel, ModelDescription, pooled_embedding
from .requests import TARGET_KINDS, TargetSpec

NEXT_TOKEN_TARGETS = ("next_token", "logit_difference")


def check_target_kind(description: ModelDescription, spec: TargetSpec | None) -> TargetSpec:
    """INVALID_ARGUMENT unless the model can serve the target; names those it supports.
    Needs only the model's description, so it runs before the request is queued."""
    supported = description.supported_targets
    if spec is None:
        raise InvalidInput("target", f"a target is required; model {description.name!r} supports {list(supported)}")
    require(spec.kind in TARGET_KINDS, "target", f"unknown target {spec.kind!r}; model {description.name!r} "
            f"supports {list(supported)}")
    require(
        spec.kind in supported,
        "target",
        f"model {description.name!r} ({description.kind}) cannot serve target {spec.kind!r}; "
        f"it supports {list(supported)}",
    )
    return spec


@dataclass(frozen=True)
class BoundTarget:
    """A target resolved for one model and one input."""

    kind: str
    model_kind: ModelKind
    position: int | None  # absolute position (next-token targets)
    token_id: int | None
    contrast_token_id: int | None
    class_index: int | None
    probability: bool
    reference_embedding: torch.Tensor | None  # [hidden]

    @property
    def output_change_metric(self) -> str:
        """Name of the whole-output comparison: KL divergence or cosine distance."""
        return self.model_kind.output_change_metric

    def score(self, outputs: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The target per batch row [batch] (float32), from the model's outputs."""
        if self.kind in NEXT_TOKEN_TARGETS:
            return self.score_next_token_logits(outputs[:, self.position])
        if self.kind == "class_score":
            logits = outputs.float()
            values = torch.softmax(logits, dim=-1) if self.probability else logits
            return values[:, self.class_index]
        pooled = pooled_embedding(outputs.float(), attention_mask)
        if self.kind == "embedding_norm":
            return pooled.norm(dim=-1)
        reference = self.reference_embedding.to(pooled.device)  # type: ignore[union-attr]
        return F.cosine_similarity(pooled, reference[None, :], dim=-1)

    def score_next_token_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """A causal LM target per row [batch] from the logits [batch, vocab] at its position."""
        logits = logits.float()
        if self.kind == "next_token":
            return torch.log_softmax(logits, dim=-1)[:, self.token_id]
        return logits[:, self.token_id] - logits[:, self.contrast_token_id]

    def output_summary(self, outputs: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Per row: log-probabilities of the next-token (at the target position) or class
        distribution, or the embedding for encoders. [batch, D] float32."""
        if self.kind in NEXT_TOKEN_TARGETS:
            return torch.log_softmax(outputs[:, self.position].float(), dim=-1)
        if self.kind == "class_score":
            return torch.log_softmax(outputs.float(), dim=-1)
        return pooled_embedding(outputs.float(), attention_mask)

    def output_change(self, base: torch.Tensor, changed: torch.Tensor) -> torch.Tensor:
        """KL(base || changed) of distributions, or 1 - cosine of embeddings. base [D] or
        [1, D], changed [batch, D] -> [batch]."""
        base = base.reshape(1, -1)
        if self.output_change_metric == "kl_divergence":
            return (base.exp() * (base - changed)).sum(dim=-1)
        return 1.0 - F.cosine_similarity(changed, base, dim=-1)


def target_scores(
    model: LoadedModel,
    target: BoundTarget,
    arguments: Mapping[str, torch.Tensor],
    attention_mask: torch.Tensor,
) -> torch.Tensor:
    """Runs the model on forward `arguments` (input_ids or inputs_embeds with the mask and
    token types, or pixel_values) and scores the target per row [batch] (float32),
    differentiable when the inputs are; `attention_mask` [batch, tokens] marks the real
    tokens. Next-token targets compute logits from the target position on only (no
    [batch, tokens, vocab] tensor); the input may then end at the target position, since
    later tokens cannot change it (ModelKind.relevant_length)."""
    if target.kind not in NEXT_TOKEN_TARGETS:
        return target.score(model.outputs(arguments), attention_mask)
    length = attention_mask.shape[1]
    # the last `length - position` positions' logits, of which the target's is the first
    logits = model.outputs(arguments, last_positions=length - target.position)
    return target.score_next_token_logits(logits[:, 0])


def target_position(spec: TargetSpec, length: int) -> int | None:
    """The absolute position a next-token target reads in an input of `length` tokens
    (INVALID_ARGUMENT outside it); None for targets without a position."""
    if spec.kind not in NEXT_TOKEN_TARGETS:
        return None
    absolute = spec.position + length if spec.position < 0 else spec.position
    require(
        0 <= absolute < length,
        "target.position",
        f"position {spec.position} is outside the input ({length} tokens; use -{length}..{length - 1})",
    )
    return absolute


def check_target_values(description: ModelDescription, spec: TargetSpec) -> None:
    """What a target of a served kind names, checked against the model (INVALID_ARGUMENT):
    token ids within its vocabulary (both, and different, for a logit difference), a
    class index within its labels, a reference for a similarity target. Needs only the
    description, so it can run before the request is queued."""
    if spec.kind in NEXT_TOKEN_TARGETS:
        for name, value in (("token_id", spec.token_id), ("contrast_token_id", spec.contrast_token_id)):
            if value is not None:
                require(0 <= value < description.vocab_size, f"target.{name}",
                        f"{value} is outside the vocabulary [0, {description.vocab_size})")
        if spec.kind == "logit_difference":
            require(spec.token_id is not None and spec.contrast_token_id is not None, "target.logit_difference",
                    "token_id and contrast_token_id are both required")
            require(spec.token_id != spec.contrast_token_id, "target.logit_difference.contrast_token_id",
                    f"must differ from token_id ({spec.token_id}): the difference would always be 0")
    if spec.kind == "class_score" and spec.class_index is not None:
        require(0 <= spec.class_index < description.num_labels, "target.class_score.class_index",
                f"{spec.class_index} is outside [0, {description.num_labels})")
    if spec.kind == "embedding_similarity":
        require(spec.reference is not None, "target.embedding_similarity.reference", "a reference input is required")


def bind_target(model: LoadedModel, spec: TargetSpec | None, batch: EncodedBatch,
                outputs: torch.Tensor | None = None, outputs_from: int = 0) -> BoundTarget:
    """Resolves a target for the first input of `batch`: positions, the predicted token
    or class when none is given, and the reference embedding of a similarity target.
    `outputs`: the model's outputs on that input when the caller has them already (read
    without gradients), of the positions from `outputs_from` on (logits kept from the
    target's position on) or of every position."""
    spec = check_target_kind(model.description, spec)
    position = target_position(spec, batch.inputs[0].length)
    check_target_values(model.description, spec)
    next_token = spec.kind in NEXT_TOKEN_TARGETS
    token_id, contrast = (spec.token_id, spec.contrast_token_id) if next_token else (None, None)
    class_index = spec.class_index if spec.kind == "class_score" else None
    reference_embedding = None
    needs_prediction = (spec.kind == "next_token" and spec.token_id is None) or (
        spec.kind == "class_score" and spec.class_index is None
    )
    with torch.no_grad():
        if needs_prediction:
            if outputs is None:
                outputs, outputs_from = model.outputs(batch.model_inputs(slice(0, 1))), 0
            if spec.kind == "next_token":
                assert position is not None
                token_id = int(outputs[0, position - outputs_from].argmax())
            else:
                class_index = int(outputs[0].argmax())
        if spec.kind == "embedding_similarity":
            reference_embedding = model.embed_reference(spec.reference,  # type: ignore[arg-type]
                                                        "target.embedding_similarity.reference")
    return BoundTarget(
        kind=spec.kind,
        model_kind=model.kind,
        position=position,
        token_id=token_id,
        contrast_token_id=contrast,
        class_index=class_index,
        probability=spec.probability,
        reference_embedding=reference_embedding,
    )
