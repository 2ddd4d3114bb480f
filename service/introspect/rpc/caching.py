"""The result cache in front of every server-streaming RPC whose request has a
`cache` (CachePolicy) field: present RPCs and any added later, with no per-RPC code.

A server interceptor keys each request on the model's weight fingerprint, the RPC's full
name, the canonical request (the request with `cache` cleared and `model` resolved to
the loaded model's name, serialized deterministically; image inputs cleared from it) and
what the model sees of every Input anywhere in it: token ids, or processed pixels, so the
same pixels sent as PNG, lossless WebP or raw values are one entry. Streams travel as
serialized messages: a computed one is serialized once here (the handler's serializer
passes bytes through) and a hit is sent as stored, with only its StreamHeader re-marked
`cached`. Initial metadata `introspect-cache` says hit, miss, bypass or refresh.
"""

from __future__ import annotations

import functools
import logging
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import grpc.aio
from google.protobuf.descriptor import Descriptor, ServiceDescriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass
from introspect_contract import pb
from introspect_contract.enums import CACHE_POLICY

from ..cache import Policy, ResultCache, result_key
from ..dataplane import DataPlane
from ..errors import IntrospectError, InvalidInput
from . import decode
from .intercepting import HandlerInterceptor, with_behavior
from .status import status_of

log = logging.getLogger(__name__)

METADATA_KEY = "introspect-cache"
"""Initial metadata key saying what the cache did: hit, miss, bypass or refresh."""

_POLICY_TYPE = pb.DESCRIPTOR.enum_types_by_name["CachePolicy"].full_name
_HEADER_TYPE = pb.StreamHeader.DESCRIPTOR.full_name
_INPUT_TYPE = pb.Input.DESCRIPTOR.full_name
_MEMO_ENTRIES = 4096
_MEMO_MAX_REQUEST_BYTES = 16 * 1024

def _policy(number: int) -> Policy | None:
    """The Policy of a CachePolicy number (UNSPECIFIED: use the cache); None if unknown."""
    name = CACHE_POLICY.name_of(number)
    if number == pb.CACHE_POLICY_UNSPECIFIED:
        return Policy.USE
    return None if name is None else Policy(name)


Behavior = Callable[[Any, grpc.aio.ServicerContext], AsyncIterator[Any]]


@dataclass(frozen=True)
class CacheableMethod:
    """A server-streaming RPC whose results the cache may store."""

    path: str  # "/introspect.v1.Introspection/StreamAttention"
    rpc: str  # "StreamAttention"
    response_type: type[Message]
    header_fields: tuple[str, ...]  # response fields that carry the StreamHeader


def cacheable_methods(service: ServiceDescriptor) -> dict[str, CacheableMethod]:
    """The service's server-streaming methods whose request has a CachePolicy `cache`
    field, by their gRPC path."""
    methods = {}
    for method in service.methods:
        cache_field = method.input_type.fields_by_name.get("cache")
        if method.client_streaming or not method.server_streaming or cache_field is None:
            continue
        if cache_field.enum_type is None or cache_field.enum_type.full_name != _POLICY_TYPE:
            continue
        path = f"/{service.full_name}/{method.name}"
        methods[path] = CacheableMethod(
            path=path,
            rpc=method.name,
            response_type=GetMessageClass(method.output_type),
            header_fields=_fields_of_type(method.output_type, _HEADER_TYPE),
        )
    return methods


def _fields_of_type(descriptor: Descriptor, full_name: str) -> tuple[str, ...]:
    return tuple(
        field.name
        for field in descriptor.fields
        if field.message_type is not None and field.message_type.full_name == full_name
    )


def input_messages(message: Message, path: str = "") -> Iterator[tuple[str, pb.Input]]:
    """Every Input set anywhere in `message`, in field-number order, with its field path
    (e.g. "inputs[1]", "target.embedding_similarity.reference")."""
    for field, value in message.ListFields():
        if field.message_type is None:
            continue
        name = f"{path}.{field.name}" if path else field.name
        if field.message_type.GetOptions().map_entry:
            continue
        items = [(f"{name}[{i}]", item) for i, item in enumerate(value)] if field.is_repeated else [(name, value)]
        for item_path, item in items:
            if field.message_type.full_name == _INPUT_TYPE:
                yield item_path, item
            else:
                yield from input_messages(item, item_path)


def canonical_request(request: Message, model: str) -> bytes:
    """The request as a cache key sees it: `cache` cleared, `model` resolved to the
    loaded model's name, serialized deterministically."""
    canonical = type(request)()
    canonical.CopyFrom(request)
    canonical.ClearField("cache")
    if "model" in canonical.DESCRIPTOR.fields_by_name:
        canonical.model = model  # type: ignore[attr-defined]
    return canonical.SerializeToString(deterministic=True)


