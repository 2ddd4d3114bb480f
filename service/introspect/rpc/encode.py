"""Plain results -> protobuf messages, by field name, split into chunks under the max
message size where a result can be large.

`encode_message(source, message_type)` sets each field of the message from the source's
attribute of the same name: a plain enum name becomes its number (introspect_contract.enums),
a WireArray a Tensor, a tuple a repeated field, a dataclass (or a plain tuple, by field
order) a sub-message. A method's results reach the response's payload field its
registration names (`stream_encoding`); attention and saliency results have chunkers of
their own. Adding a method needs no change here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass
from introspect_contract import pb
from introspect_contract.enums import ATTENTION_VIEW, SALIENCY_METHOD, names_of
from introspect_contract.tensors import encode_storage

from ..models import ModelDescription
from ..results import AttentionLayerResult, ImageLayout, QueryKeyVectorsResult, SaliencyResult, StreamStart, WireArray
from .splice import Spliced, with_tensors

# Room for a chunk's fields other than tensor bytes (indices, head lists, framing).
CHUNK_OVERHEAD_BYTES = 8 * 1024
# Messages of about half a MiB cross gRPC 2-3x faster than one large message of the same
# bytes (measured over loopback: 4 MB in 9.4 ms as one message, 3.2 ms in 512 KiB pieces).
PREFERRED_CHUNK_BYTES = 512 * 1024


def chunk_budget(max_message_bytes: int) -> int:
    """Tensor bytes one chunk may carry: the preferred size, or less under a small limit."""
    return max(min(max_message_bytes, PREFERRED_CHUNK_BYTES) - CHUNK_OVERHEAD_BYTES, 1)


def encode_message(source: object, message_type: type[Message]) -> Message:
    """A `message_type` message with every field that `source` has an attribute of the same
    name for (None leaves a field unset)."""
    message = message_type()
    for descriptor in message.DESCRIPTOR.fields:
        value = getattr(source, descriptor.name, None)
        if value is not None:
            _set_field(message, descriptor, value)
    return message


def _set_field(message: Message, descriptor: FieldDescriptor, value: Any) -> None:
    name = descriptor.name
    if descriptor.is_repeated:
        container = getattr(message, name)
        if descriptor.message_type is not None:
            for item in value:
                container.add().CopyFrom(_sub_message(item, descriptor.message_type))
        else:
            container.extend(_scalar(descriptor, item) for item in value)
    elif descriptor.message_type is not None:
        getattr(message, name).CopyFrom(_sub_message(value, descriptor.message_type))
    else:
        setattr(message, name, _scalar(descriptor, value))


def _scalar(descriptor: FieldDescriptor, value: Any) -> Any:
    if descriptor.enum_type is not None and isinstance(value, str):
        return names_of(descriptor.enum_type).number(value)
    return value


def _sub_message(value: Any, descriptor: Descriptor) -> Message:
    if isinstance(value, Message):
        return value
    if isinstance(value, WireArray):
        return encode_storage(value.values, value.dtype)
    message_type = GetMessageClass(descriptor)
    if isinstance(value, tuple) and not hasattr(value, "_fields"):  # plain tuple: by field order
        return message_type(**{field.name: item for field, item in zip(descriptor.fields, value)})
    return encode_message(value, message_type)


def model_info(description: ModelDescription) -> pb.ModelInfo:
    """ModelInfo of a loaded model."""
    return encode_message(description, pb.ModelInfo)  # type: ignore[return-value]


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
                image=None if item.image is None else _image_layout(item.image),
            )
            for index, item in enumerate(start.inputs)
        ],
    )


def _image_layout(layout: ImageLayout) -> pb.ImageLayout:
    message = encode_message(layout, pb.ImageLayout)
    message.first_patch = layout.first_patch  # type: ignore[attr-defined]
    return message  # type: ignore[return-value]


def _row_bytes(*arrays: WireArray | None) -> int:
    return sum(array.values.shape[-1] * array.values.itemsize for array in arrays if array is not None)


def attention_chunks(result: AttentionLayerResult, max_message_bytes: int) -> Iterator[Spliced]:
    """Splits one layer's result into chunks under `max_message_bytes`: by heads while a
    head's rows fit, else by query rows within one head. Chunks come spliced (splice.py):
    the maps are copied once, when the response is serialized."""
    values = result.values.values  # [heads_or_1, query, keys_or_k], or [heads_or_1, grid_rows, grid_columns]
    heads_count, query_count = values.shape[0], values.shape[1]
    budget = chunk_budget(max_message_bytes)
    row_bytes = max(values.shape[-1] * values.itemsize + _row_bytes(result.key_indices), 1)
    rows_per_chunk = max(budget // row_bytes, 1)
    if result.grid_rows:
        # a patch grid is query row 0 (the [CLS] row) whatever its shape: split by heads only
        heads_per_chunk = max(rows_per_chunk // max(query_count, 1), 1)
        slices = [(h, min(h + heads_per_chunk, heads_count), 0, 1)
                  for h in range(0, heads_count, heads_per_chunk)]
    elif rows_per_chunk >= query_count:
        heads_per_chunk = max(rows_per_chunk // max(query_count, 1), 1)
        slices = [(h, min(h + heads_per_chunk, heads_count), 0, query_count) for h in range(0, heads_count, heads_per_chunk)]
    else:
        slices = [
            (h, h + 1, q, min(q + rows_per_chunk, query_count))
            for h in range(heads_count)
            for q in range(0, query_count, rows_per_chunk)
        ]
    for position, (head_start, head_end, query_start, query_end) in enumerate(slices):
        rows = slice(None) if result.grid_rows else slice(query_start, query_end)
        chunk = pb.AttentionChunk(
            input_index=result.input_index,
            layer=result.layer,
            heads=list(result.heads[head_start:head_end]),
            query_start=result.query_start + query_start,
            query_end=result.query_start + query_end,
            view=ATTENTION_VIEW.number(result.view),
            layer_complete=position == len(slices) - 1,
            grid_rows=result.grid_rows,
            grid_columns=result.grid_columns,
        )
        tensors = {"values": (values[head_start:head_end, rows], result.values.dtype)}
        if result.key_indices is not None:
            tensors["key_indices"] = (result.key_indices.values[head_start:head_end, rows], result.key_indices.dtype)
        yield with_tensors(chunk, tensors)


def saliency_chunks(result: SaliencyResult, max_message_bytes: int) -> Iterator[pb.SaliencyChunk]:
    """Splits one saliency result into chunks of consecutive token positions under
    `max_message_bytes` (one chunk unless per-dimension attributions are large); only the
    last chunk of a final result is marked final (and converged, if it is)."""
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
            target_score=result.target_score,
            baseline_score=result.baseline_score,
            steps=result.steps,
            convergence_delta=result.convergence_delta,
            final=result.final and end == positions,
            converged=result.converged and end == positions,
            token_start=result.token_start + start,
            token_end=result.token_start + end,
            batch_size=result.batch_size,
            method=SALIENCY_METHOD.number(result.method) if result.method else 0,
        )
        if result.per_dimension is not None:
            chunk.per_dimension.CopyFrom(encode_storage(result.per_dimension.values[start:end], result.per_dimension.dtype))
        if end == positions:  # image maps ride on the last chunk
            for name in ("grid_scores", "pixel_scores", "upsampled_scores"):
                array = getattr(result, name)
                if array is not None:
                    getattr(chunk, name).CopyFrom(encode_storage(array.values, array.dtype))
        yield chunk


def query_key_vector_chunks(result: QueryKeyVectorsResult, max_message_bytes: int) -> Iterator[Spliced]:
    """Splits one head's normalised vectors [points, head_dim] into QueryKeyVectors of
    consecutive points under `max_message_bytes`."""
    values = result.vectors.values
    count = values.shape[0]
    rows_per_chunk = max(chunk_budget(max_message_bytes) // max(_row_bytes(result.vectors), 1), 1)
    for start in range(0, max(count, 1), rows_per_chunk):
        end = min(start + rows_per_chunk, count)
        chunk = pb.QueryKeyVectors(layer=result.layer, head=result.head, point_start=start, point_end=end)
        yield with_tensors(chunk, {"vectors": (values[start:end], result.vectors.dtype)})


PayloadEncoder = Callable[[Any, int], Iterable[Message | Spliced]]
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

    def messages(self, result: object, max_message_bytes: int) -> Iterator[Message | bytes]:
        """The response messages that carry `result` (a spliced payload's response
        already serialized)."""
        for result_type, (field, encoder) in self.payloads.items():
            if isinstance(result, result_type):
                for payload in encoder(result, max_message_bytes):
                    if isinstance(payload, Spliced):
                        number = self.response_type.DESCRIPTOR.fields_by_name[field].number
                        yield payload.within(number).serialized()
                    else:
                        yield self.response_type(**{field: payload})
                return
        raise TypeError(f"unexpected result {type(result).__name__}")  # pragma: no cover - not this RPC's kind


CHUNKERS: Mapping[type, PayloadEncoder] = {AttentionLayerResult: attention_chunks, SaliencyResult: saliency_chunks,
                                           QueryKeyVectorsResult: query_key_vector_chunks}
"""Result types that can outgrow one message, and their chunkers; every other result
type is one message, encoded by field name."""


def stream_encoding(response_type: type[Message], payloads: Mapping[type, str]) -> StreamEncoding:
    """How a streaming RPC with `response_type` carries a method's results: StreamStart in
    `header`, then each result type in the payload field `payloads` names. A result type
    encoded by field name must have no field its message lacks (TypeError otherwise)."""
    fields = response_type.DESCRIPTOR.fields_by_name
    table: dict[type, tuple[str, PayloadEncoder]] = {StreamStart: ("header", _whole(stream_header))}
    for result_type, field in payloads.items():
        encoder = CHUNKERS.get(result_type)
        if encoder is None:
            message_type = GetMessageClass(fields[field].message_type)
            known = message_type.DESCRIPTOR.fields_by_name
            missing = [item.name for item in dataclasses.fields(result_type) if item.name not in known]
            if missing:
                raise TypeError(f"{result_type.__name__} fields {missing} are not in {message_type.__name__}")
            encoder = _whole(partial(encode_message, message_type=message_type))
        table[result_type] = (field, encoder)
    return StreamEncoding(response_type, table)
