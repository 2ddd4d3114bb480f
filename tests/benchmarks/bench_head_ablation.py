"""Exact head ablation against the obvious loop, side by side in one run.

    python tests/benchmarks/bench_head_ablation.py [--tokens 128 ...] [--repeats 5] [--device auto] [--threads N] [--model-dir DIR]

For MiniLM (6 layers x 12 heads, target: norm of the pooled embedding), medians of:
  naive loop   plain transformers (SDPA), 72 forwards, each with one head zeroed by a
               forward pre-hook on its layer's attention output projection, scoring the
               target and the cosine distance every time
  method       introspect's per-head ablation in process (growing batch: the rows of
               layer L join at layer L's attention output projection and share the
               clean row's computation before it), all 72 heads
  server       the same through a real server over loopback with the real client
  forward      one plain transformers forward (the unit of the importance goal)
  importance   introspect's head importance in process (one forward + one backward)
Ratios: speed-up over the naive loop for the ablations, time / one forward for importance.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

from bench_attention import NullSink, text_of  # noqa: E402
from conftest import start_server  # noqa: E402
from timing import markdown_table, measure, median_ms, model_dir, model_label, synchronized  # noqa: E402
from transformers import AutoModel  # noqa: E402

from introspect.config import ModelSpec  # noqa: E402
from introspect.methods import method_for  # noqa: E402
from introspect.models import LoadedModel, load_model, resolve_device  # noqa: E402
from introspect.requests import HeadAblationQuery, InputSpec, TargetSpec  # noqa: E402
from introspect.results import LayerAblationResult  # noqa: E402
from introspect_client import Client, targets  # noqa: E402


def naive_loop(model: torch.nn.Module, encoded: dict[str, torch.Tensor]) -> list[tuple[float, float]]:
    """(target delta, cosine distance) of every head, one forward per head."""
    config = model.config
    heads, width = config.num_attention_heads, config.hidden_size // config.num_attention_heads
    with torch.inference_mode():
        base = model(**encoded).last_hidden_state[0].mean(dim=0)
        results = []
        for layer in model.encoder.layer:
            for head in range(heads):

                def zero_head(module: torch.nn.Module, args: tuple[torch.Tensor, ...], head: int = head) -> tuple:
                    values = args[0].clone()
                    values[..., head * width : (head + 1) * width] = 0
                    return (values, *args[1:])

                handle = layer.attention.output.dense.register_forward_pre_hook(zero_head)
                try:
                    pooled = model(**encoded).last_hidden_state[0].mean(dim=0)
                finally:
                    handle.remove()
                change = 1 - torch.nn.functional.cosine_similarity(pooled, base, dim=0)
                results.append((float(pooled.norm() - base.norm()), float(change)))
    return results


def interleaved(contenders: dict[str, Callable[[], object]], repeats: int) -> dict[str, list[float]]:
    """Seconds of `repeats` calls of every contender, taken in turns (one warm-up call
    each first), so that load changes on a shared machine hit all of them alike."""
    timings: dict[str, list[float]] = {name: [] for name in contenders}
    for name, function in contenders.items():
        function()
    for _ in range(repeats):
        for name, function in contenders.items():
            timings[name] += measure(function, 1, warmup=0)
    return timings


class Collect(NullSink):
    """Keeps the per-layer ablation results."""

    def __init__(self) -> None:
        self.layers: list[LayerAblationResult] = []

    def emit(self, item: object) -> None:
        """Keeps LayerAblationResults."""
        if isinstance(item, LayerAblationResult):
            self.layers.append(item)


def bench_length(
    tokens: int, plain: torch.nn.Module, loaded: LoadedModel, client: Client, arguments: argparse.Namespace
) -> tuple[list[list[object]], float]:
    """Table rows for one input length, and the largest |target delta| difference between
    the method and the naive loop."""
    tokenizer = loaded.text.tokenizer
    text = text_of(tokenizer, tokens)
    encoded = {name: value.to(loaded.device) for name, value in tokenizer(text, return_tensors="pt").items()}
    assert encoded["input_ids"].shape[1] == tokens, encoded["input_ids"].shape

    def method_runner(mode: str, sink: NullSink | None = None) -> Callable[[], None]:
        query = HeadAblationQuery(model="minilm", input=InputSpec(text=text), target=TargetSpec("embedding_norm"),
                                  mode=mode, batch_size=arguments.batch_size)
        method = method_for(query)
        options = method.prepare(loaded.description, query)
        return synchronized(lambda: method.run(loaded, query, options, sink or NullSink()),  # type: ignore[arg-type]
                            loaded.device)

    collected = Collect()
    method_runner("per_head", collected)()
    ours = [value for layer in collected.layers for value in layer.target_delta.values.tolist()]
    difference = max(abs(a - b) for a, (b, _) in zip(ours, naive_loop(plain, encoded), strict=True))

    def plain_forward() -> float:
        with torch.inference_mode():
            return float(plain(**encoded).last_hidden_state[0].mean(dim=0).norm())

    ablations = interleaved(
        {
            "naive loop (72 forwards)": lambda: naive_loop(plain, encoded),
            "per-head ablation, in process": method_runner("per_head"),
            "per-head ablation, through the server": lambda: client.ablate(
                text, model="minilm", target=targets.embedding_norm(), cache="bypass", batch_size=arguments.batch_size
            ),
        },
        arguments.repeats,
    )
    importance = interleaved(
        {
            "one plain forward": plain_forward,
            "importance, in process": method_runner("importance"),
            "importance, through the server": lambda: client.ablate(
                text, model="minilm", target=targets.embedding_norm(), mode="importance", cache="bypass"
            ),
        },
        arguments.repeats * 4,
    )
    naive = median_ms(ablations["naive loop (72 forwards)"])
    forward = median_ms(importance["one plain forward"])
    rows: list[list[object]] = []
    for name, values in {**ablations, **importance}.items():
        median = median_ms(values)
        if name in ablations:
            ratio = f"{naive / median:.2f}x faster than the loop"
        else:
            ratio = f"{median / forward:.2f}x one forward"
        rows.append([tokens, name, f"{median:.1f}", ratio])
    return rows, difference


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, nargs="+", default=[128])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="auto", help="cpu, cuda or auto (default)")
    parser.add_argument("--batch-size", type=int, default=0, help="ablated rows per forward (0: automatic)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads here and in the server (0: default)")
    parser.add_argument("--model-dir", help="a BERT encoder directory (default: the packaged MiniLM)")
    arguments = parser.parse_args()
    if arguments.threads:
        torch.set_num_threads(arguments.threads)
    device = resolve_device(arguments.device)
    path = model_dir(arguments.model_dir)
    plain = AutoModel.from_pretrained(path, attn_implementation="sdpa").to(device).eval()
    loaded = load_model(ModelSpec("minilm", path), device, "float32")
    threads = {"OMP_NUM_THREADS": str(arguments.threads)} if arguments.threads else None
    server = start_server(f"--model=minilm={path}", f"--device={device}", "--dtype=float32", env=threads)
    rows: list[list[object]] = []
    differences = []
    try:
        with Client(server.address) as client:
            for tokens in arguments.tokens:
                length_rows, difference = bench_length(tokens, plain, loaded, client, arguments)
                rows += length_rows
                differences.append(difference)
    finally:
        server.stop()
    config = plain.config
    print(f"{model_label(arguments.model_dir)} ({config.num_hidden_layers} layers x {config.num_attention_heads} heads), all heads, zero ablation, target embedding_norm, {device}, "
          f"{torch.get_num_threads()} torch threads, median of {arguments.repeats} (forwards and importance: "
          f"{arguments.repeats * 4}); largest |target delta difference| from the loop: {max(differences):.1e}\n")
    print(markdown_table(["tokens", "what", "median ms", "ratio"], rows))


if __name__ == "__main__":
    main()
