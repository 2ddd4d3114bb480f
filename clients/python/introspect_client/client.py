"""Sync and async clients of the introspect.v1.Introspection service.

Both share everything but the channel: request building (`options`, `inputs`), result
assembly (`results`) and error translation (`errors`). They differ only in whether a
call is awaited.

    with Client("127.0.0.1:50051") as client:
        result = client.attention("The cat sat on the mat.", layers=[5], view="head_mean")
        matrix = result[0].layers[5][0]  # [query, keys]

    async with AsyncClient("127.0.0.1:50051") as client:
        result = await client.attention(["first text", ("question", "passage")])
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Iterator, Sequence
from types import TracebackType
from typing import Any, Protocol, TypeVar, Unpack

import grpc
import grpc.aio

from introspect_contract import pb
from introspect_contract import pb_grpc
from .ablation import AblationAssembler, AblationOptions, AblationResult, ablation_request
from .errors import translate_rpc_errors
from .inputs import InputLike, InputsLike
from .logit_lens import LogitLensAssembler, LogitLensOptions, LogitLensResult, logit_lens_request
from .options import AttentionOptions, attention_request, int_list
from .results import AttentionAssembler, AttentionResult
from .saliency import SaliencyAssembler, SaliencyOptions, SaliencyResult, saliency_request

MIB = 1024 * 1024
DEFAULT_MAX_MESSAGE_BYTES = 64 * MIB
"""Default largest message the client receives (and sends); the server's default is 4 MiB."""

Metadata = Sequence[tuple[str, str | bytes]]

MessageT = TypeVar("MessageT", contravariant=True)
ResultT = TypeVar("ResultT", covariant=True)


def channel_options(max_message_bytes: int) -> list[tuple[str, int]]:
    """Channel arguments of both clients."""
    if max_message_bytes <= 0:
        raise ValueError(f"max_message_bytes must be positive, got {max_message_bytes}")
    return [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
    ]


def assembler_for(options: AttentionOptions) -> AttentionAssembler:
    """An assembler for the stream of an attention call with these options."""
    view = str(options.get("view", "heads")).strip().lower()
    return AttentionAssembler(view, int_list(options.get("heads", ()), "heads"))


class _Assembler(Protocol[MessageT, ResultT]):
    """Collects the messages of one stream into a result."""

    def add(self, message: MessageT) -> None:
        """Takes the next message of the stream."""

    def result(self) -> ResultT:
        """The assembled result."""


def _assembled(messages: Iterable[MessageT], assembler: _Assembler[MessageT, ResultT]) -> ResultT:
    """The result of `assembler` fed every message of a stream."""
    for message in messages:
        assembler.add(message)
    return assembler.result()


async def _assembled_async(messages: AsyncIterable[MessageT], assembler: _Assembler[MessageT, ResultT]) -> ResultT:
    """The result of `assembler` fed every message of an async stream."""
    async for message in messages:
        assembler.add(message)
    return assembler.result()


class _ClientBase:
    """Configuration shared by Client and AsyncClient."""

    def __init__(
        self,
        target: str,
        *,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        timeout: float | None = None,
        metadata: Metadata | None = None,
        credentials: grpc.ChannelCredentials | None = None,
    ) -> None:
        self.target = target
        self.timeout = timeout
        self._metadata = tuple(metadata or ())
        self._options = channel_options(max_message_bytes)
        self._channel = self._open_channel(target, credentials, self._options)
        self._stub = pb_grpc.IntrospectionStub(self._channel)

    @staticmethod
    def _open_channel(
        target: str, credentials: grpc.ChannelCredentials | None, options: list[tuple[str, int]]
    ) -> Any:  # pragma: no cover - each client opens its own kind of channel
        raise NotImplementedError

    def _call_kwargs(self, timeout: float | None) -> dict[str, Any]:
        """Per-call keyword arguments: the call's timeout, else the client's, and metadata."""
        return {
            "timeout": self.timeout if timeout is None else timeout,
            "metadata": self._metadata or None,
        }

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.target!r})"


