"""StreamShapleyHeads through the session server and the real client, against a brute
force on plain transformers models: one forward per subset of the chosen heads, the heads
left out zeroed (or replaced by their mean) by a forward pre-hook on the attention output
projection (test_head_ablation's `edited`), then the Shapley formula over all subsets.
"""

from __future__ import annotations

import itertools
import math
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
from introspect_client import Client, IntrospectError, targets
from test_head_ablation import CASES, TEXT, Reference, replaced, zeroed

TOLERANCE = 2e-5  # float32 forwards against float32 forwards, values of ~1e-3..1e-1
SHORT = "The quick brown fox jumps over the lazy"


def brute_force(reference: Reference, heads: list[tuple[int, int]], value: str = "zero") -> dict[tuple[int, int], float]:
    """Shapley values of `heads` for the case's target score, by the formula over all subsets."""
    means = reference.head_means([TEXT]) if value == "mean" else None
    n = len(heads)
    scores: dict[frozenset[tuple[int, int]], float] = {}
    for size in range(n + 1):
        for kept in itertools.combinations(heads, size):
            left_out: dict[int, list[int]] = {}
            for layer, head in heads:
                if (layer, head) not in kept:
                    left_out.setdefault(layer, []).append(head)
            edits = {layer: zeroed(hs) if means is None else replaced(hs, means[layer])
                     for layer, hs in left_out.items()}
            scores[frozenset(kept)] = reference.score(reference.outputs(edits))
    values = {}
    for player in heads:
        others = [head for head in heads if head != player]
        total = 0.0
        for size in range(n):
            weight = math.factorial(size) * math.factorial(n - size - 1) / math.factorial(n)
            for subset in itertools.combinations(others, size):
                total += weight * (scores[frozenset(subset) | {player}] - scores[frozenset(subset)])
        values[player] = total
    return values


@pytest.mark.parametrize(("name", "value", "heads"), [
    ("gpt2", "zero", [(0, 1), (0, 3), (1, 0), (1, 2), (2, 1), (2, 3)]),
    ("gpt2", "mean", [(0, 0), (1, 1), (2, 2), (2, 3)]),
    # grouped-query attention, a target before the end (the input cut after it)
    ("llama", "zero", [(0, 0), (0, 1), (1, 3), (2, 2), (2, 0)]),
    ("minilm", "zero", [(0, 4), (3, 7), (5, 1), (5, 11)]),
    ("classifier", "zero", [(0, 0), (0, 1), (1, 2), (1, 3)]),
])
def test_exact_values_equal_a_brute_force_over_all_subsets(
    client: Client, model_dirs: dict[str, Path], name: str, value: str, heads: list[tuple[int, int]]
) -> None:
    case = CASES[name]
    reference = Reference(model_dirs, case)
    expected = brute_force(reference, heads, value)
    result = client.shapley_heads(TEXT, model=name, target=case.target, heads=heads, value=value, batch_size=7)
    assert result.exact and result.permutations == 0 and not result.estimates
    assert result.heads == sorted(heads)
    assert result.evaluations == 2 ** len(heads)
    for (layer, head), item, error in zip(result.heads, result.values, result.standard_errors):
        assert item == pytest.approx(expected[layer, head], abs=TOLERANCE), (layer, head)
        assert error == 0
    assert result.full_score == pytest.approx(reference.score(reference.base), abs=TOLERANCE)
    assert float(result.values.sum()) == pytest.approx(result.full_score - result.empty_score, abs=TOLERANCE)
    assert np.abs(result.values).max() > 3 * TOLERANCE  # the heads matter: the checks above are not trivially met
    grid = result.grid()
    assert grid.shape == (result.num_layers, result.num_heads)
    assert np.isfinite(grid).sum() == len(heads)


