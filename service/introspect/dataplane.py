"""The data plane: what the service does, with no gRPC in it.

It looks up the model, lets the method validate the query (before queueing), and runs
the method on the model's device worker, yielding what the method emits.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from .engine import Engine
from .methods import method_for
from .models import ModelDescription, ModelRegistry


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

    async def stream(self, query: object) -> AsyncIterator[object]:
        """Runs the method for `query` and yields StreamStart, then its results."""
        model = self.registry.get(getattr(query, "model"))
        method = method_for(query)
        options = method.prepare(model.description, query)
        async for item in self.engine.stream(model.device, lambda sink: method.run(model, query, options, sink)):
            yield item
