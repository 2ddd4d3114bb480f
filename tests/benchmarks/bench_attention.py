"""StreamAttention against plain transformers, side by side in one run.

    python tests/benchmarks/bench_attention.py [--tokens 128 512] [--repeats 15] [--device cpu] [--model-dir DIR]

For MiniLM (6 layers x 12 heads) at each input length, medians of:
  eager      transformers eager forward with output_attentions=True (all maps, in process)
  sdpa       the model's plain SDPA forward, no maps (the floor)
  method     introspect's attention method in process (SDPA + maps, no gRPC)
  server     StreamAttention through a real server over loopback with the real client,
             all layers and heads reassembled into numpy arrays (float32 and float16)
  first      time to the first chunk through the server
  floor      the same message sizes as the float32 server call, streamed by a bare
             grpc.aio server of pre-serialized bytes and received with the raw stub
             (transport_floor.py): gRPC over loopback alone
and the payload bytes per layer in float32 and float16. Ratios are against eager; the
float32 server call over max(method, floor) has a goal of at most 1.3x. CPU rows: the
CPU time one call takes, in process (the method) and through the server (server and
client processes together), and that time over this machine's cores: where client and
server share the cores, no overlap of compute and sending can bring a call below it.
Everything runs on --device (cpu by default; cuda: in-process timings wait for the GPU),
weights in float32; --model-dir replaces MiniLM by another BERT-like encoder directory
(the GPU check's stand-in when the packaged MiniLM is not installed).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

from conftest import start_server  # noqa: E402
from timing import cpu_seconds, markdown_table, measure, median_ms, model_dir, model_label, synchronized  # noqa: E402
from transport_floor import floor_stub  # noqa: E402
from transformers import AutoModel, AutoTokenizer  # noqa: E402

from introspect.config import ModelSpec  # noqa: E402
from introspect.methods import method_for  # noqa: E402
from introspect.models import load_model, resolve_device  # noqa: E402
from introspect.requests import AttentionQuery, InputSpec  # noqa: E402
from introspect_client import Client  # noqa: E402
from introspect_contract import pb  # noqa: E402


def text_of(tokenizer: AutoTokenizer, tokens: int) -> str:
    """A text that tokenizes to exactly `tokens` tokens with special tokens."""
    words = ("the model attends to every token it has seen so far " * tokens).split()
    ids = tokenizer(" ".join(words), add_special_tokens=False)["input_ids"][: tokens - 2]
    return tokenizer.decode(ids)


def synchronized_on(device: torch.device):  # type: ignore[no-untyped-def]
    """Decorator: timing.synchronized on `device`."""
    return lambda function: synchronized(function, device)


class NullSink:
    """Discards results (the in-process method timing)."""

    def check(self) -> None:
        """Never cancelled."""

    def emit(self, item: object) -> None:
        """Drops the item."""


def cpu_per_call(function: Callable[[], object], repeats: int, pid: int | None = None) -> float:
    """Milliseconds of CPU time (this process, and process `pid` when given) per call of
    `function`, over `repeats` calls."""
    started = cpu_seconds(pid) if pid is not None else time.process_time()
    for _ in range(repeats):
        function()
    ended = cpu_seconds(pid) if pid is not None else time.process_time()
    return (ended - started) * 1000 / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, nargs="+", default=[128, 512])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda or auto")
    parser.add_argument("--model-dir", help="an encoder directory (default: the packaged MiniLM)")
    arguments = parser.parse_args()
    torch.set_num_threads(max(torch.get_num_threads(), 1))
    device = resolve_device(arguments.device)
    path = model_dir(arguments.model_dir)
    tokenizer = AutoTokenizer.from_pretrained(path)
    eager = AutoModel.from_pretrained(path, attn_implementation="eager").to(device).eval()
    sdpa = AutoModel.from_pretrained(path, attn_implementation="sdpa").to(device).eval()
    loaded = load_model(ModelSpec("minilm", path), device, "float32")
    server = start_server(f"--model=minilm={path}", f"--device={device}", "--dtype=float32",
                          "--max-message-bytes=4194304")
    rows = []
    try:
        with Client(server.address) as client:
            for tokens in arguments.tokens:
                text = text_of(tokenizer, tokens)
                encoded = tokenizer(text, return_tensors="pt").to(device)
                assert encoded["input_ids"].shape[1] == tokens, encoded["input_ids"].shape

                @synchronized_on(device)
                def run_eager() -> object:
                    with torch.inference_mode():
                        return eager(**encoded, output_attentions=True).attentions

                @synchronized_on(device)
                def run_sdpa() -> object:
                    with torch.inference_mode():
                        return sdpa(**encoded).last_hidden_state

                query = AttentionQuery(model="minilm", inputs=(InputSpec(text=text),))
                method = method_for(query)
                options = method.prepare(loaded.description, query)

                @synchronized_on(device)
                def run_method() -> None:
                    method.run(loaded, query, options, NullSink())  # type: ignore[arg-type]

                first_chunk: list[float] = []

                def run_first_chunk() -> None:
                    started = time.perf_counter()
                    for message in client.stream_attention(text, model="minilm", cache="bypass"):
                        if message.HasField("chunk"):
                            first_chunk.append(time.perf_counter() - started)
                            break

                all_sizes = [m.ByteSize() for m in client.stream_attention(text, model="minilm", cache="bypass")]
                bytes_per_layer = {}
                for dtype in ("float32", "float16"):
                    sizes = [
                        m.ByteSize()
                        for m in client.stream_attention(text, model="minilm", layers=[0], dtype=dtype, cache="bypass")
                        if m.HasField("chunk")
                    ]
                    bytes_per_layer[dtype] = sum(sizes)

                timings = {
                    "eager": measure(run_eager, arguments.repeats),
                    "sdpa": measure(run_sdpa, arguments.repeats),
                    "method": measure(run_method, arguments.repeats),
                    "server f32": measure(lambda: client.attention(text, model="minilm", cache="bypass"), arguments.repeats),
                    "server f16": measure(
                        lambda: client.attention(text, model="minilm", dtype="float16", cache="bypass"), arguments.repeats
                    ),
                }
                measure(run_first_chunk, arguments.repeats)
                with floor_stub(all_sizes) as floor:
                    timings["transport floor (same bytes)"] = measure(
                        lambda: list(floor.StreamAttention(pb.StreamAttentionRequest())), arguments.repeats)
                method_cpu = cpu_per_call(run_method, arguments.repeats)
                server_cpu = cpu_per_call(lambda: client.attention(text, model="minilm", cache="bypass"),
                                          arguments.repeats, server.process.pid)
                eager_ms = median_ms(timings["eager"])
                for name, values in timings.items():
                    rows.append([tokens, name, f"{median_ms(values):.1f}", f"{median_ms(values) / eager_ms:.2f}x"])
                bound = max(median_ms(timings["method"]), median_ms(timings["transport floor (same bytes)"]))
                over = median_ms(timings["server f32"]) / bound
                rows.append([tokens, "server f32 / max(method, floor)", f"{over:.2f}x",
                             "met (<= 1.3x)" if over <= 1.3 else "not met (> 1.3x)"])
                cores = os.cpu_count() or 1
                rows.append([tokens, "CPU per call: method in process", f"{method_cpu:.1f}", ""])
                rows.append([tokens, "CPU per call: server f32 (server + client)", f"{server_cpu:.1f}", ""])
                rows.append([tokens, f"server f32 CPU / {cores} cores (bound here)", f"{server_cpu / cores:.1f}",
                             f"{server_cpu / cores / eager_ms:.2f}x"])
                rows.append([tokens, "first chunk (server)", f"{median_ms(first_chunk[-arguments.repeats:]):.1f}",
                             f"{median_ms(first_chunk[-arguments.repeats:]) / eager_ms:.2f}x"])
                rows.append([tokens, "payload per layer", f"f32 {bytes_per_layer['float32'] / 1e6:.2f} MB",
                             f"f16 {bytes_per_layer['float16'] / 1e6:.2f} MB"])
    finally:
        server.stop()
    config = eager.config
    print(f"{model_label(arguments.model_dir)} ({config.num_hidden_layers} layers x {config.num_attention_heads} heads), all maps, "
          f"float32 on {device}, {torch.get_num_threads()} torch threads, median of {arguments.repeats}; "
          "ratio = time / eager time\n")
    print(markdown_table(["tokens", "what", "median ms", "vs eager"], rows))


if __name__ == "__main__":
    main()
