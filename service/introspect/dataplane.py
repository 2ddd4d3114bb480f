"""The data plane: what the service does, with no gRPC in it.

It looks up the model, lets the method validate the query (before queueing), and runs
the method on the model's device worker, with a cancellation check at every layer of its
forwards and backwards, yielding what the method emits.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence

from .engine import Engine, Sink
from .errors import ModelNotFound
from .hooks import cancellation_checks
from .methods import method_for
from .models import ModelDescription, ModelRegistry
from .requests import InputSpec

UNKNOWN_MODEL_LABEL = "unknown"


class DataPlane:
    """Models plus the engine that runs methods on them."""

    def __init__(self, registry: ModelRegistry, engine: Engine) -> None:
        self.registry = registry
        self.engine = engine

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

    async def identify(
        self, model: str, inputs: Sequence[InputSpec]
    ) -> tuple[ModelDescription, tuple[bytes, ...]]:
        """The model a request names and its inputs as the model sees them (each one's
        EncodedInput.identity: token ids, or pixels), for cache keys.
        Tokenizes off the event loop; inputs over the model's limit are cut here (the
        method still enforces the request's own truncation rule). Raises ModelNotFound
        or InvalidInput."""
        loaded = self.registry.get(model)

        def tokenize() -> tuple[bytes, ...]:
            return tuple(
                loaded.encode(spec, True, f"inputs[{index}]").identity for index, spec in enumerate(inputs)
            )

        return loaded.description, await asyncio.to_thread(tokenize)

    async def stream(self, query: object) -> AsyncIterator[object]:
        """Runs the method for `query` and yields StreamStart, then its results."""
        model = self.registry.get(getattr(query, "model"))
        method = method_for(query)
        options = method.prepare(model.description, query)

        def work(sink: Sink) -> None:
            with cancellation_checks(sink.check):
                method.run(model, query, options, sink)

        async for item in self.engine.stream(model.device, work):
            yield item
