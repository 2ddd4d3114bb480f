"""Shapley head values by permutation sampling against the obvious loop, side by side in one run.

    python tests/benchmarks/bench_shapley.py [--tokens 32] [--permutations 8] [--seed 0] [--repeats 3] [--device auto] [--threads N] [--model-dir DIR]

For MiniLM (6 layers x 12 heads = 72 players, target: norm of the pooled embedding, zero
ablation), the same antithetic permutations (same seed, same sampler) evaluated by:
  naive loop   plain transformers (SDPA), one forward per coalition evaluation (the n - 1
               coalitions strictly inside each permutation, the empty and the full one
               once), the heads left out zeroed by forward pre-hooks on the attention
               output projections
  method       introspect's StreamShapleyHeads method in process (many coalitions per
               growing-batch forward, each row joining at the first layer it ablates)
  server       the same through a real server over loopback with the real client
Medians of interleaved calls; ratio: speed-up over the naive loop. The values of the loop
and of the method are compared (largest absolute difference printed).
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
from bench_head_ablation import interleaved  # noqa: E402
from conftest import start_server  # noqa: E402
from timing import markdown_table, median_ms, model_dir, model_label, synchronized  # noqa: E402
from transformers import AutoModel  # noqa: E402

from introspect.config import ModelSpec  # noqa: E402
from introspect.methods import method_for  # noqa: E402
from introspect.methods.shapley_heads import ShapleyFinalResult, ShapleyHeadsQuery  # noqa: E402
from introspect.models import load_model, resolve_device  # noqa: E402
from introspect.requests import InputSpec, TargetSpec  # noqa: E402
from introspect_client import Client, targets  # noqa: E402


def naive_loop(model: torch.nn.Module, encoded: dict[str, torch.Tensor], permutations: int, seed: int) -> torch.Tensor:
    """Shapley estimates of every head from `permutations` antithetic permutations drawn
    as the method draws them, one forward per coalition."""
    config = model.config
    heads, width = config.num_attention_heads, config.hidden_size // config.num_attention_heads
    layers = config.num_hidden_layers
    players = [(layer, head) for layer in range(layers) for head in range(heads)]
    n = len(players)
    keep = torch.ones(layers, heads, device=next(model.parameters()).device)

    def hook_for(layer: int) -> Callable[..., tuple[torch.Tensor, ...]]:
        def hook(module: torch.nn.Module, args: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
            values = args[0]
            factors = keep[layer].repeat_interleave(width).to(values.dtype)
            return (values * factors, *args[1:])

        return hook

    def value(kept: torch.Tensor) -> float:
        keep.zero_()
        for index in torch.nonzero(kept).flatten().tolist():
            keep[players[index]] = 1.0
        return float(model(**encoded).last_hidden_state[0].mean(dim=0).norm())

    handles = [model.encoder.layer[layer].attention.output.dense.register_forward_pre_hook(hook_for(layer))
               for layer in range(layers)]
    try:
        with torch.inference_mode():
            full, empty = value(torch.ones(n, dtype=torch.bool)), value(torch.zeros(n, dtype=torch.bool))
            generator = torch.Generator().manual_seed(seed)
            samples = []
            for _ in range(permutations // 2):
                order = torch.randperm(n, generator=generator)
                pair = torch.zeros(n, dtype=torch.float64)
                for ordering in (order, order.flip(0)):
                    kept = torch.zeros(n, dtype=torch.bool)
                    previous = empty
                    for step, player in enumerate(ordering.tolist()):
                        kept[player] = True
                        current = full if step == n - 1 else value(kept)
                        pair[player] += (current - previous) / 2
                        previous = current
                samples.append(pair)
    finally:
        for handle in handles:
            handle.remove()
    return torch.stack(samples).mean(dim=0)


class Final(NullSink):
    def __init__(self) -> None:
        self.values: torch.Tensor | None = None

    def emit(self, item: object) -> None:
        if isinstance(item, ShapleyFinalResult):
            self.values = torch.from_numpy(item.values.values).double()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--permutations", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="auto", help="cpu, cuda or auto (default)")
    parser.add_argument("--batch-size", type=int, default=0, help="coalitions per forward (0: automatic)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads here and in the server (0: default)")
    parser.add_argument("--model-dir", help="a BERT encoder directory (default: the packaged MiniLM)")
    arguments = parser.parse_args()
    if arguments.threads:
        torch.set_num_threads(arguments.threads)
    device = resolve_device(arguments.device)
    path = model_dir(arguments.model_dir)
    plain = AutoModel.from_pretrained(path, attn_implementation="sdpa").to(device).eval()
    loaded = load_model(ModelSpec("minilm", path), device, "float32")
    tokenizer = loaded.text.tokenizer
    text = text_of(tokenizer, arguments.tokens)
    encoded = {name: value.to(device) for name, value in tokenizer(text, return_tensors="pt").items()}
    assert encoded["input_ids"].shape[1] == arguments.tokens, encoded["input_ids"].shape
    query = ShapleyHeadsQuery(model="minilm", input=InputSpec(text=text), target=TargetSpec("embedding_norm"),
                              all_heads=True, sample=True, max_permutations=arguments.permutations,
                              seed=arguments.seed, batch_size=arguments.batch_size)
    method = method_for(query)
    options = method.prepare(loaded.description, query)

    def run_method(sink: NullSink | None = None) -> None:
        method.run(loaded, query, options, sink or NullSink())  # type: ignore[arg-type]

    final = Final()
    run_method(final)
    naive_values = naive_loop(plain, encoded, arguments.permutations, arguments.seed)
    assert final.values is not None
    difference = float((final.values - naive_values).abs().max())
    scale = float(naive_values.abs().max())
    threads = {"OMP_NUM_THREADS": str(arguments.threads)} if arguments.threads else None
    server = start_server(f"--model=minilm={path}", f"--device={device}", "--dtype=float32", env=threads)
    try:
        with Client(server.address) as client:
            timings = interleaved(
                {
                    "naive loop (one forward per coalition)": synchronized(
                        lambda: naive_loop(plain, encoded, arguments.permutations, arguments.seed), device),
                    "StreamShapleyHeads method, in process": synchronized(run_method, device),
                    "StreamShapleyHeads through the server": lambda: client.shapley_heads(
                        text, model="minilm", target=targets.embedding_norm(), heads="all", sample=True,
                        max_permutations=arguments.permutations, seed=arguments.seed,
                        batch_size=arguments.batch_size, cache="bypass"),
                },
                arguments.repeats,
            )
    finally:
        server.stop()
    naive = median_ms(timings["naive loop (one forward per coalition)"])
    rows = [[arguments.tokens, name, f"{median_ms(values):.0f}", f"{naive / median_ms(values):.2f}x"]
            for name, values in timings.items()]
    evaluations = 2 + arguments.permutations * (len(options.heads) - 1)
    print(f"{model_label(arguments.model_dir)}, all {len(options.heads)} heads, zero ablation, target "
          f"embedding_norm, {arguments.permutations} antithetic permutations (seed {arguments.seed}, "
          f"{evaluations} coalition evaluations), {device}, {torch.get_num_threads()} torch threads, median of "
          f"{arguments.repeats}; largest |value difference| from the loop: {difference:.1e} "
          f"(largest |value| {scale:.2e})\n")
    print(markdown_table(["tokens", "what", "median ms", "speed-up over the loop"], rows))


if __name__ == "__main__":
    main()
