"""The Introspection servicer: decode, hand to the data plane, encode, stream out."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
from introspect_client._proto import introspect_pb2 as pb
from introspect_client._proto import introspect_pb2_grpc as pb_grpc

from ..dataplane import DataPlane
from . import decode, encode
from .status import translate_errors


class IntrospectionServicer(pb_grpc.IntrospectionServicer):
    """Implements introspect.v1.Introspection on a DataPlane."""

    def __init__(self, plane: DataPlane, max_message_bytes: int) -> None:
        self._plane = plane
        self._max_message_bytes = max_message_bytes

    async def _stream(self, query: object, encoding: encode.StreamEncoding) -> AsyncIterator[object]:
        async for item in self._plane.stream(query):
            for message in encoding.messages(item, self._max_message_bytes):
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
        async for message in self._stream(decode.attention_query(request), encode.ATTENTION):
            yield message  # type: ignore[misc]

    @translate_errors
    async def StreamSaliency(
        self, request: pb.SaliencyRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.SaliencyResponse]:
        async for message in self._stream(decode.saliency_query(request), encode.SALIENCY):
            yield message  # type: ignore[misc]

    @translate_errors
    async def StreamHeadAblation(
        self, request: pb.HeadAblationRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.HeadAblationResponse]:
        async for message in self._stream(decode.head_ablation_query(request), encode.HEAD_ABLATION):
            yield message  # type: ignore[misc]