def keyed_request(request: Message, model: str) -> bytes:
    """The canonical request with every image Input's source cleared (the image stays
    marked as one): an image is keyed by what the model sees, its processed pixels
    (EncodedInput.identity), not by the bytes that carried them."""
    keyed = type(request)()
    keyed.ParseFromString(canonical_request(request, model))
    for _, message in input_messages(keyed):
        if message.HasField("image"):
            message.image.Clear()
            message.image.SetInParent()
    return keyed.SerializeToString(deterministic=True)


class CacheInterceptor(HandlerInterceptor):
    """Puts a ResultCache in front of every cacheable RPC of one service."""

    def __init__(
        self, cache: ResultCache, plane: DataPlane, service: ServiceDescriptor, max_message_bytes: int
    ) -> None:
        self._cache = cache
        self._plane = plane
        self._max_message_bytes = max_message_bytes
        self._methods = cacheable_methods(service)
        # (fingerprint, RPC, canonical request) -> key. Token ids cannot change while this
        # process runs (each tokenizer is loaded once), so repeats skip tokenizing.
        self._keys: OrderedDict[tuple[str, str, bytes], str] = OrderedDict()

    def wrap(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        """Wraps the handlers of cacheable methods; everything else passes as it is."""
        cacheable = self._methods.get(method)
        if cacheable is None or handler.unary_stream is None:
            return handler
        # the handler's serializer passes bytes through (servicer.add_to_server)
        return with_behavior(handler, functools.partial(self._serve, cacheable, handler.unary_stream))

    async def _serve(
        self, method: CacheableMethod, behavior: Behavior, request: Any, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[Any]:
        policy = _policy(request.cache)
        if policy is None:
            code, message, trailers = status_of(
                InvalidInput("cache", f"unknown cache policy {request.cache}; use one of {list(CACHE_POLICY.names)}"
                             " or leave it unset (use the cache)")
            )
            await context.abort(code, message, trailing_metadata=trailers)
            return
        key = await self._key(method, request) if policy is not Policy.BYPASS else None
        if key is None:
            if policy is Policy.BYPASS:
                await context.send_initial_metadata(((METADATA_KEY, Policy.BYPASS.value),))
            async for message in behavior(request, context):
                yield message
            return
        served = await self._cache.serve(key, policy, method.rpc, lambda: _serialized(behavior, request, context))
        try:
            await context.send_initial_metadata(((METADATA_KEY, served.outcome.value),))
            mark = served.replayed
            async for data in served.messages():
                if mark:
                    data = _marked_cached(method, data)
                    mark = False
                yield data
        finally:
            await served.close()

    async def _key(self, method: CacheableMethod, request: Any) -> str | None:
        """The request's cache key; None when it cannot be keyed (unknown model, bad
        input): the handler then runs uncached and reports the problem."""
        try:
            description = self._plane.get_model(getattr(request, "model", ""))
            canonical = canonical_request(request, description.name)
            memo = (description.fingerprint, method.path, canonical)
            key = self._keys.get(memo)
            if key is not None:
                self._keys.move_to_end(memo)
                return key
            inputs = [(path, decode.input_spec(message, path)) for path, message in input_messages(request)]
            self._plane.admit(description.name, inputs)  # size limits and the queue, before tokenizing
            description, processed = await self._plane.identify(description.name, [spec for _, spec in inputs])
        except IntrospectError:
            return None
        except Exception:
            log.exception("could not build a cache key for %s; serving it uncached", method.rpc)
            return None
        serving = f"dtype={description.dtype};max_message_bytes={self._max_message_bytes}"
        key = result_key(description.fingerprint, method.path, keyed_request(request, description.name), processed,
                         serving)
        if len(canonical) <= _MEMO_MAX_REQUEST_BYTES:
            self._keys[memo] = key
            if len(self._keys) > _MEMO_ENTRIES:
                self._keys.popitem(last=False)
        return key


async def _serialized(behavior: Behavior, request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
    async for message in behavior(request, context):
        yield message if isinstance(message, bytes) else message.SerializeToString()


def _marked_cached(method: CacheableMethod, data: bytes) -> bytes:
    """A replayed stream's first message with its StreamHeader's `cached` set."""
    message = method.response_type.FromString(data)
    for name in method.header_fields:
        if message.HasField(name):
            getattr(message, name).cached = True
            return message.SerializeToString()
    return data
