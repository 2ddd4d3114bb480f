"""Exact activation patching against the obvious loop, side by side in one run.

    python tests/benchmarks/bench_patching.py [--tokens 64] [--layers 6] [--heads 8] [--width 256] [--repeats 3] [--batch-size 0] [--threads N]

A random GPT-2 (6 layers x 8 heads, width 256, the MiniLM tokenizer's 30522-token vocab)
on one (clean, corrupted) pair of 64 token ids differing at 4 positions, denoising, target
next_token at the last position. Medians of:
  naive loop   plain transformers (SDPA), the clean run's activations taken once, then
               one forward per patch with a forward hook replacing the activation (block
               input: pre-hook on the block; head: pre-hook on attn.c_proj replacing the
               head's slice), logits of the last position only (logits_to_keep=1, as the
               server computes them)
  server       StreamPatching (ACTIVATION) through a real server over loopback (raw gRPC):
               rows patched at layer L join the unpatched corrupted row at layer L
               (methods/patching_activation.py, layer_stack.py)
for two workloads: resid_pre at every (layer, position), and every head (head point).

The bound from shared prefixes: a patch at layer L runs layers L..end only, and on a
causal model a patch whose first change is at position p runs positions p..end only
(the unpatched row's keys and values serve the positions before it), while a patch that
replaces values by equal ones (layer 0 at a token both inputs share, any layer before
their first difference) runs no row. The script prints naive (layer x position) work
over the server's for each workload; batching the patched rows, and running the final
MLP on the last position alone, give the rest.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import grpc
import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

from architectures import minilm_tokenizer  # noqa: E402
from bench_head_ablation import interleaved  # noqa: E402
from conftest import start_server  # noqa: E402
from timing import markdown_table, median_ms  # noqa: E402
from transformers import GPT2Config, GPT2LMHeadModel  # noqa: E402

from introspect_contract import pb, pb_grpc  # noqa: E402
from introspect_contract.tensors import decode_tensor  # noqa: E402

CHANGED = (5, 17, 33, 50)  # corrupted positions (of 64; cut to the input's length)


def build(root: Path, layers: int, heads: int, width: int) -> tuple[Path, GPT2LMHeadModel]:
    """A random GPT-2 saved under root with the MiniLM tokenizer, and the plain model."""
    tokenizer = minilm_tokenizer()
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=tokenizer.vocab_size, n_positions=512, n_embd=width,
                                       n_layer=layers, n_head=heads, pad_token_id=tokenizer.pad_token_id,
                                       bos_token_id=tokenizer.cls_token_id, eos_token_id=tokenizer.sep_token_id))
    model.save_pretrained(root, safe_serialization=True)
    tokenizer.save_pretrained(root)
    return root, GPT2LMHeadModel.from_pretrained(root, attn_implementation="sdpa").eval()


def naive_loop(model: GPT2LMHeadModel, clean: list[int], corrupted: list[int], point: str, token: int) -> np.ndarray:
    """log p(token) at the last position of the corrupted run with each patch of `point`
    ("resid_pre": per (layer, position) [layers, positions]; "head": [layers, heads])."""
    blocks = model.transformer.h
    heads, width = model.config.n_head, model.config.n_embd // model.config.n_head
    stored: dict[int, torch.Tensor] = {}

    def run(ids: list[int]) -> float:
        logits = model(input_ids=torch.tensor([ids]), logits_to_keep=1).logits[0, -1]
        return float(torch.log_softmax(logits, dim=-1)[token])

    def module_of(block: torch.nn.Module) -> torch.nn.Module:
        return block if point == "resid_pre" else block.attn.c_proj

    with torch.inference_mode():
        handles = [module_of(block).register_forward_pre_hook(
            lambda _m, args, layer=layer: stored.__setitem__(layer, args[0].clone())) for layer, block in
            enumerate(blocks)]
        run(clean)
        for handle in handles:
            handle.remove()
        values = []
        for layer, block in enumerate(blocks):
            row = []
            for spot in range(len(clean) if point == "resid_pre" else heads):
                part = (slice(None), slice(spot, spot + 1)) if point == "resid_pre" else (
                    slice(None), slice(None), slice(spot * width, (spot + 1) * width))

                def patch(_m: torch.nn.Module, args: tuple, layer: int = layer, part: tuple = part) -> tuple:
                    hidden = args[0].clone()
                    hidden[part] = stored[layer][part]
                    return (hidden, *args[1:])

                handle = module_of(block).register_forward_pre_hook(patch)
                try:
                    row.append(run(corrupted))
                finally:
                    handle.remove()
            values.append(row)
    return np.array(values)


def served(address: str, clean: list[int], corrupted: list[int], point: str, token: int,
           batch_size: int) -> np.ndarray:
    """The server's values, stacked by layer."""
    request = pb.StreamPatchingRequest(
        model="gpt2", method=pb.PATCHING_METHOD_ACTIVATION, direction=pb.PATCH_DIRECTION_DENOISING,
        points=[getattr(pb, f"PATCH_POINT_{point.upper()}")], batch_size=batch_size, cache=pb.CACHE_POLICY_BYPASS,
        target=pb.Target(next_token=pb.NextTokenTarget(position=-1, token_id=token)),
        pairs=[pb.InputPair(clean=pb.Input(token_ids=pb.TokenIds(ids=clean)),
                            corrupted=pb.Input(token_ids=pb.TokenIds(ids=corrupted)))],
    )
    with grpc.insecure_channel(address) as channel:
        responses = list(pb_grpc.IntrospectionStub(channel).StreamPatching(request))
    return np.stack([decode_tensor(response.layer.values) for response in responses if response.HasField("layer")])


