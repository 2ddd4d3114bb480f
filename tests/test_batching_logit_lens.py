"""Dynamic batching of StreamLogitLens: concurrent logit-lens calls of one model share one
padded forward, each caller gets exactly its own stream, and a cancelled caller leaves
the others' results intact.

Two in-process servers of the tiny GPT-2 and LLaMA (causal models, right-padded rows;
LLaMA with grouped-query attention) and MiniLM (whose attention call holds the worker),
no cache: one batching (--max-batch-size 8), one not (--max-batch-size 1). As in
tests/test_batching.py, a long attention call holds the device's worker while the calls
queue, so they are taken as one batch, which introspect_batch_size shows. Every result is
checked against the non-batching server's (probabilities within 1e-6 relative, token ids equal);
tests/test_logit_lens.py checks the unbatched lens against plain transformers.
"""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import pytest
from batching_helpers import (
    EXACT,
    assert_cancel_leaves_the_others,
    assert_close,
    batch_sizes,
    batches_of,
    plain_results,
    while_blocked,
)
TEXTS = [
    "Hi",
    "The quick brown fox jumps over the lazy dog.",
    "A much longer sentence that makes the padded width of the merged batch grow well past the others.",
    "short one",
    "Mid-length text about cats and dogs.",
]
# One key (the model's own prediction is the chosen token): mixed lengths, layers, positions, top_k.
MIXED: list[dict[str, Any]] = [
    {"input": TEXTS[0]},
    {"input": TEXTS[1], "layers": [0, 2], "top_k": 3},
    {"input": TEXTS[2], "positions": [-1, 0, 4]},
    {"input": TEXTS[3], "layers": [1], "top_k": 7},
    {"input": TEXTS[4], "positions": [2]},
]
# The other key: a chosen token, the same deepest layer (the forward stops after it).
CHOSEN: list[dict[str, Any]] = [
    {"input": TEXTS[2], "token_id": 2003, "layers": [0, 1]},
    {"input": TEXTS[0], "token_id": 1996, "layers": [1]},
    {"input": TEXTS[1], "token_id": 2003, "layers": [1, 0], "positions": [-1], "top_k": 2},
]


@pytest.fixture(scope="module")
def servers(batching_servers: tuple[str, str, int]) -> tuple[str, str, int]:
    """(batching server's address, non-batching server's address, batching server's metrics port)."""
    return batching_servers


def assert_same_lens(batched: Any, plain: Any) -> None:
    """Equal tokens, layers, positions, token ids; probabilities within EXACT."""
    assert batched.token_ids == plain.token_ids
    assert batched.layers == plain.layers and batched.positions == plain.positions
    np.testing.assert_array_equal(batched.top_token_ids, plain.top_token_ids)
    assert batched.top_tokens == plain.top_tokens
    assert batched.chosen_token_ids == plain.chosen_token_ids
    # relative per value and of the largest value (the tiny models' probabilities are ~1e-4:
    # an absolute 1e-6 would check nothing)
    assert_close(batched.top_probabilities, plain.top_probabilities, EXACT)
    assert_close(batched.chosen_probabilities, plain.chosen_probabilities, EXACT)


@pytest.mark.parametrize("model", ["gpt2", "llama"])
@pytest.mark.parametrize("requests", [MIXED, CHOSEN], ids=["own-prediction", "chosen-token"])
def test_a_padded_mix_of_lens_calls_runs_as_one_batch_with_each_result_as_alone(
    servers: tuple[str, str, int], model: str, requests: list[dict[str, Any]]
) -> None:
    batching, plain, port = servers
    before = batch_sizes(port)
    results = asyncio.run(while_blocked(batching, requests, model=model, method="logit_lens"))
    after = batch_sizes(port)
    assert batches_of(before, after, len(requests)) == 1, (before, after)
    assert after["sum"] - before["sum"] == len(requests) + 1  # and the blocker alone
    for result, alone in zip(results, plain_results(plain, requests, model, method="logit_lens")):
        assert not isinstance(result, BaseException), result
        assert_same_lens(result, alone)


def test_cancelling_one_lens_caller_leaves_the_others_intact(servers: tuple[str, str, int]) -> None:
    assert_cancel_leaves_the_others(servers, MIXED, "gpt2", "logit_lens", assert_same_lens)


def test_a_bad_lens_call_fails_alone(servers: tuple[str, str, int]) -> None:
    from introspect_client import IntrospectError

    batching, plain, port = servers
    bad = {"input": TEXTS[0], "positions": [40]}  # past the input's tokens: found on the worker
    before = batch_sizes(port)
    first, failed, second = asyncio.run(while_blocked(batching, [MIXED[1], bad, MIXED[2]], model="gpt2",
                                                      method="logit_lens"))
    assert batches_of(before, batch_sizes(port), 2) == 1  # the bad one left before the forward
    assert isinstance(failed, IntrospectError) and failed.code.name == "INVALID_ARGUMENT", failed
    assert "positions" in str(failed)
    for result, alone in zip((first, second), plain_results(plain, [MIXED[1], MIXED[2]], "gpt2", method="logit_lens")):
        assert_same_lens(result, alone)
