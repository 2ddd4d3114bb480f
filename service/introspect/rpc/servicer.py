"""The Introspection servicer: decode, hand to the data plane, encode, stream out."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator

import grpc
from introspect_client._proto import introspect_pb2 as pb
from introspect_client._proto import introspect_pb2_grpc as pb_grpc

from ..dataplane import DataPlane
from ..errors import Unimplemented
from ..results import (
    AblationBaselineResult,
    AttentionLayerResult,
    HeadImportanceResult,
    JointAblationResult,
    LayerAblationResult,
    SaliencyResult,
    StreamStart,
)
from . import decode, encode
from .status import translate_errors

# Turns one result item into the stream's messages.
ResultEncoder = Callable[[object, int], Iterator[object]]


def _attention_messages(item: object, max_message_bytes: int) -> Iterator[pb.AttentionResponse]:
    if isinstance(item, StreamStart):
        yield pb.AttentionResponse(header=encode.stream_header(item))
    elif isinstance(item, AttentionLayerResult):
        for chunk in encode.attention_chunks(item, max_message_bytes):
            yield pb.AttentionResponse(chunk=chunk)
    else:  # pragma: no cover - a method emitted something this RPC does not carry
        raise TypeError(f"unexpected result {type(item).__name__}")


def _saliency_messages(item: object, max_message_bytes: int) -> Iterator[pb.SaliencyResponse]:
    if isinstance(item, StreamStart):
        yield pb.SaliencyResponse(header=encode.stream_header(item))
    elif isinstance(item, SaliencyResult):
        for chunk in encode.saliency_chunks(item, max_message_bytes):
            yield pb.SaliencyResponse(chunk=chunk)
    else:  # pragma: no cover - a method emitted something this RPC does not carry
        raise TypeError(f"unexpected result {type(item).__name__}")


def _head_ablation_messages(item: object, max_message_bytes: int) -> Iterator[pb.HeadAblationResponse]:
    if isinstance(item, StreamStart):
        yield pb.HeadAblationResponse(header=encode.stream_header(item))
    elif isinstance(item, AblationBaselineResult):
        yield pb.HeadAblationResponse(baseline=encode.ablation_baseline(item))
    elif isinstance(item, LayerAblationResult):
        yield pb.HeadAblationResponse(layer=encode.layer_ablation(item))
    elif isinstance(item, JointAblationResult):
        yield pb.HeadAblationResponse(joint=encode.joint_ablation(item))
    elif isinstance(item, HeadImportanceResult):
        yield pb.HeadAblationResponse(importance=encode.head_importance(item))
    else:  # pragma: no cover - a method emitted something this RPC does not carry
        raise TypeError(f"unexpected result {type(item).__name__}")


class IntrospectionServicer(pb_grpc.IntrospectionServicer):
    """Implements introspect.v1.Introspection on a DataPlane."""

    def __init__(self, plane: DataPlane, max_message_bytes: int) -> None:
        self._plane = plane
        self._max_message_bytes = max_message_bytes

    async def _stream(self, query: object, messages: ResultEncoder) -> AsyncIterator[object]:
        async for item in self._plane.stream(query):
            for message in messages(item, self._max_message_bytes):
                yield message

    @translate_errors
    async def ListModels(self, request: pb.ListModelsRequest, context: grpc.aio.ServicerContext) -> pb.ListModelsResponse:
        return pb.ListModelsResponse(models=[encode.model_info(d) for d in self._plane.list_models()])

    @translate_errors
    async def GetModel(self, request: pb.GetModelRequest, context: grpc.aio.ServicerContext) -> pb.ModelInfo:
        return encode.model_info(self._plane.get_model(request.name))

    @translate_errors
    async def StreamAttention(
        self, request: pb.AttentionRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.AttentionResponse]:
        async for message in self._stream(decode.attention_query(request), _attention_messages):
            yield message  # type: ignore[misc]

    @translate_errors
    async def StreamSaliency(
        self, request: pb.SaliencyRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.SaliencyResponse]:
        async for message in self._stream(decode.saliency_query(request), _saliency_messages):
            yield message  # type: ignore[misc]

    @translate_errors
    async def StreamHeadAblation(
        self, request: pb.HeadAblationRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.HeadAblationResponse]:
        async for message in self._stream(decode.head_ablation_query(request), _head_ablation_messages):
            yield message  # type: ignore[misc]