def test_sampled_estimates_converge_to_the_exact_values(client: Client) -> None:
    heads = [(0, 1), (0, 3), (1, 0), (1, 2), (2, 1), (2, 3)]
    target = CASES["gpt2"].target
    exact = client.shapley_heads(TEXT, model="gpt2", target=target, heads=heads)
    sampled = client.shapley_heads(TEXT, model="gpt2", target=target, heads=heads, sample=True,
                                   max_permutations=301, seed=7, batch_size=64)
    assert not sampled.exact and not sampled.converged
    assert sampled.permutations == 302  # rounded up to whole antithetic pairs
    assert sampled.evaluations == 1 + 1 + 302 * (len(heads) - 1)
    assert np.all(sampled.standard_errors > 0)
    assert np.all(np.abs(sampled.values - exact.values) <= 4 * sampled.standard_errors + 1e-6)
    # every permutation's contributions sum to v(all) - v(none): so does the estimate
    assert float(sampled.values.sum()) == pytest.approx(exact.full_score - exact.empty_score, abs=1e-5)
    counts = [estimate.permutations for estimate in sampled.estimates]
    assert counts == sorted(counts) and counts[-1] == 302 and len(counts) > 1
    np.testing.assert_array_equal(sampled.estimates[-1].values, sampled.values)
    # more permutations, smaller errors
    early = sampled.estimates[2]
    assert early.standard_errors.max() > sampled.standard_errors.max()
    again = client.shapley_heads(TEXT, model="gpt2", target=target, heads=heads, sample=True,
                                 max_permutations=301, seed=7, batch_size=5, cache="bypass")
    np.testing.assert_allclose(again.values, sampled.values, atol=1e-6)  # same seed, another batching


def test_sampling_stops_at_the_requested_standard_error(client: Client) -> None:
    target = targets.embedding_norm()
    result = client.shapley_heads(SHORT, model="minilm", target=target, heads="all", max_standard_error=0.05,
                                  max_permutations=2000, seed=1)
    assert result.converged and not result.exact
    assert len(result.heads) == 72 and result.values.shape == (72,)
    assert 8 <= result.permutations < 2000
    assert float(result.standard_errors.max()) <= 0.05
    assert all(float(estimate.standard_errors.max()) > 0.05 for estimate in result.estimates[:-1]
               if estimate.permutations >= 8)
    assert float(result.values.sum()) == pytest.approx(result.full_score - result.empty_score, abs=1e-3)


def test_leaving_the_stream_early_cancels_it(client: Client) -> None:
    # 20,000 permutations of 12 heads, 22 coalitions per forward: minutes uncancelled
    stream = client.stream_shapley_heads(TEXT, model="gpt2", target=targets.next_token(), heads="all", sample=True,
                                         max_permutations=20000, batch_size=22, cache="bypass")
    for message in stream:
        if message.WhichOneof("payload") == "estimate":
            break
    stream.close()  # type: ignore[attr-defined]
    started = time.perf_counter()
    client.shapley_heads(SHORT, model="gpt2", target=targets.next_token(), heads=[(0, 1), (1, 2)], cache="bypass")
    assert time.perf_counter() - started < 3


@pytest.mark.parametrize(("options", "field"), [
    ({"heads": [(3, 0)]}, "heads[0].layer"),
    ({"heads": [(0, 1), (1, 4)]}, "heads[1].head"),
    ({"heads": [(0, 1), (0, 1)]}, "heads"),
    ({"heads": []}, "heads"),
    ({"heads": "all", "max_permutations": 20002}, "max_permutations"),
    ({"heads": "all", "max_permutations": -2}, "max_permutations"),
    ({"heads": "all", "max_standard_error": -0.1}, "max_standard_error"),
    ({"heads": "all", "max_standard_error": float("nan")}, "max_standard_error"),
    ({"heads": "all", "batch_size": -1}, "batch_size"),
    ({"heads": [(0, 1)], "target": None}, "target"),
])
def test_bad_requests_name_their_field(client: Client, options: dict, field: str) -> None:
    options = {"target": targets.next_token(), **options}
    with pytest.raises(IntrospectError) as caught:
        client.shapley_heads(SHORT, model="gpt2", **options)
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert [name for name, _ in caught.value.field_violations] == [field], caught.value


def test_cli_json_png_and_html(address: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from introspect_client.cli import main
    from introspect_client.html import to_html

    heads = ["0:1", "1:2", "2:3"]
    base = ["--server", address, "shapley", "--text", SHORT, "--model", "gpt2", "--heads", *heads]
    assert main([*base, "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["exact"] and document["heads"] == [[0, 1], [1, 2], [2, 3]] and len(document["values"]) == 3
    png, page = tmp_path / "bars.png", tmp_path / "view.html"
    assert main([*base, "--sample", "--max-permutations", "20", "--png", str(png), "--html", str(page)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = page.read_text()
    assert "Shapley value" in text and "±" in text
    assert main(base) == 0
    assert "Shapley head values (exact)" in capsys.readouterr().out
    with Client(address) as client:
        result = client.shapley_heads(SHORT, model="gpt2", target=targets.next_token(), heads=[(0, 1), (2, 3)])
    assert "L2" in to_html(result)
