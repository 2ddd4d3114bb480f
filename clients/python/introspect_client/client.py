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

import json
import time
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Iterator, Mapping, Sequence
from types import TracebackType
from typing import Any, Protocol, TypeVar, Unpack

import grpc
import grpc.aio

from introspect_contract import pb
from introspect_contract import pb_grpc
from .ablation import AblationAssembler, AblationOptions, AblationResult, ablation_request
from .errors import IntrospectError, translate_rpc_errors
from .head_statistics import (
    HeadStatisticsAssembler,
    HeadStatisticsOptions,
    HeadStatisticsResult,
    head_statistics_request,
)
from .inputs import InputLike, InputsLike
from .logit_lens import LogitLensAssembler, LogitLensOptions, LogitLensResult, logit_lens_request
from .query_key import QueryKeyAssembler, QueryKeyEmbeddingsResult, QueryKeyOptions, query_key_request
from .options import AttentionOptions, attention_request, int_list
from .patching import PatchingOptions, patching_request
from .patching_results import PatchingAssembler, PatchingResult
from .results import AttentionAssembler, AttentionResult
from .saliency import SaliencyAssembler, SaliencyOptions, SaliencyResult, saliency_request
from .shapley import ShapleyHeadsAssembler, ShapleyHeadsOptions, ShapleyHeadsResult, shapley_heads_request

MIB = 1024 * 1024
DEFAULT_MAX_MESSAGE_BYTES = 64 * MIB
"""Default largest message the client receives (and sends); the server's default is 4 MiB."""

Metadata = Sequence[tuple[str, str | bytes]]
ChannelOptions = Sequence[tuple[str, Any]]

SERVICE_NAME = "introspect.v1.Introspection"

DEFAULT_SERVICE_CONFIG: Mapping[str, Any] = {
    "loadBalancingConfig": [{"round_robin": {}}],
    "methodConfig": [
        {
            "name": [{"service": SERVICE_NAME}],
            "retryPolicy": {
                "maxAttempts": 3,
                "initialBackoff": "0.1s",
                "maxBackoff": "1s",
                "backoffMultiplier": 2,
                "retryableStatusCodes": ["UNAVAILABLE"],
            },
        }
    ],
}
"""The clients' default gRPC service config (pass `service_config=None` for gRPC's own
defaults: pick_first, transparent retries only).

- `round_robin`: calls are spread over every address the target resolves to (a headless
  Kubernetes Service's `dns:///` name, or an `ipv4:A:P1,B:P2` list); with one address
  it behaves as pick_first does.
- A retry policy on UNAVAILABLE for every RPC of the service (all are idempotent: the
  same request gives the same answer): gRPC retries a call, up to 3 attempts, while no
  response has started (no headers or message received), e.g. on a replica that is
  draining or gone. Once a response has started gRPC never retries; the assembled
  methods (`attention`, `saliency`, ...) then restart the stream themselves, once.
"""

STREAM_RESTARTS = 1
"""How often an assembled call restarts a stream that ended UNAVAILABLE after its
response began (gRPC's retry policy covers failures before that)."""

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


def channel_arguments(
    max_message_bytes: int, service_config: Mapping[str, Any] | None, options: ChannelOptions | None
) -> list[tuple[str, Any]]:
    """The channel arguments of a client: message size limits, the service config (as
    JSON) and the caller's `options`, which override the others by name."""
    merged: dict[str, Any] = dict(channel_options(max_message_bytes))
    if service_config is not None:
        merged["grpc.service_config"] = json.dumps(service_config)
        merged["grpc.enable_retries"] = 1
    merged.update(options or ())
    return list(merged.items())


def bearer_metadata(token: str) -> tuple[str, str]:
    """The `authorization: Bearer <token>` pair; ValueError (not naming the token) for
    one that cannot travel as a metadata value."""
    if not token or not token.isascii() or not token.isprintable() or any(c.isspace() for c in token):
        raise ValueError("the token must be non-empty printable ASCII without spaces")
    return ("authorization", f"Bearer {token}")


