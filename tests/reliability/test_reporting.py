"""What the server says when it cannot do better (issue #9 item 7): an integrated
gradients that runs out of steps before its tolerance says `converged: false` (client,
CLI summary and JSON), and token ids without a tokenizer string (an embedding table
larger than the tokenizer's vocabulary) come back as `<id N>`, never INTERNAL."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import InProcessServer, minilm_dir
from introspect_client import Client, targets

TEXT = "the cat sat on the mat"
STRICT = 1e-9  # far below what 9 trapezoid steps reach
LOOSE = 1e3
PADDING = 16  # embedding rows past the tokenizer's vocabulary
MODEL = "padded"


@dataclass
class Served:
    """The module's server: a client, its address, the tokenizer's vocabulary size and
    the served model as plain transformers."""

    client: Client
    address: str
    vocab: int
    model: torch.nn.Module


@pytest.fixture(scope="module")
def padded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """A tiny GPT-2 whose embedding table has PADDING rows past the tokenizer's vocabulary
    and whose untied LM head prefers those rows (so greedy continuations land on ids
    without a string), served alone."""
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    tokenizer = AutoTokenizer.from_pretrained(minilm_dir())
    vocab = len(tokenizer)
    torch.manual_seed(1)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=vocab + PADDING, n_positions=64, n_embd=32, n_layer=2, n_head=4,
                                       tie_word_embeddings=False))
    with torch.no_grad():
        model.lm_head.weight[:vocab] = 0.0
        model.lm_head.weight[vocab:] *= 50.0
    path = tmp_path_factory.mktemp("padded") / "padded"
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    running = InProcessServer(f"--model={MODEL}={path}", "--cache-bytes=0")
    with Client(running.address) as connected:
        yield Served(connected, running.address, vocab, model.eval())
    assert running.stop() == 0


def ig(client: Client, tolerance: float, steps: int = 9):  # type: ignore[no-untyped-def]
    """Integrated gradients of the next token, riemann_trapezoid (5, 9 steps)."""
    return client.saliency(TEXT, model=MODEL, target=targets.next_token(), method="ig", steps=steps,
                           tolerance=tolerance, cache="bypass")


def completeness_gap(result) -> float:  # type: ignore[no-untyped-def]
    """|sum(scores) - (f(x) - f(baseline))| recomputed from the returned numbers."""
    return abs(float(np.sum(result.scores, dtype=np.float64)) - (result.target_score - result.baseline_score))


def test_a_missed_tolerance_is_reported_as_not_converged(padded: Served) -> None:
    client = padded.client
    strict = ig(client, STRICT)
    assert strict.steps == 9 and [item.steps for item in strict.refinements] == [5, 9]
    assert completeness_gap(strict) > STRICT
    assert strict.convergence_delta > STRICT
    assert strict.converged is False

    loose = ig(client, LOOSE)
    assert loose.steps == 5 and completeness_gap(loose) <= LOOSE
    assert loose.converged is True
    assert ig(client, 0.0).converged is True  # no tolerance asked
    gradient = client.saliency(TEXT, model=MODEL, target=targets.next_token(), method="gradient")
    assert gradient.converged is True


def test_only_the_final_chunk_may_say_converged(padded: Served) -> None:
    client = padded.client
    messages = list(client.stream_saliency(TEXT, model=MODEL, target=targets.next_token(), method="ig",
                                           steps=9, tolerance=LOOSE, cache="bypass"))
    chunks = [message.chunk for message in messages if message.HasField("chunk")]
    assert [(chunk.final, chunk.converged) for chunk in chunks] == [(True, True)]
    messages = list(client.stream_saliency(TEXT, model=MODEL, target=targets.next_token(), method="ig",
                                           steps=9, tolerance=STRICT, cache="bypass"))
    chunks = [message.chunk for message in messages if message.HasField("chunk")]
    assert [(chunk.final, chunk.converged) for chunk in chunks] == [(False, False), (True, False)]


def run_cli(*arguments: str) -> subprocess.CompletedProcess[str]:
    """`python -m introspect_client.cli ARGS`, finished."""
    return subprocess.run([sys.executable, "-m", "introspect_client.cli", *arguments],
                          capture_output=True, text=True, timeout=120, check=False)


def test_the_cli_says_did_not_converge(padded: Served) -> None:
    common = ("saliency", "--server", padded.address, "--model", MODEL, "--text", TEXT,
              "--method", "ig", "--steps", "9")
    summary = run_cli(*common, "--tolerance", str(STRICT))
    assert summary.returncode == 0, summary.stderr
    assert "9 steps" in summary.stdout and "did not converge" in summary.stdout
    document = json.loads(run_cli(*common, "--tolerance", str(STRICT), "--json").stdout)
    assert document["converged"] is False and document["convergence_delta"] > STRICT
    converged = run_cli(*common, "--tolerance", str(LOOSE))
    assert converged.returncode == 0 and "did not converge" not in converged.stdout
    assert json.loads(run_cli(*common, "--tolerance", str(LOOSE), "--json").stdout)["converged"] is True


def test_ids_past_the_tokenizer_come_back_as_placeholders(padded: Served) -> None:
    client, vocab, model = padded.client, padded.vocab, padded.model
    ids = [101, vocab + 3, 2000, vocab + PADDING - 1]
    attention = client.attention(ids, model="padded", layers=[0])[0]
    assert attention.tokens[1] == f"<id {vocab + 3}>" and attention.tokens[3] == f"<id {vocab + PADDING - 1}>"
    assert attention.tokens[0] == "[CLS]"

    joint = client.ablate(TEXT, model="padded", mode="joint", heads=[(0, 1)], continuation_tokens=3,
                          target=targets.next_token()).joint
    assert joint is not None
    encoded = torch.tensor([client.attention(TEXT, model="padded", layers=[0])[0].token_ids])
    with torch.no_grad():  # greedy continuation by plain transformers, the reference
        for _ in range(3):
            encoded = torch.cat([encoded, model(encoded).logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    expected = encoded[0, -3:].tolist()
    assert joint.base_continuation == expected and all(token >= vocab for token in expected)
    assert joint.base_continuation_tokens == [f"<id {token}>" for token in expected]
    assert all(token.startswith("<id ") for token in joint.ablated_continuation_tokens)
