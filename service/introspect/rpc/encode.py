"""Plain results -> protobuf messages, split into chunks under the max message size."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from google.protobuf.message import Message
from introspect_contract import pb
from introspect_contract.tensors import encode_storage

from ..models import ModelDescription
from ..results import (
    AblationBaselineResult,
    AttentionLayerResult,
    HeadImportanceResult,
    JointAblationResult,
    LayerAblationResult,
    SaliencyResult,
    StreamStart,
    WireArray,
)

# Room for a chunk's fields other than tensor bytes (indices, head lists, framing).
CHUNK_OVERHEAD_BYTES = 8 * 1024
# Messages of about half a MiB cross gRPC 2-3x faster than one large message of the same
# bytes (measured over loopback: 4 MB in 9.4 ms as one message, 3.2 ms in 512 KiB pieces).
PREFERRED_CHUNK_BYTES = 512 * 1024


def chunk_budget(max_message_bytes: int) -> int:
    """Tensor bytes one chunk may carry: the preferred size, or less under a small limit."""
    return max(min(max_message_bytes, PREFERRED_CHUNK_BYTES) - CHUNK_OVERHEAD_BYTES, 1)


def _copied(source: object, *names: str) -> dict[str, Any]:
    """The attributes `names` of `source`, as keyword arguments of a message's fields of
    the same names."""
    return {name: getattr(source, name) for name in names}


_KINDS = {
    "encoder": pb.MODEL_KIND_ENCODER,
    "causal_lm": pb.MODEL_KIND_CAUSAL_LM,
    "sequence_classifier": pb.MODEL_KIND_SEQUENCE_CLASSIFIER,
}
_VIEWS = {
    "heads": pb.ATTENTION_VIEW_HEADS,
    "head_mean": pb.ATTENTION_VIEW_HEAD_MEAN,
    "head_max": pb.ATTENTION_VIEW_HEAD_MAX,
    "rollout": pb.ATTENTION_VIEW_ROLLOUT,
}


def model_info(description: ModelDescription) -> pb.ModelInfo:
    """ModelInfo of a loaded model."""
    return pb.ModelInfo(
        **_copied(
            description, "name", "architecture", "model_type", "num_layers", "num_heads", "num_key_value_heads",
            "max_tokens", "dtype", "device", "fingerprint", "hidden_size", "vocab_size", "num_labels",
        ),
        kind=_KINDS[description.kind],
        supported_targets=list(description.supported_targets),
    )


def stream_header(start: StreamStart, cached: bool = False) -> pb.StreamHeader:
    """The StreamHeader every stream starts with."""
    return pb.StreamHeader(
        model=start.model,
        fingerprint=start.fingerprint,
        cached=cached,
        inputs=[
            pb.TokenizedInput(
                input_index=index,
                token_ids=list(item.token_ids),
                tokens=list(item.tokens),
                truncated=item.truncated,
                original_length=item.original_length,
            )
            for index, item in enumerate(start.inputs)
        ],
    )


def _row_bytes(*arrays: WireArray | None) -> int:
    return sum(array.values.shape[-1] * array.values.itemsize for array in arrays if array is not None)


def attention_chunks(result: AttentionLayerResult, max_message_bytes: int) -> Iterator[pb.AttentionChunk]:
    """Splits one layer's result into chunks under `max_message_bytes`: by heads while a
    head's rows fit, else by query rows within one head."""
    values = result.values.values  # [heads_or_1, query, keys_or_k]
    heads_count, query_count = values.shape[0], values.shape[1]
    budget = chunk_budget(max_message_bytes)
    row_bytes = max(_row_bytes(result.values, result.key_indices), 1)
    rows_per_chunk = max(budget // row_bytes, 1)
    if rows_per_chunk >= query_count:
        heads_per_chunk = max(rows_per_chunk // max(query_count, 1), 1)
        slices = [(h, min(h + heads_per_chunk, heads_count), 0, query_count) for h in range(0, heads_count, heads_per_chunk)]
    else:
        slices = [
            (h, h + 1, q, min(q + rows_per_chunk, query_count))
            for h in range(heads_count)
            for q in range(0, query_count, rows_per_chunk)
        ]
    for position, (head_start, head_end, query_start, query_end) in enumerate(slices):
        chunk = pb.AttentionChunk(
            input_index=result.input_index,
            layer=result.layer,
            heads=list(result.heads[head_start:head_end]),
            query_start=query_start,
            query_end=query_end,
            view=_VIEWS[result.view],
            values=encode_storage(values[head_start:head_end, query_start:query_end], result.values.dtype),
            layer_complete=position == len(slices) - 1,
        )
        if result.key_indices is not None:
            indices = result.key_indices.values[head_start:head_end, query_start:query_end]
            chunk.key_indices.CopyFrom(encode_storage(indices, result.key_indices.dtype))
        yield chunk


def ablation_baseline(result: AblationBaselineResult) -> pb.AblationBaseline:
    """The unablated score message of StreamHeadAblation."""
    return pb.AblationBaseline(**_copied(result, "target_score", "output_change_metric", "num_layers", "num_heads"))


def layer_ablation(result: LayerAblationResult) -> pb.LayerAblation:
    """One layer's per-head ablation results (a few floats per head: never chunked)."""
    return pb.LayerAblation(
        layer=result.layer,
        heads=list(result.heads),
        target_delta=encode_storage(result.target_delta.values, result.target_delta.dtype),
        output_change=encode_storage(result.output_change.values, result.output_change.dtype),
    )


def joint_ablation(result: JointAblationResult) -> pb.JointAblation:
    """The joint ablation result."""
    return pb.JointAblation(
        heads=[pb.HeadRef(layer=layer, head=head) for layer, head in result.heads],
        ablated_score=result.ablated_score,
        output_change=result.output_change,
        base_continuation=list(result.base_continuation),
        ablated_continuation=list(result.ablated_continuation),
        base_continuation_tokens=list(result.base_continuation_tokens),
        ablated_continuation_tokens=list(result.ablated_continuation_tokens),
    )


def head_importance(result: HeadImportanceResult) -> pb.HeadImportance:
    """Head importance scores [layers, heads] (one float per head: never chunked)."""
    return pb.HeadImportance(importance=encode_storage(result.importance.values, result.importance.dtype))


def saliency_chunks(result: SaliencyResult, max_message_bytes: int) -> Iterator[pb.SaliencyChunk]:
    """Splits one saliency result into chunks of consecutive token positions under
    `max_message_bytes` (one chunk unless per-dimension attributions are large); only the
    last chunk of a final result is marked final."""
    positions = result.token_end - result.token_start
    budget = chunk_budget(max_message_bytes)
    row_bytes = result.scores.values.itemsize
    if result.per_dimension is not None:
        row_bytes += _row_bytes(result.per_dimension)
    rows_per_chunk = max(budget // row_bytes, 1)
    for start in range(0, max(positions, 1), rows_per_chunk):
        end = min(start + rows_per_chunk, positions)
        chunk = pb.SaliencyChunk(
            scores=encode_storage(result.scores.values[start:end], result.scores.dtype),
            **_copied(result, "target_score", "baseline_score", "steps", "convergence_delta"),
            final=result.final and end == positions,
            token_start=result.token_start + start,
            token_end=result.token_start + end,
        )
        if result.per_dimension is not None:
            chunk.per_dimension.CopyFrom(encode_storage(result.per_dimension.values[start:end], result.per_dimension.dtype))
        yield chunk


PayloadEncoder = Callable[[Any, int], Iterable[Message]]
"""(result, max message bytes) -> the payloads of the response messages that carry it."""


def _whole(encoder: Callable[[Any], Message]) -> PayloadEncoder:
    """The payload encoder of a result that always fits one message."""
    return lambda result, _max_message_bytes: (encoder(result),)


@dataclass(frozen=True)
class StreamEncoding:
    """How one streaming RPC carries results: its response type and, per result type,
    the response field (of its `payload` oneof) and the encoder of that field."""

    response_type: type[Message]
    payloads: Mapping[type, tuple[str, PayloadEncoder]]

    def messages(self, result: object, max_message_bytes: int) -> Iterator[Message]:
        """The response messages that carry `result`."""
        for result_type, (field, encoder) in self.payloads.items():
            if isinstance(result, result_type):
                for payload in encoder(result, max_message_bytes):
                    yield self.response_type(**{field: payload})
                return
        raise TypeError(f"unexpected result {type(result).__name__}")  # pragma: no cover - not this RPC's kind


_HEADER: dict[type, tuple[str, PayloadEncoder]] = {StreamStart: ("header", _whole(stream_header))}
ATTENTION = StreamEncoding(pb.StreamAttentionResponse, {**_HEADER, AttentionLayerResult: ("chunk", attention_chunks)})
"""StreamAttention: the header, then the chunks of every layer."""
SALIENCY = StreamEncoding(pb.StreamSaliencyResponse, {**_HEADER, SaliencyResult: ("chunk", saliency_chunks)})
"""StreamSaliency: the header, then the chunks of every partial and the final result."""
HEAD_ABLATION = StreamEncoding(
    pb.StreamHeadAblationResponse,
    {
        **_HEADER,
        AblationBaselineResult: ("baseline", _whole(ablation_baseline)),
        LayerAblationResult: ("layer", _whole(layer_ablation)),
        JointAblationResult: ("joint", _whole(joint_ablation)),
        HeadImportanceResult: ("importance", _whole(head_importance)),
    },
)
"""StreamHeadAblation: the header, the baseline, then layers, one joint result or one
importance grid."""
