"""Dynamic batching of StreamAttention: concurrent compatible calls share one padded
forward and each caller still gets exactly its own stream.

Two in-process servers of MiniLM and the tiny GPT-2 (a causal model: padding on the right
of its rows), no cache: one batching (--max-batch-size 8), one not (--max-batch-size 1).
To make calls meet in one batch for sure, a long call of another key (layer 0 only of
16 x 512 tokens) holds the device's worker while they queue; the metrics endpoint's
introspect_batch_size then shows the batch they ran in. Every result is checked against
the non-batching server's (within 1e-6, absolute and relative) and the plain "heads" ones against eager
attention run on each text alone (transformers' output_attentions, within test_attention's
tolerance).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from batching_helpers import assert_same, batch_sizes, batches_of, plain_results, while_blocked
from conftest import reference_inputs, reference_model

EAGER_TOLERANCE = 1e-4  # test_attention's, against transformers' eager attention
TEXTS = [
    "Hi",
    "The quick brown fox jumps over the lazy dog.",
    "Attention is all you need, and a padded batch must not change it.",
    "short one",
    "A much longer sentence that makes the padded width of the merged batch grow well past the others' lengths.",
    "Mid-length text about cats and dogs.",
]
# Requests of one key (every one reaches the last layer): mixed lengths, views and options.
MIXED: list[dict[str, Any]] = [
    {"inputs": TEXTS[0]},
    {"inputs": [TEXTS[1], TEXTS[2]]},
    {"inputs": TEXTS[3], "view": "head_mean", "heads": [0, 5]},
    {"inputs": TEXTS[4], "view": "rollout"},
    {"inputs": TEXTS[5], "top_k": 2, "layers": [1, 5]},
    {"inputs": [TEXTS[2], TEXTS[0]], "view": "head_max", "heads": [3]},
]


@pytest.fixture(scope="module")
def servers(batching_servers: tuple[str, str, int]) -> tuple[str, str, int]:
    """(batching server's address, non-batching server's address, batching server's metrics port)."""
    return batching_servers


def eager(model_dirs: dict[str, Path], name: str, text: str) -> np.ndarray:
    """[layers, heads, tokens, tokens] of transformers' eager attention, the text alone."""
    model = reference_model(model_dirs, name)
    with torch.no_grad():
        output = model(**reference_inputs(model_dirs, name, text), output_attentions=True)
    return torch.stack(output.attentions)[:, 0].numpy()


def test_a_padded_mix_of_calls_runs_as_one_batch_with_each_result_as_alone(
    servers: tuple[str, str, int], model_dirs: dict[str, Path]
) -> None:
    batching, plain, port = servers
    before = batch_sizes(port)
    results = asyncio.run(while_blocked(batching, MIXED))
    after = batch_sizes(port)
    assert batches_of(before, after, len(MIXED)) == 1, (before, after)
    assert after["sum"] - before["sum"] == len(MIXED) + 1  # and the blocker alone
    for result, alone in zip(results, plain_results(plain, MIXED)):
        assert result is not None
        assert_same(result, alone)
    for result, texts in ((results[0], [TEXTS[0]]), (results[1], TEXTS[1:3])):
        assert result is not None
        for item, text in zip(result, texts):
            np.testing.assert_allclose(item.stacked(), eager(model_dirs, "minilm", text), atol=EAGER_TOLERANCE, rtol=0)


def test_a_causal_models_right_padded_rows_match_alone(servers: tuple[str, str, int], model_dirs: dict[str, Path]) -> None:
    batching, plain, port = servers
    requests: list[dict[str, Any]] = [{"inputs": text} for text in TEXTS[:4]]
    before = batch_sizes(port)
    results = asyncio.run(while_blocked(batching, requests, model="gpt2"))
    assert batches_of(before, batch_sizes(port), len(requests)) == 1
    for result, alone, text in zip(results, plain_results(plain, requests, "gpt2"), TEXTS):
        assert result is not None
        assert_same(result, alone)
        np.testing.assert_allclose(result[0].stacked(), eager(model_dirs, "gpt2", text), atol=EAGER_TOLERANCE, rtol=0)


def test_a_bad_call_fails_alone_with_invalid_argument(servers: tuple[str, str, int]) -> None:
    from introspect_client import IntrospectError

    batching, plain, port = servers
    good: list[dict[str, Any]] = [{"inputs": TEXTS[1]}, {"inputs": TEXTS[2]}]
    bad = {"inputs": TEXTS[0], "top_k": 40}  # more keys than the input's 3 tokens: found on the worker
    before = batch_sizes(port)
    first, failed, second = asyncio.run(while_blocked(batching, [good[0], bad, good[1]]))
    assert batches_of(before, batch_sizes(port), 2) == 1  # the bad one left before the forward
    assert isinstance(failed, IntrospectError) and failed.code.name == "INVALID_ARGUMENT", failed
    assert "top_k" in str(failed)
    for result, alone in zip((first, second), plain_results(plain, good)):
        assert_same(result, alone)


def test_calls_with_different_row_ranges_share_a_forward(servers: tuple[str, str, int],
                                                         model_dirs: dict[str, Path]) -> None:
    """Row ranges (query_start/query_end) of different calls in one batch: the forward
    computes the union of their rows and each call gets exactly its own rows."""
    batching, plain, port = servers
    requests: list[dict[str, Any]] = [
        {"inputs": TEXTS[4], "query_start": -3},
        {"inputs": [TEXTS[1], TEXTS[2]], "query_start": 2, "query_end": 5},
        {"inputs": TEXTS[5], "view": "head_mean", "query_start": -1},
        {"inputs": TEXTS[3]},
    ]
    before = batch_sizes(port)
    results = asyncio.run(while_blocked(batching, requests))
    assert batches_of(before, batch_sizes(port), len(requests)) == 1
    for result, alone in zip(results, plain_results(plain, requests)):
        assert result is not None
        assert_same(result, alone)
    full = eager(model_dirs, "minilm", TEXTS[4])  # [layers, heads, tokens, tokens]
    tokens = full.shape[-1]
    item = results[0][0]
    assert item.query_start == tokens - 3
    np.testing.assert_allclose(item.stacked(), full[:, :, tokens - 3:], atol=EAGER_TOLERANCE, rtol=0)
