"""The data plane: what the service does, with no gRPC in it.

It looks up the model, admits the query (size limits and a full queue, before any
tokenizing: admission.py), lets the method validate it (before queueing), and runs the
method on the model's device worker, with a cancellation check at every layer of its
forwards and backwards, yielding what the method emits. A device that still runs out of
memory answers AllocatorFailure (RESOURCE_EXHAUSTED), and the server goes on.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence
from typing import TypeVar

from .admission import RequestLimits, check_inputs, check_lists, input_specs
from .batching import SharedCall
from .budget import is_allocator_failure, release_cached_memory
from .callers import current_caller
from .engine import Engine, Sink
from .errors import AllocatorFailure, ModelNotFound, Overloaded
from .hooks import cancellation_checks
from .methods import Method, method_for
from .models import LoadedModel, ModelDescription, ModelRegistry
from .requests import InputSpec

UNKNOWN_MODEL_LABEL = "unknown"
T = TypeVar("T")


class DataPlane:
    """Models plus the engine that runs methods on them."""

    def __init__(self, registry: ModelRegistry, engine: Engine, limits: RequestLimits) -> None:
        self.registry = registry
        self.engine = engine
        self.limits = limits

    def list_models(self) -> list[ModelDescription]:
        """Descriptions of every loaded model, by name."""
        return [model.description for model in self.registry]

    def get_model(self, name: str) -> ModelDescription:
        """Description of one model; ModelNotFound if it is not loaded."""
        return self.registry.get(name).description

    def model_label(self, name: str) -> str:
        """The loaded model `name` selects ('' is the default), or "unknown": a bounded
        set of names for metrics labels."""
        try:
            return self.registry.get(name).name
        except ModelNotFound:
            return UNKNOWN_MODEL_LABEL

    def queued(self) -> dict[str, int]:
        """Requests waiting for each model's device (models sharing a device share it)."""
        return {model.name: self.engine.queue_depth(model.device)[0] for model in self.registry}

    def admit(self, model: str, inputs: Sequence[tuple[str, InputSpec]]) -> LoadedModel:
        """The model a request names, once its inputs (field path, spec) are within the
        size limits and its device's queue has room; raises ModelNotFound,
        ResourceExhausted or Overloaded. Tokenizes nothing."""
        loaded = self.registry.get(model)
        check_inputs(self.limits, inputs)
        waiting, _ = self.engine.queue_depth(loaded.device)
        if waiting >= self.limits.max_queue:
            raise Overloaded(f"{waiting} requests are already waiting for {loaded.device}; retry later")
        return loaded

    async def identify(
        self, model: str, inputs: Sequence[InputSpec]
    ) -> tuple[ModelDescription, tuple[bytes, ...]]:
        """The model a request names and its inputs as the model sees them (each one's
        EncodedInput.identity: token ids, or pixels), for cache keys.
        Tokenizes off the event loop; inputs over the model's limit are cut here (the
        method still enforces the request's own truncation rule). Raises ModelNotFound
        or InvalidInput."""
        loaded = self.admit(model, [(f"inputs[{index}]", spec) for index, spec in enumerate(inputs)])

        def tokenize() -> tuple[bytes, ...]:
            return tuple(
                # reference=True: a dual encoder's text similarity reference is keyed too
                loaded.encode(spec, True, f"inputs[{index}]", reference=True).identity
                for index, spec in enumerate(inputs)
            )

        return loaded.description, await asyncio.to_thread(tokenize)

    async def stream(self, query: object) -> AsyncIterator[object]:
        """Runs the method for `query` and yields StreamStart, then its results; the
        call waits for the device in its caller's turn (introspect.callers)."""
        model = self.admit(getattr(query, "model"), list(input_specs(query)))
        check_lists(query, model.description)
        method = method_for(query)
        options = method.prepare(model.description, query)

        def work(sink: Sink) -> None:
            with cancellation_checks(sink.check):
                method.run(model, query, options, sink)

        share = _shared_call(model, method, query, options)
        async for item in self.engine.stream(model.device, _allocator_guarded(model, work), current_caller(), share):
            yield item


def _shared_call(model: LoadedModel, method: Method, query: object, options: object) -> SharedCall | None:
    """The call's work in the form that can share a forward with compatible calls of the
    same model (batching.py), when the method has one and the call can (its key is not None)."""
    sharing = method.sharing
    key = None if sharing is None else sharing.key(query, options)
    if sharing is None or key is None:
        return None
    return SharedCall(
        key=(model.name, method.name, key),
        model=model.name,
        prepare=lambda outlet: sharing.prepare(model, query, options, outlet),
        fits=lambda parts: sharing.fits(model, parts),
        run=_allocator_guarded(model, lambda parts: sharing.run(model, parts)),
    )


def _allocator_guarded(model: LoadedModel, work: Callable[[T], None]) -> Callable[[T], None]:
    """`work`, with a failed allocation turned into AllocatorFailure: the traceback (and
    the tensors its frames hold) is dropped and cached device memory handed back."""

    def guarded(argument: T) -> None:
        try:
            work(argument)
            return
        except Exception as error:
            if not is_allocator_failure(error):
                raise
            failure = AllocatorFailure(
                f"model {model.name!r} ran out of memory on {model.device} for this request; send fewer or "
                "shorter inputs or a smaller batch_size, or retry when the server is less busy"
            )
        release_cached_memory(model.device)
        raise failure

    return guarded