class Client(_ClientBase):
    """Blocking client. Use as a context manager or call `close()`.

    Args:
        target: "host:port" of the server.
        max_message_bytes: largest message to receive (default 64 MiB).
        timeout: default deadline of every call in seconds (None: no deadline).
        metadata: (key, value) pairs sent with every call (e.g. authorization).
        credentials: TLS credentials; None for a plaintext channel.

    Every gRPC error is raised as `IntrospectError`; invalid option names as ValueError.
    """

    @staticmethod
    def _open_channel(
        target: str, credentials: grpc.ChannelCredentials | None, options: list[tuple[str, int]]
    ) -> grpc.Channel:
        if credentials is None:
            return grpc.insecure_channel(target, options=options)
        return grpc.secure_channel(target, credentials, options=options)

    def close(self) -> None:
        """Closes the channel; calls in flight are cancelled."""
        self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()

    def list_models(self, *, timeout: float | None = None) -> list[pb.ModelInfo]:
        """Every model the server has loaded, sorted by name."""
        with translate_rpc_errors():
            response = self._stub.ListModels(pb.ListModelsRequest(), **self._call_kwargs(timeout))
        return list(response.models)

    def get_model(self, name: str, *, timeout: float | None = None) -> pb.ModelInfo:
        """Description of the model `name` ("" for the server's default model)."""
        with translate_rpc_errors():
            return self._stub.GetModel(pb.GetModelRequest(name=name), **self._call_kwargs(timeout)).model

    def stream_attention(
        self, inputs: InputsLike, *, timeout: float | None = None, **options: Unpack[AttentionOptions]
    ) -> Iterator[pb.StreamAttentionResponse]:
        """The raw StreamAttention messages as they arrive: a header, then chunks.

        Takes the same arguments as `attention`. Options are checked before the call is
        made; leaving the loop early cancels the call.
        """
        request = attention_request(inputs, **options)
        return self._stream(self._stub.StreamAttention, request, timeout)

    def attention(
        self, inputs: InputsLike, *, timeout: float | None = None, **options: Unpack[AttentionOptions]
    ) -> AttentionResult:
        """Attention maps of one input or a batch, assembled into numpy arrays.

        Args:
            inputs: a text, a (text, text_pair) tuple, a sequence of token ids, or a list
                of those for a batch (see `make_inputs`).
            timeout: deadline in seconds (default: the client's).
            model: model name; "" selects the server's default.
            layers: layers to return (0-based); empty means all.
            heads: heads to return or reduce over; empty means all.
            view: "heads", "head_mean", "head_max" or "rollout".
            top_k: if > 0, only the k most attended keys per query row (`key_indices`).
            dtype: "float32", "float16" or "bfloat16" values on the wire.
            rollout_residual_weight: rollout's identity weight (None: server default 0.5).
            truncate: cut inputs longer than the model's limit instead of failing.
            cache: "use", "bypass" or "refresh".
        """
        messages = self.stream_attention(inputs, timeout=timeout, **options)  # checks the options
        return _assembled(messages, assembler_for(options))

    def stream_ablation(
        self, input: InputLike, *, timeout: float | None = None, **options: Unpack[AblationOptions]
    ) -> Iterator[pb.StreamHeadAblationResponse]:
        """The raw StreamHeadAblation messages as they arrive: a header, the baseline, then
        one message per layer (per_head), one joint result or one importance grid.

        Takes the same arguments as `ablate`; leaving the loop early cancels the call.
        """
        request = ablation_request(input, **options)
        return self._stream(self._stub.StreamHeadAblation, request, timeout)

    def ablate(
        self, input: InputLike, *, timeout: float | None = None, **options: Unpack[AblationOptions]
    ) -> AblationResult:
        """What attention heads do for a target score and for the whole output.

        Args:
            input: a text, a (text, text_pair) tuple or a sequence of token ids.
            timeout: deadline in seconds (default: the client's).
            model: model name; "" selects the server's default.
            target: the score to measure, from `introspect_client.targets` (e.g.
                `targets.next_token()`); the model's ModelInfo lists those it supports.
            mode: "per_head" (each head knocked out on its own), "joint" (the `heads`
                together) or "importance" (d target / d gate of every head).
            value: "zero" or "mean" (a head's output replaced by its mean output).
            heads: (layer, head) pairs; per_head: the heads to ablate (empty: all);
                joint: the set; importance: the heads to report (empty: all).
            mean_references: value "mean": inputs to take the mean over (default: the input).
            continuation_tokens: joint on causal LMs: greedy continuation length.
            batch_size: ablated variants per forward pass (0: the server chooses).
            truncate: cut an input longer than the model's limit instead of failing.
            cache: "use", "bypass" or "refresh".

        Returns an AblationResult: per_head fills `target_delta` and `output_change`
        ([layers, heads], NaN for heads not ablated), joint fills `joint`, importance
        fills `importance`.
        """
        messages = self.stream_ablation(input, timeout=timeout, **options)  # checks the options
        return _assembled(messages, AblationAssembler())

    def stream_saliency(
        self, input: InputLike, *, timeout: float | None = None, **options: Unpack[SaliencyOptions]
    ) -> Iterator[pb.StreamSaliencyResponse]:
        """The raw StreamSaliency messages as they arrive: a header, then partial results
        (integrated-gradients refinements, occlusion spans, SmoothGrad batches) and the
        final one.

        Takes the same arguments as `saliency`; leaving the loop early cancels the call.
        """
        request = saliency_request(input, **options)
        return self._stream(self._stub.StreamSaliency, request, timeout)

    def saliency(
        self, input: InputLike, *, timeout: float | None = None, **options: Unpack[SaliencyOptions]
    ) -> SaliencyResult:
        """Per-token attributions of a target score to the input tokens.

        Args:
            input: a text, a (text, text_pair) tuple or a sequence of token ids.
            timeout: deadline in seconds (default: the client's).
            model: model name; "" selects the server's default.
            target: the score to explain, from `introspect_client.targets` (e.g.
                `targets.next_token()`); the model's ModelInfo lists those it supports.
            method: "integrated_gradients" (or "ig", the default), "gradient",
                "gradient_x_input", "smoothgrad", "occlusion", "rollout", "flow".
            baseline, rule, steps, tolerance: integrated gradients (see `saliency_request`).
            noise_level, samples, seed: SmoothGrad.
            span, stride, replacement: occlusion.
            batch_size: points, samples or variants per forward pass (0: the server chooses).
            per_dimension: also return [tokens, hidden] attributions (gradient methods).
            truncate: cut an input longer than the model's limit instead of failing.
            cache: "use", "bypass" or "refresh".

        Returns a SaliencyResult: `scores` [tokens], the target (and baseline) score, and
        for integrated gradients the steps and convergence delta of every refinement.
        """
        messages = self.stream_saliency(input, timeout=timeout, **options)  # checks the options
        return _assembled(messages, SaliencyAssembler())

    def stream_logit_lens(
        self, input: InputLike, *, timeout: float | None = None, **options: Unpack[LogitLensOptions]
    ) -> Iterator[pb.StreamLogitLensResponse]:
        """The raw StreamLogitLens messages as they arrive: a header, then one layer each.

        Takes the same arguments as `logit_lens`; leaving the loop early cancels the call.
        """
        request = logit_lens_request(input, **options)
        return self._stream(self._stub.StreamLogitLens, request, timeout)

    def logit_lens(
        self, input: InputLike, *, timeout: float | None = None, **options: Unpack[LogitLensOptions]
    ) -> LogitLensResult:
        """The logit lens: per layer and position, the residual stream through the model's
        final norm and unembedding (models with an LM head).

        Args:
            input: a text, a (text, text_pair) tuple or a sequence of token ids.
            timeout: deadline in seconds (default: the client's).
            model: model name; "" selects the server's default.
            layers: layers to read (0-based); empty means all.
            positions: token positions (negative from the end); empty means all.
            top_k: next tokens per layer and position (0: 5).
            token_id: token whose probability is tracked (None: the model's own final
                prediction at each position).
            truncate: cut an input longer than the model's limit instead of failing.
            cache: "use", "bypass" or "refresh".
        """
        messages = self.stream_logit_lens(input, timeout=timeout, **options)  # checks the options
        return _assembled(messages, LogitLensAssembler())

    def _stream(self, method: Callable[..., Any], request: Any, timeout: float | None) -> Iterator[Any]:
        call = method(request, **self._call_kwargs(timeout))
        try:
            with translate_rpc_errors():
                yield from call
        finally:
            call.cancel()


