"""Attribution patching against one plain forward, side by side in one run.

    python tests/benchmarks/bench_attribution_patching.py [--tokens 64 ...] [--repeats 10] [--device auto] [--threads N]

A random GPT-2 (6 layers x 8 heads, width 256, the MiniLM tokenizer's vocabulary), one
(clean, corrupted) pair of equal length differing in one token, target next_token,
denoising, points resid_pre + attn_out + mlp_out + head, every layer and position;
medians of:
  forward      one plain transformers forward (SDPA) of one input, no gradients
  in process   introspect's attribution patching called in process: the pair's
               encoding, one forward of the source (clean) run without gradients, one
               of the patched (corrupted) run with gradients and one backward; the two
               forwards bind the target and give the baseline scores too
  server       the same through a real server over loopback (raw gRPC stub, cache
               bypassed)
Ratios: time / one forward (goal: at most 4x; the floor is two forwards and a backward).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import grpc
import torch

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

from bench_attention import NullSink  # noqa: E402
from bench_head_ablation import interleaved  # noqa: E402
from conftest import minilm_dir, start_server  # noqa: E402
from timing import markdown_table, median_ms, synchronized  # noqa: E402
from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel  # noqa: E402

from introspect.config import ModelSpec  # noqa: E402
from introspect.methods import method_for  # noqa: E402
from introspect.models import load_model, resolve_device  # noqa: E402
from introspect.requests import InputPairSpec, InputSpec, PatchingQuery, TargetSpec  # noqa: E402
from introspect_contract import introspect_pb2 as pb  # noqa: E402
from introspect_contract import introspect_pb2_grpc as pb_grpc  # noqa: E402
from introspect_contract.enums import PATCH_POINT, PATCHING_METHOD  # noqa: E402

POINTS = ("resid_pre", "attn_out", "mlp_out", "head")
TOKEN = 2944


def build_model(root: Path) -> Path:
    """Saves the random GPT-2 with the MiniLM tokenizer under root/gpt2."""
    tokenizer = AutoTokenizer.from_pretrained(minilm_dir())
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=tokenizer.vocab_size, n_positions=1024, n_embd=256, n_layer=6,
                                       n_head=8, pad_token_id=tokenizer.pad_token_id))
    path = root / "gpt2"
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return path


def pair_ids(tokens: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Clean and corrupted token ids of `tokens` tokens differing in the middle one."""
    generator = torch.Generator().manual_seed(tokens)
    clean = torch.randint(1000, 20000, (tokens,), generator=generator).tolist()
    corrupted = list(clean)
    corrupted[tokens // 2] = 1996 if clean[tokens // 2] != 1996 else 1037
    return tuple(clean), tuple(corrupted)


def server_request(clean: tuple[int, ...], corrupted: tuple[int, ...]) -> pb.StreamPatchingRequest:
    """The StreamPatching request of the benchmark."""
    return pb.StreamPatchingRequest(
        model="gpt2", method=PATCHING_METHOD.number("attribution"),
        target=pb.Target(next_token=pb.NextTokenTarget(token_id=TOKEN)),
        points=[PATCH_POINT.number(point) for point in POINTS], cache=pb.CACHE_POLICY_BYPASS,
        pairs=[pb.InputPair(clean=pb.Input(token_ids=pb.TokenIds(ids=clean)),
                            corrupted=pb.Input(token_ids=pb.TokenIds(ids=corrupted)))],
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, nargs="+", default=[64])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--device", default="auto", help="cpu, cuda or auto (default)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads here and in the server (0: default)")
    arguments = parser.parse_args()
    if arguments.threads:
        torch.set_num_threads(arguments.threads)
    device = resolve_device(arguments.device)
    with tempfile.TemporaryDirectory() as directory:
        path = build_model(Path(directory))
        plain = GPT2LMHeadModel.from_pretrained(path, attn_implementation="sdpa").to(device).eval()
        loaded = load_model(ModelSpec("gpt2", path), device, "float32")
        threads = {"OMP_NUM_THREADS": str(arguments.threads)} if arguments.threads else None
        server = start_server(f"--model=gpt2={path}", f"--device={device}", "--dtype=float32", env=threads)
        rows: list[list[object]] = []
        try:
            channel = grpc.insecure_channel(server.address)
            stub = pb_grpc.IntrospectionStub(channel)
            for tokens in arguments.tokens:
                clean, corrupted = pair_ids(tokens)
                query = PatchingQuery(model="gpt2", pairs=(InputPairSpec(InputSpec(token_ids=clean),
                                                                         InputSpec(token_ids=corrupted)),),
                                      target=TargetSpec("next_token", token_id=TOKEN), method="attribution",
                                      points=POINTS)
                method = method_for(query)
                options = method.prepare(loaded.description, query)
                ids = torch.tensor([clean], device=device)

                def plain_forward() -> None:
                    with torch.inference_mode():
                        plain(input_ids=ids, use_cache=False)

                request = server_request(clean, corrupted)
                timings = interleaved({
                    "one plain forward": synchronized(plain_forward, device),
                    "attribution patching, in process": synchronized(
                        lambda: method.run(loaded, query, options, NullSink()), device),  # type: ignore[arg-type]
                    "attribution patching, through the server": lambda: list(stub.StreamPatching(request)),
                }, arguments.repeats)
                forward = median_ms(timings["one plain forward"])
                for name, values in timings.items():
                    median = median_ms(values)
                    rows.append([tokens, name, f"{median:.1f}", f"{median / forward:.2f}x one forward"])
            channel.close()
        finally:
            server.stop()
    print(f"random GPT-2 (6 layers x 8 heads, width 256), points {'+'.join(POINTS)}, denoising, next_token, "
          f"{device}, {torch.get_num_threads()} torch threads, median of {arguments.repeats}\n")
    print(markdown_table(["tokens", "what", "median ms", "ratio"], rows))


if __name__ == "__main__":
    main()
