"""Plain results -> protobuf messages, split into chunks under the max message size."""

from __future__ import annotations

from collections.abc import Iterator

from introspect_client._proto import introspect_pb2 as pb
from introspect_client.tensors import encode_storage

from ..models import ModelDescription
from ..results import AttentionLayerResult, StreamStart, WireArray

# Room for a chunk's fields other than tensor bytes (indices, head lists, framing).
CHUNK_OVERHEAD_BYTES = 8 * 1024

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
        name=description.name,
        architecture=description.architecture,
        model_type=description.model_type,
        num_layers=description.num_layers,
        num_heads=description.num_heads,
        num_key_value_heads=description.num_key_value_heads,
        max_tokens=description.max_tokens,
        dtype=description.dtype,
        device=description.device,
        fingerprint=description.fingerprint,
        kind=_KINDS[description.kind],
        hidden_size=description.hidden_size,
        vocab_size=description.vocab_size,
        num_labels=description.num_labels,
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
    budget = max(max_message_bytes - CHUNK_OVERHEAD_BYTES, 1)
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