class AsyncClient(_ClientBase):
    """asyncio client (grpc.aio). Use `async with` or `await close()`.

    Takes the same arguments and offers the same methods as `Client`, as coroutines;
    `stream_attention` returns an async iterator.
    """

    @staticmethod
    def _open_channel(
        target: str, credentials: grpc.ChannelCredentials | None, options: list[tuple[str, int]]
    ) -> grpc.aio.Channel:
        if credentials is None:
            return grpc.aio.insecure_channel(target, options=options)
        return grpc.aio.secure_channel(target, credentials, options=options)

    async def close(self) -> None:
        """Closes the channel; calls in flight are cancelled."""
        await self._channel.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        await self.close()

    async def list_models(self, *, timeout: float | None = None) -> list[pb.ModelInfo]:
        """Every model the server has loaded, sorted by name."""
        with translate_rpc_errors():
            response = await self._stub.ListModels(pb.ListModelsRequest(), **self._call_kwargs(timeout))
        return list(response.models)

    async def get_model(self, name: str, *, timeout: float | None = None) -> pb.ModelInfo:
        """Description of the model `name` ("" for the server's default model)."""
        with translate_rpc_errors():
            return (await self._stub.GetModel(pb.GetModelRequest(name=name), **self._call_kwargs(timeout))).model

    def stream_attention(
        self, inputs: InputsLike, *, timeout: float | None = None, **options: Unpack[AttentionOptions]
    ) -> AsyncIterator[pb.StreamAttentionResponse]:
        """The raw StreamAttention messages as they arrive (`async for`); see `Client.attention`."""
        request = attention_request(inputs, **options)
        return self._stream(self._stub.StreamAttention, request, timeout)

    async def attention(
        self, inputs: InputsLike, *, timeout: float | None = None, **options: Unpack[AttentionOptions]
    ) -> AttentionResult:
        """Attention maps of one input or a batch; see `Client.attention` for the arguments."""
        messages = self.stream_attention(inputs, timeout=timeout, **options)  # checks the options
        return await _assembled_async(messages, assembler_for(options))

    def stream_ablation(
        self, input: InputLike, *, timeout: float | None = None, **options: Unpack[AblationOptions]
    ) -> AsyncIterator[pb.StreamHeadAblationResponse]:
        """The raw StreamHeadAblation messages as they arrive (`async for`); see `Client.ablate`."""
        request = ablation_request(input, **options)
        return self._stream(self._stub.StreamHeadAblation, request, timeout)

    async def ablate(
        self, input: InputLike, *, timeout: float | None = None, **options: Unpack[AblationOptions]
    ) -> AblationResult:
        """Head ablation, importance or joint ablation; see `Client.ablate` for the arguments."""
        messages = self.stream_ablation(input, timeout=timeout, **options)  # checks the options
        return await _assembled_async(messages, AblationAssembler())

    def stream_saliency(
        self, input: InputLike, *, timeout: float | None = None, **options: Unpack[SaliencyOptions]
    ) -> AsyncIterator[pb.StreamSaliencyResponse]:
        """The raw StreamSaliency messages as they arrive (`async for`); see `Client.saliency`."""
        request = saliency_request(input, **options)
        return self._stream(self._stub.StreamSaliency, request, timeout)

    async def saliency(
        self, input: InputLike, *, timeout: float | None = None, **options: Unpack[SaliencyOptions]
    ) -> SaliencyResult:
        """Per-token attributions of a target score; see `Client.saliency` for the arguments."""
        messages = self.stream_saliency(input, timeout=timeout, **options)  # checks the options
        return await _assembled_async(messages, SaliencyAssembler())

    def stream_logit_lens(
        self, input: InputLike, *, timeout: float | None = None, **options: Unpack[LogitLensOptions]
    ) -> AsyncIterator[pb.StreamLogitLensResponse]:
        """The raw StreamLogitLens messages as they arrive (`async for`); see `Client.logit_lens`."""
        request = logit_lens_request(input, **options)
        return self._stream(self._stub.StreamLogitLens, request, timeout)

    async def logit_lens(
        self, input: InputLike, *, timeout: float | None = None, **options: Unpack[LogitLensOptions]
    ) -> LogitLensResult:
        """The logit lens; see `Client.logit_lens` for the arguments."""
        messages = self.stream_logit_lens(input, timeout=timeout, **options)  # checks the options
        return await _assembled_async(messages, LogitLensAssembler())

    async def _stream(self, method: Callable[..., Any], request: Any, timeout: float | None) -> AsyncIterator[Any]:
        call = method(request, **self._call_kwargs(timeout))
        try:
            with translate_rpc_errors():
                async for message in call:
                    yield message
        finally:
            call.cancel()