def prefix_bound(layers: int, tokens: int, heads: int, point: str) -> float:
    """The naive loop's (layer x position) work over the server's rows', for this
    benchmark's pair (it differs at CHANGED): a resid_pre patch at (L, p) runs layers L..
    at positions p.. unless it changes nothing; a head patch at layer L (every position)
    runs layers L.. (its layer from the output projection, counted whole) at positions
    from the first difference on."""
    changed = [position for position in CHANGED if position < tokens]
    first = min(changed)
    if point == "head":
        ours = sum(heads * (layers - layer) * (tokens - first) for layer in range(layers))
        return heads * layers * layers * tokens / ours
    ours = sum((layers - layer) * (tokens - position) for layer in range(layers) for position in range(tokens)
               if (position in changed if layer == 0 else position >= first))
    return tokens * layers * layers * tokens / ours


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=0, help="patched rows per forward (0: automatic)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads here and in the server (0: default)")
    arguments = parser.parse_args()
    if arguments.threads:
        torch.set_num_threads(arguments.threads)
    generator = torch.Generator().manual_seed(1)
    clean = torch.randint(1000, 30000, (arguments.tokens,), generator=generator).tolist()
    corrupted = list(clean)
    for position in CHANGED:
        if position < arguments.tokens:
            corrupted[position] = (clean[position] + 7) % 30000
    token = clean[-1]
    with tempfile.TemporaryDirectory() as root:
        path, plain = build(Path(root), arguments.layers, arguments.heads, arguments.width)
        threads = {"OMP_NUM_THREADS": str(arguments.threads)} if arguments.threads else None
        server = start_server(f"--model=gpt2={path}", "--device=cpu", "--dtype=float32", env=threads)
        rows: list[list[object]] = []
        difference = 0.0
        try:
            for point in ("resid_pre", "head"):
                ours = served(server.address, clean, corrupted, point, token, arguments.batch_size)
                difference = max(difference, float(np.abs(ours - naive_loop(plain, clean, corrupted, point,
                                                                            token)).max()))
                patches = ours.size
                timings = interleaved({
                    f"naive loop ({patches} forwards)": lambda point=point: naive_loop(plain, clean, corrupted,
                                                                                       point, token),
                    "server": lambda point=point: served(server.address, clean, corrupted, point, token,
                                                         arguments.batch_size),
                }, arguments.repeats)
                naive, method = (median_ms(values) for values in timings.values())
                bound = prefix_bound(arguments.layers, arguments.tokens, arguments.heads, point)
                rows.append([point, patches, f"{naive:.0f}", f"{method:.0f}", f"{naive / method:.2f}x",
                             f"{bound:.2f}x"])
        finally:
            server.stop()
    print(f"random GPT-2 ({arguments.layers} layers x {arguments.heads} heads, width {arguments.width}), "
          f"{arguments.tokens} tokens, denoising, next_token, cpu, {torch.get_num_threads()} torch threads, median of "
          f"{arguments.repeats}; largest |difference| from the loop: {difference:.1e}\n")
    print(markdown_table(["point", "patches", "naive loop ms", "server ms", "speed-up", "shared-prefix bound"],
                         rows))


if __name__ == "__main__":
    main()
