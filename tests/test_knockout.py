"""Attention knockout (StreamPatching, ATTENTION_KNOCKOUT) through a real server, against
plain transformers with eager attention whose mask is replaced, in the knocked-out layers,
by the causal mask without the blocked edges (a query left with no key keeps its own
position, as the service defines it): its metric for every window within 1e-4."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import torch
from conftest import reference_model
from introspect_contract import pb
from patching_helpers import IDS, array, logit_difference, pair, payloads, qwen2, refusal, served, stream_patching
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

__all__ = ["qwen2"]  # the fixture, imported for this module

TOLERANCE = 1e-4
REFERENCE = "knockout_reference"
TOKEN, CONTRAST = 2003, 1996
_blocked: dict[int, torch.Tensor] = {}  # layer -> the reference's allowed [query, key] mask there


def _reference_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                         attention_mask: torch.Tensor | None, **kwargs: Any) -> Any:
    """The model's own eager attention with a causal float mask (finfo.min where masked),
    edited in the layers `_blocked` names."""
    length = query.shape[2]
    allowed = _blocked.get(module.layer_idx, torch.ones(length, length, dtype=torch.bool).tril())
    mask = torch.zeros(length, length).masked_fill(~allowed, torch.finfo(torch.float32).min)[None, None]
    eager = sys.modules[type(module).__module__].eager_attention_forward
    return eager(module, query, key, value, mask, **kwargs)


AttentionInterface.register(REFERENCE, _reference_attention)
AttentionMaskInterface.register(REFERENCE, sdpa_mask)


def allowed_edges(length: int, queries: list[int], keys: list[int]) -> torch.Tensor:
    """[query, key] bool: causal, without the query -> key edges; a query with no key
    left attends to itself."""
    allowed = torch.ones(length, length, dtype=torch.bool).tril()
    for query in queries:
        for key in keys:
            allowed[query % length, key % length] = False
    for query in range(length):
        if not allowed[query].any():
            allowed[query, query] = True
    return allowed


def reference_scores(model: Any, starts: list[int], window: int, queries: list[int], keys: list[int]) -> np.ndarray:
    """The logit difference at the last position with each window's edges blocked."""
    layers = model.config.num_hidden_layers
    allowed = allowed_edges(len(IDS), queries, keys)
    scores = []
    for start in starts:
        _blocked.clear()
        _blocked.update({layer: allowed for layer in range(start, min(start + window, layers))})
        with torch.no_grad():
            logits = model(torch.tensor([IDS]), use_cache=False).logits[0, -1]
        scores.append(float(logits[TOKEN] - logits[CONTRAST]))
    _blocked.clear()
    return np.array(scores)


def knockout_request(name: str, queries: list[int], keys: list[int], window: int,
                     layers: list[int] | None = None) -> pb.StreamPatchingRequest:
    """A knockout request on the one clean input IDS with a logit difference target."""
    return pb.StreamPatchingRequest(
        model=name, pairs=[pair(IDS)], method=pb.PATCHING_METHOD_ATTENTION_KNOCKOUT,
        target=logit_difference(TOKEN, CONTRAST), layers=layers or [],
        knockout=pb.KnockoutOptions(query_positions=queries, key_positions=keys, window=window))


def reference_for(name: str, model_dirs: dict[str, Path], qwen2: tuple[str, Path]) -> Any:
    """The plain model with the knockout reference attention."""
    if name == "qwen2":
        return reference_model({"qwen2": qwen2[1]}, "qwen2", REFERENCE)
    return reference_model(model_dirs, name, REFERENCE)


@pytest.mark.parametrize(
    ("name", "window", "queries", "keys"),
    [
        ("gpt2", 1, [-1], [1, 2, 3]),
        ("gpt2", 3, [-1, -2], [4, -3]),
        ("llama", 1, [-1], [1, 2, 3]),
        ("llama", 3, [3, -1], [0, 1, 2, 3]),  # query 3's every key blocked: it keeps itself
        ("qwen2", 1, [-1], [1, 2, 3]),
        ("qwen2", 2, [-1], [0, 4]),
    ],
)
def test_every_window_equals_eager_attention_with_the_edges_masked(
    address: str, model_dirs: dict[str, Path], qwen2: tuple[str, Path], name: str, window: int,
    queries: list[int], keys: list[int],
) -> None:
    server, eager = served(name, address, model_dirs, qwen2)
    responses = stream_patching(server, knockout_request(name, queries, keys, window))
    (baseline,) = payloads(responses, "baseline")
    (result,) = payloads(responses, "knockout")
    layers = eager.config.num_hidden_layers
    assert list(result.window_starts) == list(range(layers)) and result.window == window
    model = reference_for(name, model_dirs, qwen2)
    expected = reference_scores(model, list(range(layers)), window, queries, keys)
    (unblocked,) = reference_scores(model, [0], 0, queries, keys)
    assert baseline.clean_score == pytest.approx(unblocked, abs=TOLERANCE)
    np.testing.assert_allclose(array(result.values), expected, atol=TOLERANCE, rtol=0)
    np.testing.assert_allclose(array(result.change), expected - baseline.clean_score, atol=TOLERANCE, rtol=0)
    assert np.abs(expected - unblocked).max() > 1e-3  # the knockout changes something: the test can fail


def test_layers_choose_the_window_starts_and_windows_stop_at_the_last_layer(
    address: str, model_dirs: dict[str, Path], qwen2: tuple[str, Path]
) -> None:
    responses = stream_patching(address, knockout_request("gpt2", [-1], [0, 1], 2, layers=[2, 0]))
    (result,) = payloads(responses, "knockout")
    assert list(result.window_starts) == [0, 2]
    expected = reference_scores(reference_for("gpt2", model_dirs, qwen2), [0, 2], 2, [-1], [0, 1])
    np.testing.assert_allclose(array(result.values), expected, atol=TOLERANCE, rtol=0)


def test_one_window_per_forward_gives_the_same_values(address: str) -> None:
    request = knockout_request("llama", [-1], [2, 3], 1)
    batched = payloads(stream_patching(address, request), "knockout")[0]
    request.batch_size = 1
    single = payloads(stream_patching(address, request), "knockout")[0]
    np.testing.assert_allclose(array(single.values), array(batched.values), atol=1e-6, rtol=0)


@pytest.mark.parametrize(
    ("options", "field", "fragment"),
    [
        ({"key_positions": [1]}, "knockout.query_positions", "query positions"),
        ({"query_positions": [-1]}, "knockout.key_positions", "key positions"),
        ({"query_positions": [len(IDS)], "key_positions": [1]}, "knockout.query_positions", "outside"),
        ({"query_positions": [-1], "key_positions": [-len(IDS) - 1]}, "knockout.key_positions", "outside"),
        ({"query_positions": [-1], "key_positions": [1], "window": 4}, "knockout.window", "3"),
        ({"query_positions": [-1], "key_positions": [1], "window": -1}, "knockout.window", "-1"),
    ],
)
def test_bad_options_are_refused_naming_the_field(address: str, options: dict[str, Any], field: str,
                                                   fragment: str) -> None:
    request = pb.StreamPatchingRequest(model="gpt2", pairs=[pair(IDS)], method=pb.PATCHING_METHOD_ATTENTION_KNOCKOUT,
                                       target=logit_difference(TOKEN, CONTRAST), knockout=pb.KnockoutOptions(**options))
    code, violation, details = refusal(address, request)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and violation == field and fragment in details
