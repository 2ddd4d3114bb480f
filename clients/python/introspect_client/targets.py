"""Builders of `Target` messages: the scalar that saliency attributes and ablation measures.

    from introspect_client import targets

    targets.next_token()                          # causal LM: log p(predicted next token)
    targets.logit_difference(token_id=1, contrast_token_id=2)
    targets.class_score(probability=True)         # classifier: p(predicted class)
    targets.embedding_similarity("a reference")   # encoder: cosine to a reference embedding
    targets.embedding_norm()                      # encoder: norm of the pooled embedding
"""

from __future__ import annotations

from introspect_contract import pb
from .inputs import InputLike, make_input


def next_token(position: int = -1, token_id: int | None = None) -> pb.Target:
    """Causal LM: log-probability of `token_id` (default: the model's prediction) as the
    next token after `position` (negative counts from the end; -1 is the last token)."""
    target = pb.NextTokenTarget(position=int(position))
    if token_id is not None:
        target.token_id = int(token_id)
    return pb.Target(next_token=target)


def logit_difference(token_id: int, contrast_token_id: int, position: int = -1) -> pb.Target:
    """Causal LM: logit(token_id) - logit(contrast_token_id) at `position`."""
    return pb.Target(
        logit_difference=pb.LogitDifferenceTarget(
            position=int(position), token_id=int(token_id), contrast_token_id=int(contrast_token_id)
        )
    )


def class_score(class_index: int | None = None, probability: bool = False) -> pb.Target:
    """Sequence classifier: the logit (or softmax probability) of `class_index`
    (default: the predicted class)."""
    target = pb.ClassTarget(probability=bool(probability))
    if class_index is not None:
        target.class_index = int(class_index)
    return pb.Target(class_score=target)


def embedding_similarity(reference: InputLike) -> pb.Target:
    """Encoder: cosine similarity of the mean-pooled embedding to that of `reference`
    (a text, text pair or token ids)."""
    return pb.Target(embedding_similarity=pb.EmbeddingSimilarityTarget(reference=make_input(reference)))


def embedding_norm() -> pb.Target:
    """Encoder: L2 norm of the mean-pooled embedding."""
    return pb.Target(embedding_norm=pb.EmbeddingNormTarget())
