"""Dynamic batching of gradient saliency (the plain gradient and gradient x input):
concurrent calls of one model share one padded forward and backward, each row scored by
its own call's target, and each caller gets exactly its own stream.

The gradient of the sum of the rows' scores is each row's own gradient (rows of a
transformer are independent, padding is masked out); these tests check that nothing
leaks between rows or from the padding: every batched result equals the non-batching
server's (--max-batch-size 1) within 1e-6, on padded mixes of lengths, targets and the
two techniques, for an encoder (MiniLM: embedding targets), a classifier and causal LMs
(GPT-2, LLaMA with grouped-query attention: the input is cut after each call's own
target position, so rows are right-padded to different lengths). As in
tests/test_batching.py, a long attention call holds the worker while the calls queue;
introspect_batch_size shows the batch they ran in. tests/test_saliency.py checks the
unbatched results against autograd on plain transformers.

Exactness: through the float32 server the results agree within FLOAT32_GRADIENTS (1e-5 of
the largest value), not 1e-6: see its note in batching_helpers. The float64 test checks the shared pass itself
within 1e-6 (identical in practice), so that a leak between rows cannot hide in the noise.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from batching_helpers import (
    EXACT,
    assert_cancel_leaves_the_others,
    assert_close,
    assert_same_saliency,
    batch_sizes,
    batches_of,
    plain_results,
    while_blocked,
)
from introspect_client import targets

TEXTS = [
    "Hi",
    "The quick brown fox jumps over the lazy dog.",
    "A much longer sentence that makes the padded width of the merged batch grow well past the others.",
    "short one",
    "Mid-length text about cats and dogs.",
]
CAUSAL: list[dict[str, Any]] = [
    {"input": TEXTS[0], "method": "gradient", "target": targets.next_token()},
    {"input": TEXTS[1], "method": "gradient_x_input", "per_dimension": True, "target": targets.next_token()},
    {"input": TEXTS[2], "method": "gradient", "target": targets.next_token(position=3, token_id=2003)},
    {"input": TEXTS[3], "method": "gradient_x_input", "target": targets.logit_difference(1996, 2003)},
    {"input": TEXTS[4], "method": "gradient", "per_dimension": True, "target": targets.next_token(position=-2)},
]
ENCODER: list[dict[str, Any]] = [
    {"input": TEXTS[0], "method": "gradient", "target": targets.embedding_norm()},
    {"input": TEXTS[2], "method": "gradient_x_input", "per_dimension": True, "target": targets.embedding_norm()},
    {"input": TEXTS[1], "method": "gradient", "target": targets.embedding_similarity(TEXTS[4])},
    {"input": (TEXTS[3], TEXTS[4]), "method": "gradient_x_input", "target": targets.embedding_norm()},
]
# Class scores share a pass only at one length (a sequence classifier given embeddings
# cannot find a padded row's last token): one text, three targets.
CLASSIFIER: list[dict[str, Any]] = [
    {"input": TEXTS[2], "method": "gradient", "target": targets.class_score()},
    {"input": TEXTS[2], "method": "gradient_x_input", "target": targets.class_score(1, probability=True)},
    {"input": TEXTS[2], "method": "gradient", "per_dimension": True, "target": targets.class_score(2)},
]
CASES = {"gpt2": CAUSAL, "llama": CAUSAL, "minilm": ENCODER, "classifier": CLASSIFIER}
@pytest.fixture(scope="module")
def servers(batching_servers: tuple[str, str, int]) -> tuple[str, str, int]:
    """(batching server's address, non-batching server's address, batching server's metrics port)."""
    return batching_servers


def test_in_float64_a_padded_pass_gives_each_row_exactly_its_own_gradients(model_dirs: dict[str, Path]) -> None:
    """The shared pass against each problem's own pass, the models in float64 so that
    summation order is out of the way: equal within EXACT (seen: identical), and the
    padding's gradients exactly 0. A leak between rows or from the padding would show
    far above that."""
    from introspect.config import ModelSpec
    from introspect.methods.attribution import attribution_problem, joint_scores_and_gradients
    from introspect.models import load_model
    from introspect.requests import InputSpec, SaliencyQuery, TargetSpec

    cases = {
        "gpt2": [TargetSpec("next_token"), TargetSpec("next_token", position=2, token_id=2003),
                 TargetSpec("logit_difference", token_id=1996, contrast_token_id=2003), TargetSpec("next_token")],
        "llama": [TargetSpec("next_token")] * 4,
        "minilm": [TargetSpec("embedding_norm"), TargetSpec("embedding_similarity", reference=InputSpec(text=TEXTS[4])),
                   TargetSpec("embedding_norm"), TargetSpec("embedding_norm")],
        "classifier": [TargetSpec("class_score"), TargetSpec("class_score", class_index=1, probability=True),
                       TargetSpec("class_score", class_index=2), TargetSpec("class_score")],
    }
    for name, target_specs in cases.items():
        model = load_model(ModelSpec(name, model_dirs[name]), torch.device("cpu"), "float32")
        model.model.to(torch.float64)
        problems = [attribution_problem(model, SaliencyQuery(model=name, input=InputSpec(text=text), target=target))
                    for text, target in zip(TEXTS, target_specs)]
        assert len({problem.length for problem in problems}) > 2  # a padded mix
        scores, gradients = joint_scores_and_gradients(problems)
        for row, problem in enumerate(problems):
            score, alone = problem.scores_and_gradients(problem.embeddings[None])
            assert_close(gradients[row, :problem.positions].numpy(), alone[0].numpy(), EXACT)
            assert_close(scores[row].item(), score[0].item(), EXACT)
            assert not gradients[row, problem.length:].any()  # the padding


@pytest.mark.parametrize("model", list(CASES))
def test_a_padded_mix_of_gradient_calls_runs_as_one_batch_with_each_result_as_alone(
    servers: tuple[str, str, int], model: str
) -> None:
    batching, plain, port = servers
    requests = CASES[model]
    before = batch_sizes(port)
    results = asyncio.run(while_blocked(batching, requests, model=model, method="saliency"))
    after = batch_sizes(port)
    assert batches_of(before, after, len(requests)) == 1, (before, after)
    assert after["sum"] - before["sum"] == len(requests) + 1  # and the blocker alone
    for result, alone in zip(results, plain_results(plain, requests, model, method="saliency")):
        assert not isinstance(result, BaseException), result
        assert_same_saliency(result, alone)
    # a causal LM's tokens after a call's own target position score 0, padding or not
    if model in ("gpt2", "llama"):
        assert results[2] is not None and not np.any(results[2].scores[4:])


def test_class_scores_of_different_lengths_run_in_separate_passes(servers: tuple[str, str, int]) -> None:
    """Three class-score calls of three lengths: three passes of one call each, every
    result equal to the call alone."""
    batching, plain, port = servers
    requests = [dict(request, input=text) for request, text in zip(CLASSIFIER, (TEXTS[2], TEXTS[0], TEXTS[1]))]
    before = batch_sizes(port)
    results = asyncio.run(while_blocked(batching, requests, model="classifier", method="saliency"))
    after = batch_sizes(port)
    assert batches_of(before, after, 1) == len(requests) + 1, (before, after)  # and the blocker
    for result, alone in zip(results, plain_results(plain, requests, "classifier", method="saliency")):
        assert_same_saliency(result, alone)


def test_cancelling_one_gradient_caller_leaves_the_others_intact(servers: tuple[str, str, int]) -> None:
    assert_cancel_leaves_the_others(servers, CAUSAL, "gpt2", "saliency", assert_same_saliency)


def test_other_techniques_run_alone_and_a_bad_call_fails_alone(servers: tuple[str, str, int]) -> None:
    """Integrated gradients does not share a pass: it runs as its own call next to the
    batch; a call whose target position is outside its input fails alone."""
    from introspect_client import IntrospectError

    batching, plain, port = servers
    integrated = {"input": TEXTS[1], "method": "integrated_gradients", "target": targets.next_token()}
    bad = {"input": TEXTS[0], "method": "gradient", "target": targets.next_token(position=40)}
    requests = [CAUSAL[1], integrated, bad, CAUSAL[2]]
    before = batch_sizes(port)
    first, ig, failed, second = asyncio.run(while_blocked(batching, requests, model="gpt2", method="saliency"))
    assert batches_of(before, batch_sizes(port), 2) == 1  # the gradient calls; the bad one left before the pass
    assert isinstance(failed, IntrospectError) and failed.code.name == "INVALID_ARGUMENT", failed
    assert "target.position" in str(failed)
    good = [CAUSAL[1], integrated, CAUSAL[2]]
    for result, alone in zip((first, ig, second), plain_results(plain, good, "gpt2", method="saliency")):
        assert_same_saliency(result, alone)
