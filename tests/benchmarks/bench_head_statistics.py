"""Head statistics over many inputs: the server against eager attention + numpy, side by
side in one run.

    python tests/benchmarks/bench_head_statistics.py [--inputs 100] [--repeats 3] [--device auto]
        [--threads N] [--model-dir DIR]

For MiniLM (6 layers x 12 heads) on `--inputs` texts of 8 to 60 tokens, the seven
attention statistics (entropy, first-token, special-token and delimiter mass, mean
distance, previous- and same-token scores) and the hidden-state norms, mean and standard
deviation per layer and head over the inputs; medians of:
  eager + numpy   plain transformers with `attn_implementation="eager"`,
                  `output_attentions=True` and `output_hidden_states=True`, one forward per
                  input, every statistic in numpy (the obvious script)
  eager forwards  the same forwards alone, no statistics (what the eager side spends
                  in transformers; the rest is numpy)
  server          StreamHeadStatistics through a real server over loopback with the real
                  client (padded batches, probabilities from the attention hook, the
                  statistics in torch on the worker, aggregated incrementally)
The ratio is eager time / server time (above 1: the server is faster). Both sides'
means are compared (largest absolute difference printed).
"""

from __future__ import annotations

import argparse
import sys
import unicodedata
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

from conftest import start_server  # noqa: E402
from introspect.models import resolve_device  # noqa: E402
from introspect_client import Client  # noqa: E402
from timing import markdown_table, measure_interleaved, median_ms, model_dir, model_label  # noqa: E402
from transformers import AutoModel, AutoTokenizer  # noqa: E402

STATISTICS = ("entropy", "first_token", "special_tokens", "delimiters", "mean_distance", "previous_token",
              "same_token")
WORDS = ("the model attends to every token it has seen so far , and then ; it writes : what it read ! "
         "a head may look back at the previous word or at the separator . ").split()


def texts(count: int) -> list[str]:
    """`count` texts of 6 to 58 words (8 to 60-odd tokens with [CLS] and [SEP])."""
    generator = np.random.default_rng(0)
    return [" ".join(generator.choice(WORDS, size=int(generator.integers(6, 59)))) for _ in range(count)]


def punctuation(token: str) -> bool:
    text = token.removeprefix("##").strip()
    return bool(text) and all(unicodedata.category(character).startswith("P") for character in text)


def eager_statistics(model: torch.nn.Module, tokenizer: AutoTokenizer, inputs: list[str],
                     device: torch.device) -> dict[str, np.ndarray]:
    """Means over the inputs of every statistic [layers, heads] (hidden norm [layers, 3]),
    one eager forward per input, statistics in numpy; the standard deviations too."""
    special_ids = set(tokenizer.all_special_ids)
    values: dict[str, list[np.ndarray]] = {name: [] for name in (*STATISTICS, "hidden_norm")}
    for text in inputs:
        encoded = tokenizer(text, return_tensors="pt").to(device)
        with torch.inference_mode():
            output = model(**encoded, output_attentions=True, output_hidden_states=True)
        maps = torch.stack(output.attentions)[:, 0].double().cpu().numpy()  # [layers, heads, q, k]
        ids = encoded["input_ids"][0].tolist()
        tokens = tokenizer.convert_ids_to_tokens(ids)
        n = len(ids)
        special = np.array([token in special_ids for token in ids])
        delimiters = special | np.array([punctuation(token) for token in tokens])
        distance = np.abs(np.arange(n)[:, None] - np.arange(n)[None, :])
        with np.errstate(divide="ignore", invalid="ignore"):
            values["entropy"].append(-np.where(maps > 0, maps * np.log(maps), 0.0).sum(-1).mean(-1))
        values["first_token"].append(maps[..., 0].mean(-1))
        values["special_tokens"].append(maps[..., special].sum(-1).mean(-1))
        values["delimiters"].append(maps[..., delimiters].sum(-1).mean(-1))
        values["mean_distance"].append((maps * distance).sum(-1).mean(-1))
        values["previous_token"].append(np.diagonal(maps, offset=-1, axis1=2, axis2=3).mean(-1))
        values["same_token"].append(np.diagonal(maps, axis1=2, axis2=3).mean(-1))
        norms = torch.stack(output.hidden_states[1:])[:, 0].norm(dim=-1).cpu().numpy()  # [layers, tokens]
        values["hidden_norm"].append(np.stack([norms[:, 0], norms[:, 1:].mean(1), norms[:, 1:].max(1)], axis=1))
    result = {}
    for name, items in values.items():
        stacked = np.stack(items)
        result[name], result[f"{name}.std"] = stacked.mean(0), stacked.std(0)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--inputs", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--model-dir", default=None, help="a BERT-like encoder (default: the packaged MiniLM)")
    arguments = parser.parse_args()
    if arguments.threads:
        torch.set_num_threads(arguments.threads)
    device = resolve_device(arguments.device)
    path = model_dir(arguments.model_dir)
    tokenizer = AutoTokenizer.from_pretrained(path)
    plain = AutoModel.from_pretrained(path, attn_implementation="eager").to(device).eval()
    inputs = texts(arguments.inputs)
    threads = [f"--threads={arguments.threads}"] if arguments.threads else []
    server = start_server(f"--model=minilm={path}", f"--device={device}", "--dtype=float32",
                          f"--max-inputs={max(arguments.inputs, 64)}", *threads)
    try:
        with Client(server.address, timeout=600) as client:
            def served() -> object:
                return client.head_statistics(inputs, model="minilm", cache="bypass")

            def eager() -> object:
                return eager_statistics(plain, tokenizer, inputs, device)

            def forwards() -> object:
                for text in inputs:
                    with torch.inference_mode():
                        plain(**tokenizer(text, return_tensors="pt").to(device), output_attentions=True,
                              output_hidden_states=True)
                return None

            ours = served()
            reference = eager()
            difference = max(float(np.abs(ours.mean[name] - reference[name]).max())  # type: ignore[attr-defined]
                             for name in (*STATISTICS, "hidden_norm"))
            timings = measure_interleaved([eager, forwards, served], arguments.repeats, warmup=0)
    finally:
        server.stop()
    eager_ms, forwards_ms, server_ms = (median_ms(spent) for spent in timings)
    tokens = sum(len(tokenizer(text)["input_ids"]) for text in inputs)
    print(f"{model_label(arguments.model_dir)}, {arguments.inputs} inputs ({tokens} tokens), device {device}, "
          f"torch threads {torch.get_num_threads()}, medians of {arguments.repeats}")
    print(markdown_table(["contender", "time (ms)", "ratio (eager / this)"], [
        ["eager + numpy, one input at a time", f"{eager_ms:.0f}", "1.00"],
        ["eager forwards alone (no statistics)", f"{forwards_ms:.0f}", f"{eager_ms / forwards_ms:.2f}"],
        ["server (StreamHeadStatistics)", f"{server_ms:.0f}", f"{eager_ms / server_ms:.2f}"],
    ]))
    print(f"largest |difference| of the means: {difference:.2e}")


if __name__ == "__main__":
    main()