def _attempt_timeouts(timeout: float | None) -> Iterator[float | None]:
    """Timeouts of a call's attempts, all within the call's one deadline: the first,
    then up to STREAM_RESTARTS restarts while time is left."""
    deadline = None if timeout is None else time.monotonic() + timeout
    yield timeout
    for _ in range(STREAM_RESTARTS):
        remaining = None if deadline is None else deadline - time.monotonic()
        if remaining is not None and remaining <= 0:
            return
        yield remaining


def assembler_for(options: AttentionOptions) -> AttentionAssembler:
    """An assembler for the stream of an attention call with these options."""
    view = str(options.get("view", "heads")).strip().lower()
    return AttentionAssembler(view, int_list(options.get("heads", ()), "heads"),
                              int(options.get("query_start", 0)), int(options.get("query_end", 0)))


def saliency_assembler_for(options: SaliencyOptions) -> SaliencyAssembler:
    """An assembler for the stream of a saliency call with these options."""
    return SaliencyAssembler(str(options.get("method", "integrated_gradients")))


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
        target: str | None = None,
        *,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        timeout: float | None = None,
        metadata: Metadata | None = None,
        credentials: grpc.ChannelCredentials | None = None,
        token: str | None = None,
        options: ChannelOptions | None = None,
        service_config: Mapping[str, Any] | None = DEFAULT_SERVICE_CONFIG,
        channel: Any = None,
    ) -> None:
        if channel is None and target is None:
            raise ValueError("give a target or a channel")
        if channel is not None and (options is not None or credentials is not None):
            raise ValueError("options and credentials configure a channel the client opens, not a given one")
        self.target = target if target is not None else "<channel>"
        self.timeout = timeout
        self._metadata = tuple(metadata or ()) + ((bearer_metadata(token),) if token is not None else ())
        self._owns_channel = channel is None
        if channel is None:
            channel = self._open_channel(
                self.target, credentials, channel_arguments(max_message_bytes, service_config, options)
            )
        self._channel = channel
        self._stub = pb_grpc.IntrospectionStub(self._channel)
        # Called with every message of every stream (e.g. progress.StreamProgress), or None.
        self.on_message: Callable[[Any], None] | None = None

    @staticmethod
    def _open_channel(
        target: str, credentials: grpc.ChannelCredentials | None, options: list[tuple[str, Any]]
    ) -> Any:  # pragma: no cover - each client opens its own kind of channel
        raise NotImplementedError

    def _call_kwargs(self, timeout: float | None) -> dict[str, Any]:
        """Per-call keyword arguments: the call's timeout, else the client's, and metadata."""
        return {
            "timeout": self._timeout_of(timeout),
            "metadata": self._metadata or None,
        }

    def _timeout_of(self, timeout: float | None) -> float | None:
        """A call's timeout: its own, else the client's."""
        return self.timeout if timeout is None else timeout

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.target!r})"


