"""The Introspection servicer: decode, hand to the data plane, encode, stream out."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
from google.protobuf.message import Message
from introspect_contract import pb
from introspect_contract import pb_grpc

from ..dataplane import DataPlane
from . import decode, encode
from .status import translate_errors

StreamMethod = Callable[[Any, Any, grpc.aio.ServicerContext], AsyncIterator[Message]]


def _server_streaming(decode_request: Callable[[Any], object], encoding: encode.StreamEncoding) -> StreamMethod:
    """A server-streaming RPC method: the data plane's results for the decoded request,
    encoded as `encoding` says."""

    @translate_errors
    async def method(
        self: IntrospectionServicer, request: Message, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[Message]:
        async for message in self._stream(decode_request(request), encoding):
            yield message

    return method


class IntrospectionServicer(pb_grpc.IntrospectionServicer):
    """Implements introspect.v1.Introspection on a DataPlane."""

    def __init__(self, plane: DataPlane, max_message_bytes: int) -> None:
        self._plane = plane
        self._max_message_bytes = max_message_bytes

    async def _stream(self, query: object, encoding: encode.StreamEncoding) -> AsyncIterator[Message]:
        async for item in self._plane.stream(query):
            for message in encoding.messages(item, self._max_message_bytes):
                yield message

    @translate_errors
    async def ListModels(self, request: pb.ListModelsRequest, context: grpc.aio.ServicerContext) -> pb.ListModelsResponse:
        return pb.ListModelsResponse(models=[encode.model_info(d) for d in self._plane.list_models()])

    @translate_errors
    async def GetModel(self, request: pb.GetModelRequest, context: grpc.aio.ServicerContext) -> pb.GetModelResponse:
        return pb.GetModelResponse(model=encode.model_info(self._plane.get_model(request.name)))

    StreamAttention = _server_streaming(decode.attention_query, encode.ATTENTION)
    StreamSaliency = _server_streaming(decode.saliency_query, encode.SALIENCY)
    StreamHeadAblation = _server_streaming(decode.head_ablation_query, encode.HEAD_ABLATION)
