"""The engine streams results while the forward pass runs and stops when the caller goes.

In-process: the engine and the attention method on a real model, with an independent
forward hook on the last transformer layer as the clock.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import torch
from introspect.config import ModelSpec
from introspect.engine import Engine
from introspect.methods import method_for
from introspect.models import load_model
from introspect.requests import AttentionQuery, InputSpec
from introspect.results import AttentionLayerResult, StreamStart


def _last_layer(model: torch.nn.Module) -> torch.nn.Module:
    return model.encoder.layer[-1]


async def test_first_layer_reaches_the_caller_before_the_last_layer_runs(model_dirs: dict[str, Path]) -> None:
    loaded = load_model(ModelSpec("minilm", model_dirs["minilm"]), torch.device("cpu"), "float32")
    first_layer_received = threading.Event()
    seen_by_last_layer: list[bool] = []

    def last_layer_starts(*_: object) -> None:
        # Holds the forward pass before the last layer until the caller has layer 0
        # (or 10 s pass, which would mean nothing is streamed before the end).
        seen_by_last_layer.append(first_layer_received.wait(10))

    hook = _last_layer(loaded.model).register_forward_pre_hook(last_layer_starts)
    query = AttentionQuery(model="minilm", inputs=(InputSpec(text="streaming as the layers run"),))
    method = method_for(query)
    options = method.prepare(loaded.description, query)
    engine = Engine(max_queue=4)
    received: list[int] = []
    try:
        async for item in engine.stream(loaded.device, lambda sink: method.run(loaded, query, options, sink)):
            if isinstance(item, AttentionLayerResult):
                received.append(item.layer)
                first_layer_received.set()
            else:
                assert isinstance(item, StreamStart)
    finally:
        hook.remove()
        engine.shutdown()
    assert seen_by_last_layer == [True]
    assert received == list(range(6))


def test_emission_precedes_the_last_layer(model_dirs: dict[str, Path]) -> None:
    loaded = load_model(ModelSpec("minilm", model_dirs["minilm"]), torch.device("cpu"), "float32")
    events: list[str] = []
    hook = _last_layer(loaded.model).register_forward_pre_hook(lambda *_: events.append("last layer starts"))

    class RecordingSink:
        def check(self) -> None:
            pass

        def emit(self, item: object) -> None:
            if isinstance(item, AttentionLayerResult):
                events.append(f"emitted layer {item.layer}")

    query = AttentionQuery(model="minilm", inputs=(InputSpec(text="order of events"),))
    method = method_for(query)
    try:
        method.run(loaded, query, method.prepare(loaded.description, query), RecordingSink())  # type: ignore[arg-type]
    finally:
        hook.remove()
    assert events.index("emitted layer 0") < events.index("last layer starts") < events.index("emitted layer 5")


async def test_closing_the_stream_stops_the_computation(model_dirs: dict[str, Path]) -> None:
    loaded = load_model(ModelSpec("minilm", model_dirs["minilm"]), torch.device("cpu"), "float32")
    layers_run: list[int] = []
    release = threading.Event()

    def slow_layer(module: torch.nn.Module, *_: object) -> None:
        layers_run.append(id(module))
        release.wait(5)

    hooks = [layer.register_forward_pre_hook(slow_layer) for layer in loaded.model.encoder.layer]
    query = AttentionQuery(model="minilm", inputs=(InputSpec(text="cancel me"),))
    method = method_for(query)
    options = method.prepare(loaded.description, query)
    engine = Engine(max_queue=4)
    try:
        stream = engine.stream(loaded.device, lambda sink: method.run(loaded, query, options, sink))
        first = await stream.__anext__()
        assert isinstance(first, StreamStart)
        await stream.aclose()  # the caller goes away after the header
        release.set()
        # The worker stops at its next check: the next job runs right after.
        waiting, running = engine.queue_depth(loaded.device)
        for _ in range(100):
            waiting, running = engine.queue_depth(loaded.device)
            if running == 0:
                break
            await asyncio.sleep(0.05)
        assert (waiting, running) == (0, 0)
        assert len(layers_run) <= 2, "layers kept running after the caller left"
    finally:
        for hook in hooks:
            hook.remove()
        engine.shutdown()
