"""The Introspection servicer: decode, hand to the data plane, encode, stream out.

ListModels and GetModel are written here; every server-streaming RPC is made from the
method registry (methods.METHODS): its request decodes into the method's query type and
its results encode into the response's payload fields, both by field name. An RPC of the
contract with no registered method answers UNIMPLEMENTED (the generated base class).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass
from introspect_contract import pb
from introspect_contract import pb_grpc

from ..dataplane import DataPlane
from ..methods import METHODS, Method
from . import decode, encode
from .status import translate_errors

StreamMethod = Callable[[Any, Any, grpc.aio.ServicerContext], AsyncIterator[Message]]
SERVICE = pb.DESCRIPTOR.services_by_name["Introspection"]


def _server_streaming(method: Method) -> StreamMethod:
    """The server-streaming RPC method serving `method`: the data plane's results for the
    decoded request, encoded into the RPC's response type."""
    rpc = SERVICE.methods_by_name[method.rpc]
    encoding = encode.stream_encoding(GetMessageClass(rpc.output_type), method.payloads)

    @translate_errors
    async def serve(
        self: IntrospectionServicer, request: Message, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[Message]:
        async for message in self._stream(decode.decode(method.query_type, request), encoding):
            yield message

    serve.__name__ = serve.__qualname__ = method.rpc
    return serve


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


for _method in METHODS:
    setattr(IntrospectionServicer, _method.rpc, _server_streaming(_method))
