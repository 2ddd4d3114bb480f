"""No request can exhaust the server: size limits refused before tokenizing, memory
estimated against a small --max-request-bytes (never by really allocating), explicit
batch sizes lowered to the budget with the same numbers, and an allocator failure
answered RESOURCE_EXHAUSTED with the server still serving.

One dedicated in-process server serves MiniLM with a 16 MiB budget per request and the
default size limits."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import torch
from conftest import InProcessServer, minilm_dir, reference_inputs, reference_model
from introspect_client import Client, IntrospectError, targets

BUDGET_BYTES = 16 * 1024 * 1024
MEGABYTE_TEXT = "word " * 200_000  # 1 MB
SHORT = "The cat sat on the mat."
WORDS = ("alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu " * 12).split()
REFUSAL_SECONDS = 0.5  # goal: milliseconds


@pytest.fixture(scope="module")
def small_budget_client() -> Iterator[Client]:
    """A client of a MiniLM server whose requests may use BUDGET_BYTES each."""
    server = InProcessServer(f"--model=minilm={minilm_dir()}", f"--max-request-bytes={BUDGET_BYTES}", "--cache-bytes=0")
    with Client(server.address, timeout=60) as client:
        yield client
    assert server.stop() == 0


def refusal(call: Callable[[], Any]) -> tuple[IntrospectError, float]:
    """The error `call` raises, and the seconds it took."""
    started = time.perf_counter()
    with pytest.raises(IntrospectError) as raised:
        call()
    return raised.value, time.perf_counter() - started


def assert_exhausted(error: IntrospectError, field: str, *words: str) -> None:
    """RESOURCE_EXHAUSTED naming `field`, its message naming each of `words`."""
    assert error.code == grpc.StatusCode.RESOURCE_EXHAUSTED, error
    assert [name for name, _ in error.field_violations] == [field], error.field_violations
    for word in words:
        assert word in error.message, error.message


def test_a_megabyte_text_is_refused_before_tokenizing(small_budget_client: Client) -> None:
    error, seconds = refusal(lambda: small_budget_client.attention(MEGABYTE_TEXT, layers=[0]))
    assert_exhausted(error, "inputs[0].text", "--max-text-bytes", "1000000 bytes")
    assert seconds < REFUSAL_SECONDS
    # eight at once (the outside tester's case): each refused as fast
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda _: refusal(lambda: small_budget_client.attention(MEGABYTE_TEXT)), range(8)))
    assert all(error.code == grpc.StatusCode.RESOURCE_EXHAUSTED for error, _ in results)
    assert max(seconds for _, seconds in results) < 2 * REFUSAL_SECONDS


@pytest.mark.parametrize(
    ("call", "field", "limit"),
    [
        (lambda c: c.attention(["a b"] * 65), "inputs", "--max-inputs"),
        (lambda c: c.ablate(SHORT, target=targets.embedding_norm(), value="mean", mean_references=["x"] * 64),
         "mean_references", "--max-inputs"),
        (lambda c: c.attention(["word " * 25_000] * 9), "inputs", "--max-request-text-bytes"),
        (lambda c: c.attention([[101] * 70_000]), "inputs[0].token_ids", "--max-batch-tokens"),
        (lambda c: c.attention(SHORT, layers=[0] * 5000), "layers", "no use for more than 512"),
        (lambda c: c.patch(pairs=[("a b", "a c")] * 33, target=targets.embedding_norm()), "pairs", "--max-inputs"),
    ],
    ids=["inputs", "mean-references", "request-text", "token-ids", "list", "patching-pairs"],
)
def test_size_limits_name_the_field(small_budget_client: Client, call: Callable[[Client], Any], field: str,
                                    limit: str) -> None:
    error, seconds = refusal(lambda: call(small_budget_client))
    assert_exhausted(error, field, limit)
    assert seconds < REFUSAL_SECONDS


@pytest.mark.parametrize(
    ("call", "field"),
    [
        # maps of 20 inputs of 128 tokens: 12 x 128 x 128 x 4 bytes each, 4 layers held at once: 63 MB
        (lambda c: c.attention([" ".join(WORDS[:126])] * 20), "inputs"),
        # integrated gradients on 500 tokens: one row's activations alone exceed 16 MiB
        (lambda c: c.saliency(" ".join(WORDS[:140] * 4)[:2400], target=targets.embedding_norm(), steps=8), "input"),
        (lambda c: c.ablate(" ".join(WORDS[:140] * 4)[:2400], target=targets.embedding_norm(), mode="importance"),
         "input"),
        (lambda c: c.patch(" ".join(WORDS[:140] * 4)[:2400], " ".join(WORDS[:140] * 4)[:2400],
                           target=targets.embedding_norm(), method="attribution"), "input"),
        (lambda c: c.patch(" ".join(WORDS[:140] * 4)[:2400], " ".join(WORDS[:140] * 4)[:2400],
                           target=targets.embedding_norm(), points=["resid_pre"]), "input"),
    ],
    ids=["attention-maps", "integrated-gradients", "head-importance", "attribution-patching", "activation-patching"],
)
def test_a_request_over_the_memory_budget_is_refused_with_what_to_lower(
    small_budget_client: Client, call: Callable[[Client], Any], field: str
) -> None:
    error, _ = refusal(lambda: call(small_budget_client))
    assert_exhausted(error, field, "--max-request-bytes", "16.0 MiB", "short")


def test_a_row_range_brings_maps_of_a_long_input_under_the_budget(
    small_budget_client: Client, model_dirs: dict[str, Path]
) -> None:
    text = " ".join(WORDS[:100] * 2)  # 202 tokens: every row's probabilities alone are 3 x 12 x 202^2 x 4 B per layer
    error, _ = refusal(lambda: small_budget_client.attention(text, layers=[2, 5]))
    assert_exhausted(error, "inputs", "query_start")
    item = small_budget_client.attention(text, layers=[2, 5], query_start=-8)[0]  # 8 rows: fits
    encoded = reference_inputs(model_dirs, "minilm", text)
    with torch.no_grad():
        reference = reference_model(model_dirs, "minilm")(**encoded, output_attentions=True).attentions
    assert item.query_start == len(item.tokens) - 8 == encoded["input_ids"].shape[1] - 8
    for layer in (2, 5):
        np.testing.assert_allclose(item.layers[layer], reference[layer][0, :, -8:].numpy(), atol=1e-4, rtol=0)


@pytest.mark.parametrize(
    ("options", "text"),
    [
        ({"method": "ig", "steps": 64, "batch_size": 64}, SHORT),
        ({"method": "smoothgrad", "samples": 48, "batch_size": 48, "seed": 3}, SHORT),
        ({"method": "occlusion", "batch_size": 512}, " ".join(WORDS[:60])),
    ],
    ids=["integrated-gradients", "smoothgrad", "occlusion"],
)
def test_an_explicit_batch_size_over_the_budget_runs_lowered_with_the_same_numbers(
    small_budget_client: Client, options: dict[str, Any], text: str
) -> None:
    asked = small_budget_client.saliency(text, target=targets.embedding_norm(), **options)
    rows = options.get("steps") or options.get("samples") or len(asked.tokens) - 2  # occlusion: one per word
    assert 1 < asked.batch_size < min(options["batch_size"], rows)
    small = small_budget_client.saliency(text, target=targets.embedding_norm(), **{**options, "batch_size": 2})
    assert small.batch_size == 2
    np.testing.assert_allclose(asked.scores, small.scores, rtol=1e-4, atol=1e-6)


def test_an_ablation_batch_over_the_budget_runs_lowered_with_the_same_numbers(small_budget_client: Client) -> None:
    text = " ".join(WORDS[:24])
    asked = small_budget_client.ablate(text, target=targets.embedding_norm(), batch_size=72)
    assert 1 < asked.batch_size < 72
    small = small_budget_client.ablate(text, target=targets.embedding_norm(), batch_size=3)
    assert small.batch_size == 3
    np.testing.assert_allclose(asked.target_delta, small.target_delta, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(asked.output_change, small.output_change, rtol=1e-4, atol=1e-6)


ALLOCATOR_ERRORS = {
    "cpu": lambda: RuntimeError("[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't allocate "
                                "memory: you tried to allocate 53687091200 bytes. Error code 12"),
    "cuda": lambda: torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 50.00 GiB"),
}


@pytest.mark.parametrize("kind", sorted(ALLOCATOR_ERRORS))
def test_an_allocator_failure_answers_resource_exhausted_and_the_server_goes_on(
    small_budget_client: Client, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    from transformers import BertModel

    forward = BertModel.forward
    reference = small_budget_client.attention(SHORT, layers=[5])[0].layers[5]

    def failing(*args: Any, **kwargs: Any) -> Any:
        raise ALLOCATOR_ERRORS[kind]()

    monkeypatch.setattr(BertModel, "forward", failing)
    error, _ = refusal(lambda: small_budget_client.attention(SHORT, layers=[5], cache="bypass"))
    assert error.code == grpc.StatusCode.RESOURCE_EXHAUSTED, error
    assert "ran out of memory" in error.message
    monkeypatch.setattr(BertModel, "forward", forward)
    again = small_budget_client.attention(SHORT, layers=[5], cache="bypass")[0].layers[5]
    np.testing.assert_array_equal(again, reference)
    assert again.shape == (12, 9, 9)


def test_the_budget_flag_defaults_to_a_share_of_memory() -> None:
    from introspect.budget import default_request_bytes
    from introspect.config import parse_serve_arguments

    assert parse_serve_arguments([]).max_request_bytes == 0
    total = next(int(line.split()[1]) * 1024 for line in Path("/proc/meminfo").read_text().splitlines()
                 if line.startswith("MemTotal:"))
    assert default_request_bytes(torch.device("cpu")) == total // 4
