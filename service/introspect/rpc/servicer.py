"""The Introspection servicer: decode, hand to the data plane, encode, stream out.

ListModels, GetModel and GetServerInfo are written here; every server-streaming RPC is made from the
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
from introspect_contract import CONTRACT_VERSION, pb
from introspect_contract import pb_grpc

from .. import __version__
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

    @translate_errors
    async def GetServerInfo(
        self, request: pb.GetServerInfoRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetServerInfoResponse:
        return pb.GetServerInfoResponse(server_version=__version__, contract_version=CONTRACT_VERSION)


for _method in METHODS:
    setattr(IntrospectionServicer, _method.rpc, _server_streaming(_method))


def _serializer(message_type: type[Message]) -> Callable[[Message | bytes], bytes]:
    """`message_type`'s serializer that passes already serialized responses (bytes:
    spliced chunks, replayed cache entries) through as they are."""
    serialize = message_type.SerializeToString

    def serialized(message: Message | bytes) -> bytes:
        return message if isinstance(message, bytes) else serialize(message)

    return serialized


def add_to_server(servicer: IntrospectionServicer, server: grpc.aio.Server) -> None:
    """Registers `servicer` for introspect.v1.Introspection, as the generated
    add_IntrospectionServicer_to_server does, with serializers that take bytes too."""
    handlers = {}
    for rpc in SERVICE.methods:
        build = grpc.unary_stream_rpc_method_handler if rpc.server_streaming else grpc.unary_unary_rpc_method_handler
        handlers[rpc.name] = build(
            getattr(servicer, rpc.name),
            request_deserializer=GetMessageClass(rpc.input_type).FromString,
            response_serializer=_serializer(GetMessageClass(rpc.output_type)),
        )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE.full_name, handlers),))
    server.add_registered_method_handlers(SERVICE.full_name, handlers)