class Client(_ClientBase):
    """Blocking client. Use as a context manager or call `close()`.

    Args:
        target: a gRPC target: "host:port", "dns:///name:port" (every address the name
            resolves to), or "ipv4:127.0.0.1:P1,127.0.0.1:P2" (a fixed list).
        max_message_bytes: largest message to receive (default 64 MiB).
        timeout: default deadline of every call in seconds (None: no deadline).
        metadata: (key, value) pairs sent with every call.
        credentials: TLS credentials (`grpc.ssl_channel_credentials(...)`; with a client
            certificate and key for mutual TLS); None for a plaintext channel.
        token: sends `authorization: Bearer <token>` with every call. It is kept only in
            the calls' metadata: never in `repr`, logs or error messages.
        options: extra gRPC channel arguments, e.g. `("grpc.keepalive_time_ms", 30000)`;
            they override the client's own (message sizes, service config) by name.
        service_config: the channel's gRPC service config (a JSON-like dict), by default
            `DEFAULT_SERVICE_CONFIG` (round_robin, retries on UNAVAILABLE); None for
            gRPC's defaults.
        channel: a ready channel to use instead of opening one (then `target` only names
            it in `repr`; options, credentials and service_config belong to the channel
            and cannot be given). `close()` leaves a given channel open.

    Every gRPC error is raised as `IntrospectError`; invalid option names as ValueError.

    `on_message` (attribute, default None): a callable given every streamed message as
    it arrives, e.g. `progress.StreamProgress(sys.stderr)` for a line per layer or
    refinement.

    Failover: a call that fails UNAVAILABLE before its response starts is retried by
    gRPC (service config). A stream that ends UNAVAILABLE after it started (a replica
    killed or drained mid-stream) is restarted once by the assembled methods
    (`attention`, `saliency`, `ablate`, `logit_lens`, `patch`), within the call's deadline; the
    result is built from the restarted stream only. The raw `stream_*` iterators never
    restart (they have already handed out the first messages): they raise the error.
    """

    @staticmethod
    def _open_channel(
        target: str, credentials: grpc.ChannelCredentials | None, options: list[tuple[str, Any]]
    ) -> grpc.Channel:
        if credentials is None:
            return grpc.insecure_channel(target, options=options)
        return grpc.secure_channel(target, credentials, options=options)

    def close(self) -> None:
        """Closes the channel the client opened (calls in flight are cancelled); a
        channel given to the client stays open."""
        if self._owns_channel:
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

    def server_info(self, *, timeout: float | None = None) -> pb.GetServerInfoResponse:
        """The server's version and the contract version it implements (GetServerInfo)."""
        with translate_rpc_errors():
            return self._stub.GetServerInfo(pb.GetServerInfoRequest(), **self._call_kwargs(timeout))

    def stream_attention(
        self, inputs: InputsLike | None = None, *, timeout: float | None = None, **options: Unpack[AttentionOptions]
    ) -> Iterator[pb.StreamAttentionResponse]:
        """The raw StreamAttention messages as they arrive: a header, then chunks.

        Takes the same arguments as `attention`. Options are checked before the call is
        made; leaving the loop early cancels the call. Like every `stream_*` method it
        is retried by gRPC only before the first message (service config) and never
        restarted after it: an UNAVAILABLE mid-stream raises IntrospectError, and a
        caller that restarts must discard what it has taken.
        """
        request = attention_request(inputs, **options)
        return self._stream(self._stub.StreamAttention, request, timeout)

    def attention(
        self, inputs: InputsLike | None = None, *, timeout: float | None = None, **options: Unpack[AttentionOptions]
    ) -> AttentionResult:
        """Attention maps of one input or a batch, assembled into numpy arrays.

        Args:
            inputs: a text, a (text, text_pair) tuple, a sequence of token ids, an image
                (pathlib.Path, bytes, PIL image, pixel array), or a list of those for a
                batch (see `make_inputs`).
            image: instead of `inputs`, one image (a str is then a file path); exactly
                one of `inputs` and `image` is given (TypeError otherwise).
            timeout: deadline in seconds (default: the client's).
            model: model name; "" selects the server's default.
            layers: layers to return (0-based); empty means all.
            heads: heads to return or reduce over; empty means all.
            view: "heads", "head_mean", "head_max", "rollout" or, for images,
                "mean_distance" (values [heads] per layer).
            top_k: if > 0, only the k most attended keys per query row (`key_indices`).
            dtype: "float32", "float16" or "bfloat16" values on the wire.
            rollout_residual_weight: rollout's identity weight (None: server default 0.5).
            patch_grid: images: the [CLS] row over the patches as [heads_or_1,
                grid_rows, grid_columns] per layer.
            query_start, query_end: only query rows [query_start, query_end) (negative
                counts from the end; query_end 0 is the end); each input's
                `query_start` says where its arrays' rows begin.
            truncate: cut inputs longer than the model's limit instead of failing.
            cache: "use", "bypass" or "refresh".
        """
        request = attention_request(inputs, **options)  # checks the options
        return self._assembled(self._stub.StreamAttention, request, timeout, lambda: assembler_for(options))

    def stream_ablation(
        self, input: InputLike | None = None, *, timeout: float | None = None, **options: Unpack[AblationOptions]
    ) -> Iterator[pb.StreamHeadAblationResponse]:
        """The raw StreamHeadAblation messages as they arrive: a header, the baseline, then
        one message per layer (per_head), one joint result or one importance grid.

        Takes the same arguments as `ablate`; leaving the loop early cancels the call.
        """
        request = ablation_request(input, **options)
        return self._stream(self._stub.StreamHeadAblation, request, timeout)

    def ablate(
        self, input: InputLike | None = None, *, timeout: float | None = None, **options: Unpack[AblationOptions]
    ) -> AblationResult:
        """What attention heads do for a target score and for the whole output.

        Args:
            input: a text, a (text, text_pair) tuple, a sequence of token ids or an image.
            image: instead of `input`, one image (a str is then a file path).
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
        request = ablation_request(input, **options)  # checks the options
        return self._assembled(self._stub.StreamHeadAblation, request, timeout, AblationAssembler)

    def stream_shapley_heads(
        self, input: InputLike | None = None, *, timeout: float | None = None, **options: Unpack[ShapleyHeadsOptions]
    ) -> Iterator[pb.StreamShapleyHeadsResponse]:
        """The raw StreamShapleyHeads messages as they arrive: a header, the baseline, the
        running estimates (sampling) and the final values.

        Takes the same arguments as `shapley_heads`; leaving the loop early cancels the call.
        """
        request = shapley_heads_request(input, **options)
        return self._stream(self._stub.StreamShapleyHeads, request, timeout)

    def shapley_heads(
        self, input: InputLike | None = None, *, timeout: float | None = None, **options: Unpack[ShapleyHeadsOptions]
    ) -> ShapleyHeadsResult:
        """Shapley values of attention heads for a target score (Held & Yang 2023).

        Args:
            input: a text, a (text, text_pair) tuple, a sequence of token ids or an image.
            timeout: deadline in seconds (default: the client's).
            model, target, heads, value, max_standard_error, max_permutations, seed,
            batch_size, sample, truncate, cache: see `shapley_heads_request`.

        Returns a ShapleyHeadsResult: `values` and `standard_errors` per chosen head
        (`grid()` lays them out [layers, heads]), exact with 12 heads or fewer.
        """
        request = shapley_heads_request(input, **options)  # checks the options
        return self._assembled(self._stub.StreamShapleyHeads, request, timeout, ShapleyHeadsAssembler)

    def stream_saliency(
        self, input: InputLike | None = None, *, timeout: float | None = None, **options: Unpack[SaliencyOptions]
    ) -> Iterator[pb.StreamSaliencyResponse]:
        """The raw StreamSaliency messages as they arrive: a header, then partial results
        (integrated-gradients refinements, occlusion spans, SmoothGrad batches) and the
        final one.

        Takes the same arguments as `saliency`; leaving the loop early cancels the call.
        """
        request = saliency_request(input, **options)
        return self._stream(self._stub.StreamSaliency, request, timeout)

    def saliency(
        self, input: InputLike | None = None, *, timeout: float | None = None, **options: Unpack[SaliencyOptions]
    ) -> SaliencyResult:
        """Per-token attributions of a target score to the input tokens.

        Args:
            input: a text, a (text, text_pair) tuple, a sequence of token ids or an image.
            image: instead of `input`, one image (a str is then a file path).
            timeout: deadline in seconds (default: the client's).
            model: model name; "" selects the server's default.
            target: the score to explain, from `introspect_client.targets` (e.g.
                `targets.next_token()`); the model's ModelInfo lists those it supports.
            method: "integrated_gradients" (or "ig", the default), "gradient",
                "gradient_x_input", "smoothgrad", "occlusion", "rollout", "flow"; images
                also "grad_cam", "hi_res_cam", "xgrad_cam", "layer_cam".
            baseline, rule, steps, tolerance: integrated gradients (see `saliency_request`);
                images also baselines "black", "blur" (blur_sigma) and "noise" (seed).
            noise_level, samples, seed: SmoothGrad.
            cam_layer, cam_point, also: the CAM methods (see `saliency_request`).
            upsample: images: also the grid scores resized to the processed image.
            span, stride, replacement: occlusion.
            batch_size: points, samples or variants per forward pass (0: the server chooses).
            per_dimension: also return [tokens, hidden] attributions (gradient methods).
            truncate: cut an input longer than the model's limit instead of failing.
            cache: "use", "bypass" or "refresh".

        Returns a SaliencyResult: `scores` [tokens], the target (and baseline) score, and
        for integrated gradients the steps and convergence delta of every refinement;
        images add `image` (the layout), `grid_scores`, `pixel_scores`,
        `upsampled_scores`, and `by_method` (with CAM `also`).
        """
        request = saliency_request(input, **options)  # checks the options
        return self._assembled(self._stub.StreamSaliency, request, timeout, lambda: saliency_assembler_for(options))

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
        request = logit_lens_request(input, **options)  # checks the options
        return self._assembled(self._stub.StreamLogitLens, request, timeout, LogitLensAssembler)

    def stream_query_key_embeddings(
        self, inputs: InputsLike, *, timeout: float | None = None, **options: Unpack[QueryKeyOptions]
    ) -> Iterator[pb.StreamQueryKeyEmbeddingsResponse]:
        """The raw StreamQueryKeyEmbeddings messages as they arrive: a header, the points,
        then per (layer, head) a projection (and its vectors with include_vectors).

        Takes the same arguments as `query_key_embeddings`; leaving the loop early cancels the call.
        """
        request = query_key_request(inputs, **options)
        return self._stream(self._stub.StreamQueryKeyEmbeddings, request, timeout)

    def query_key_embeddings(
        self, inputs: InputsLike, *, timeout: float | None = None, **options: Unpack[QueryKeyOptions]
    ) -> QueryKeyEmbeddingsResult:
        """Query-key embeddings (AttentionViz, Yeh et al. 2023): per layer and query head,
        the post-rotary queries and keys of every token, normalised as AttentionViz does
        (keys translated onto the queries' mean, both scaled to one mean norm) and
        projected jointly to 2-D on the server.

        Args:
            inputs: one input or several (texts, (text, text_pair) tuples, token ids).
            timeout: deadline in seconds (default: the client's).
            model: model name; "" selects the server's default.
            layers: layers (0-based); empty means all.
            heads: query heads (0-based); empty means all.
            projection: "pca" (default), "umap" or "tsne" (servers with umap-learn /
                scikit-learn only).
            include_vectors: also return the normalised vectors (at most 16 MiB).
            truncate: cut inputs longer than the model's limit instead of failing.
            cache: "use", "bypass" or "refresh".
        """
        request = query_key_request(inputs, **options)  # checks the options
        return self._assembled(self._stub.StreamQueryKeyEmbeddings, request, timeout, QueryKeyAssembler)

    def stream_head_statistics(
        self, inputs: InputsLike | None = None, *, timeout: float | None = None,
        **options: Unpack[HeadStatisticsOptions]
    ) -> Iterator[pb.StreamHeadStatisticsResponse]:
        """The raw StreamHeadStatistics messages as they arrive: a header, then per batch
        one message per input and the running aggregate.

        Takes the same arguments as `head_statistics`; leaving the loop early cancels the call.
        """
        request = head_statistics_request(inputs, **options)
        return self._stream(self._stub.StreamHeadStatistics, request, timeout)

    def head_statistics(
        self, inputs: InputsLike | None = None, *, timeout: float | None = None,
        **options: Unpack[HeadStatisticsOptions]
    ) -> HeadStatisticsResult:
        """Statistics of every attention head over the inputs, mean and standard deviation
        per layer and head (entropy, attention sinks, delimiters, mean distance,
        previous- and same-token scores, hidden-state norms; induction and retrieval
        scores for causal LMs).

        Args:
            inputs: one input or several; None for induction alone.
            timeout: deadline in seconds (default: the client's).
            model, statistics, layers, heads, induction_length, induction_samples,
            induction_seed, retrieval_steps, needle_start, needle_end, truncate, cache:
                see `head_statistics_request`.
        """
        request = head_statistics_request(inputs, **options)  # checks the options
        return self._assembled(self._stub.StreamHeadStatistics, request, timeout, HeadStatisticsAssembler)

    def stream_patch(
        self,
        clean: InputLike | None = None,
        corrupted: InputLike | None = None,
        *,
        timeout: float | None = None,
        **options: Unpack[PatchingOptions],
    ) -> Iterator[pb.StreamPatchingResponse]:
        """The raw StreamPatching messages as they arrive: a header, then per pair a
        baseline and its results, then the means over pairs.

        Takes the same arguments as `patch`; leaving the loop early cancels the call.
        """
        request = patching_request(clean, corrupted, **options)
        return self._stream(self._stub.StreamPatching, request, timeout)

    def patch(
        self,
        clean: InputLike | None = None,
        corrupted: InputLike | None = None,
        *,
        timeout: float | None = None,
        **options: Unpack[PatchingOptions],
    ) -> PatchingResult:
        """Circuits: activation or attribution patching, direct logit attribution or
        attention knockout on (clean, corrupted) pairs.

        Args:
            clean, corrupted: one pair (a text, a (text, text_pair) tuple or token ids
                each); corrupted may be None for the clean-only methods.
            pairs: instead, several (clean, corrupted[, alignment]) tuples.
            timeout: deadline in seconds (default: the client's).
            model, method, target, metric, points, direction, layers, positions,
            with_exact, knockout_queries, knockout_keys, window, alignment, batch_size,
            cache: see `patching_request`.

        Returns a PatchingResult: per pair the baseline, `maps[(method, point)]` arrays
        over the whole model (NaN where nothing was patched), correlations, logit
        attribution or knockout arrays, and `mean` over the pairs (two or more).
        """
        request = patching_request(clean, corrupted, **options)  # checks the options
        return self._assembled(self._stub.StreamPatching, request, timeout,
                               lambda: PatchingAssembler.for_request(request))

    def _assembled(
        self,
        method: Callable[..., Any],
        request: Any,
        timeout: float | None,
        new_assembler: Callable[[], _Assembler[Any, ResultT]],
    ) -> ResultT:
        """The result of a streaming call, restarted once on UNAVAILABLE (see the class)."""
        failure: IntrospectError | None = None
        for attempt_timeout in _attempt_timeouts(self._timeout_of(timeout)):
            try:
                return _assembled(self._stream(method, request, attempt_timeout), new_assembler())
            except IntrospectError as error:
                if error.code is not grpc.StatusCode.UNAVAILABLE:
                    raise
                failure = error
        assert failure is not None
        raise failure

    def _stream(self, method: Callable[..., Any], request: Any, timeout: float | None) -> Iterator[Any]:
        call = method(request, **self._call_kwargs(timeout))
        try:
            with translate_rpc_errors():
                for message in call:
                    if self.on_message is not None:
                        self.on_message(message)
                    yield message
        finally:
            call.cancel()


class AsyncClient(_ClientBase):
    """asyncio client (grpc.aio). Use `async with` or `await close()`.

    Takes the same arguments (a given `channel` is a `grpc.aio.Channel`), offers the same
    methods as `Client`, as coroutines, and fails over the same way; `stream_attention`
    returns an async iterator.
    """

    @staticmethod
    def _open_channel(
        target: str, credentials: grpc.ChannelCredentials | None, options: list[tuple[str, Any]]
    ) -> grpc.aio.Channel:
        if credentials is None:
            return grpc.aio.insecure_channel(target, options=options)
        return grpc.aio.secure_channel(target, credentials, options=options)

    async def close(self) -> None:
        """Closes the channel the client opened (calls in flight are cancelled); a
        channel given to the client stays open."""
        if self._owns_channel:
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

    async def server_info(self, *, timeout: float | None = None) -> pb.GetServerInfoResponse:
        """The server's version and the contract version it implements (GetServerInfo)."""
        with translate_rpc_errors():
            return await self._stub.GetServerInfo(pb.GetServerInfoRequest(), **self._call_kwargs(timeout))

    def stream_attention(
        self, inputs: InputsLike | None = None, *, timeout: float | None = None, **options: Unpack[AttentionOptions]
    ) -> AsyncIterator[pb.StreamAttentionResponse]:
        """The raw StreamAttention messages as they arrive (`async for`); see `Client.attention`."""
        request = attention_request(inputs, **options)
        return self._stream(self._stub.StreamAttention, request, timeout)

    async def attention(
        self, inputs: InputsLike | None = None, *, timeout: float | None = None, **options: Unpack[AttentionOptions]
    ) -> AttentionResult:
        """Attention maps of one input or a batch; see `Client.attention` for the arguments."""
        request = attention_request(inputs, **options)  # checks the options
        return await self._assembled(self._stub.StreamAttention, request, timeout, lambda: assembler_for(options))

    def stream_ablation(
        self, input: InputLike | None = None, *, timeout: float | None = None, **options: Unpack[AblationOptions]
    ) -> AsyncIterator[pb.StreamHeadAblationResponse]:
        """The raw StreamHeadAblation messages as they arrive (`async for`); see `Client.ablate`."""
        request = ablation_request(input, **options)
        return self._stream(self._stub.StreamHeadAblation, request, timeout)

    async def ablate(
        self, input: InputLike | None = None, *, timeout: float | None = None, **options: Unpack[AblationOptions]
    ) -> AblationResult:
        """Head ablation, importance or joint ablation; see `Client.ablate` for the arguments."""
        request = ablation_request(input, **options)  # checks the options
        return await self._assembled(self._stub.StreamHeadAblation, request, timeout, AblationAssembler)

    def stream_shapley_heads(
        self, input: InputLike | None = None, *, timeout: float | None = None, **options: Unpack[ShapleyHeadsOptions]
    ) -> AsyncIterator[pb.StreamShapleyHeadsResponse]:
        """The raw StreamShapleyHeads messages as they arrive (`async for`); see `Client.shapley_heads`."""
        request = shapley_heads_request(input, **options)
        return self._stream(self._stub.StreamShapleyHeads, request, timeout)

    async def shapley_heads(
        self, input: InputLike | None = None, *, timeout: float | None = None, **options: Unpack[ShapleyHeadsOptions]
    ) -> ShapleyHeadsResult:
        """Shapley head values; see `Client.shapley_heads` for the arguments."""
        request = shapley_heads_request(input, **options)  # checks the options
        return await self._assembled(self._stub.StreamShapleyHeads, request, timeout, ShapleyHeadsAssembler)

    def stream_saliency(
        self, input: InputLike | None = None, *, timeout: float | None = None, **options: Unpack[SaliencyOptions]
    ) -> AsyncIterator[pb.StreamSaliencyResponse]:
        """The raw StreamSaliency messages as they arrive (`async for`); see `Client.saliency`."""
        request = saliency_request(input, **options)
        return self._stream(self._stub.StreamSaliency, request, timeout)

    async def saliency(
        self, input: InputLike | None = None, *, timeout: float | None = None, **options: Unpack[SaliencyOptions]
    ) -> SaliencyResult:
        """Per-token attributions of a target score; see `Client.saliency` for the arguments."""
        request = saliency_request(input, **options)  # checks the options
        return await self._assembled(self._stub.StreamSaliency, request, timeout, lambda: saliency_assembler_for(options))

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
        request = logit_lens_request(input, **options)  # checks the options
        return await self._assembled(self._stub.StreamLogitLens, request, timeout, LogitLensAssembler)

    def stream_query_key_embeddings(
        self, inputs: InputsLike, *, timeout: float | None = None, **options: Unpack[QueryKeyOptions]
    ) -> AsyncIterator[pb.StreamQueryKeyEmbeddingsResponse]:
        """The raw StreamQueryKeyEmbeddings messages as they arrive (`async for`); see
        `Client.query_key_embeddings`."""
        request = query_key_request(inputs, **options)
        return self._stream(self._stub.StreamQueryKeyEmbeddings, request, timeout)

    async def query_key_embeddings(
        self, inputs: InputsLike, *, timeout: float | None = None, **options: Unpack[QueryKeyOptions]
    ) -> QueryKeyEmbeddingsResult:
        """Query-key embeddings; see `Client.query_key_embeddings` for the arguments."""
        request = query_key_request(inputs, **options)  # checks the options
        return await self._assembled(self._stub.StreamQueryKeyEmbeddings, request, timeout, QueryKeyAssembler)

    def stream_head_statistics(
        self, inputs: InputsLike | None = None, *, timeout: float | None = None,
        **options: Unpack[HeadStatisticsOptions]
    ) -> AsyncIterator[pb.StreamHeadStatisticsResponse]:
        """The raw StreamHeadStatistics messages as they arrive (`async for`); see
        `Client.head_statistics`."""
        request = head_statistics_request(inputs, **options)
        return self._stream(self._stub.StreamHeadStatistics, request, timeout)

    async def head_statistics(
        self, inputs: InputsLike | None = None, *, timeout: float | None = None,
        **options: Unpack[HeadStatisticsOptions]
    ) -> HeadStatisticsResult:
        """Head statistics; see `Client.head_statistics` for the arguments."""
        request = head_statistics_request(inputs, **options)  # checks the options
        return await self._assembled(self._stub.StreamHeadStatistics, request, timeout, HeadStatisticsAssembler)

    def stream_patch(
        self,
        clean: InputLike | None = None,
        corrupted: InputLike | None = None,
        *,
        timeout: float | None = None,
        **options: Unpack[PatchingOptions],
    ) -> AsyncIterator[pb.StreamPatchingResponse]:
        """The raw StreamPatching messages as they arrive (`async for`); see `Client.patch`."""
        request = patching_request(clean, corrupted, **options)
        return self._stream(self._stub.StreamPatching, request, timeout)

    async def patch(
        self,
        clean: InputLike | None = None,
        corrupted: InputLike | None = None,
        *,
        timeout: float | None = None,
        **options: Unpack[PatchingOptions],
    ) -> PatchingResult:
        """Circuits on (clean, corrupted) pairs; see `Client.patch` for the arguments."""
        request = patching_request(clean, corrupted, **options)  # checks the options
        return await self._assembled(self._stub.StreamPatching, request, timeout,
                                     lambda: PatchingAssembler.for_request(request))

    async def _assembled(
        self,
        method: Callable[..., Any],
        request: Any,
        timeout: float | None,
        new_assembler: Callable[[], _Assembler[Any, ResultT]],
    ) -> ResultT:
        """The result of a streaming call, restarted once on UNAVAILABLE (see `Client`)."""
        failure: IntrospectError | None = None
        for attempt_timeout in _attempt_timeouts(self._timeout_of(timeout)):
            try:
                return await _assembled_async(self._stream(method, request, attempt_timeout), new_assembler())
            except IntrospectError as error:
                if error.code is not grpc.StatusCode.UNAVAILABLE:
                    raise
                failure = error
        assert failure is not None
        raise failure

    async def _stream(self, method: Callable[..., Any], request: Any, timeout: float | None) -> AsyncIterator[Any]:
        call = method(request, **self._call_kwargs(timeout))
        try:
            with translate_rpc_errors():
                async for message in call:
                    if self.on_message is not None:
                        self.on_message(message)
                    yield message
        finally:
            call.cancel()
