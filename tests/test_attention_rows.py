"""StreamAttention row ranges (query_start / query_end) through a real server and the real
client: exactly the corresponding rows of transformers' eager attention maps
(`output_attentions=True`), with every view, in padded batches, and kept apart in the
result cache; bad ranges are refused naming the field."""

from __future__ import annotations

from pathlib import Path

import grpc
import numpy as np
import pytest
from introspect_client import Client, IntrospectError
from test_attention import TEXTS, TOLERANCE, eager_attentions, numpy_rollout


def expected_rows(length: int, query_start: int, query_end: int) -> slice:
    """The rows a range selects of an input of `length` tokens, written independently:
    Python's own slice semantics for negative bounds, with an end of 0 meaning the end."""
    return slice(query_start, query_end if query_end else None)


@pytest.mark.parametrize("name", ["minilm", "gpt2", "llama"])
@pytest.mark.parametrize(("query_start", "query_end"), [(2, 5), (-3, 0), (1, -1), (0, 1)])
def test_row_ranges_are_the_rows_of_eager_maps_in_a_padded_batch(
    client: Client, model_dirs: dict[str, Path], name: str, query_start: int, query_end: int
) -> None:
    texts = TEXTS[:2]  # 12 and 7 tokens: negative bounds select different rows per input
    references = eager_attentions(model_dirs, name, texts)
    result = client.attention(texts, model=name, query_start=query_start, query_end=query_end, cache="bypass")
    for reference, item in zip(references, result.inputs):
        rows = expected_rows(reference.shape[-1], query_start, query_end)
        expected = reference[:, :, rows]  # [layers, heads, rows, keys]
        assert item.query_start == range(reference.shape[-1])[rows][0]
        stacked = item.stacked()
        assert stacked.shape == expected.shape
        np.testing.assert_allclose(stacked, expected, atol=TOLERANCE, rtol=0)


def test_row_range_with_reductions_and_top_k(client: Client, model_dirs: dict[str, Path]) -> None:
    reference = eager_attentions(model_dirs, "gpt2", TEXTS[:1])[0]  # [layers, heads, tokens, tokens]
    heads, k = [3, 1], 2
    mean = client.attention(TEXTS[0], model="gpt2", view="head_mean", heads=heads, query_start=4, query_end=9)[0]
    np.testing.assert_allclose(mean.stacked()[:, 0], reference[:, heads, 4:9].mean(axis=1), atol=TOLERANCE, rtol=0)
    top = client.attention(TEXTS[0], model="gpt2", view="head_max", top_k=k, query_start=-4)[0]
    maximum = reference[:, :, -4:].max(axis=1)  # [layers, rows, keys]
    for layer, values in top.layers.items():
        np.testing.assert_allclose(values[0], -np.sort(-maximum[layer], axis=-1)[:, :k], atol=TOLERANCE, rtol=0)
        indices = top.key_indices[layer][0].astype(np.int64)
        np.testing.assert_allclose(np.take_along_axis(maximum[layer], indices, axis=-1), values[0], atol=TOLERANCE)


def test_rollout_rows_are_rows_of_the_whole_rollout(client: Client, model_dirs: dict[str, Path]) -> None:
    reference = eager_attentions(model_dirs, "minilm", TEXTS[:1])[0]
    expected = numpy_rollout(reference, 0.5)
    item = client.attention(TEXTS[0], model="minilm", view="rollout", layers=[1, 5], query_start=3, query_end=6)[0]
    for layer in (1, 5):
        np.testing.assert_allclose(item.layers[layer][0], expected[layer][3:6], atol=TOLERANCE, rtol=0)


def test_ranges_are_cached_apart(client: Client, model_dirs: dict[str, Path]) -> None:
    reference = eager_attentions(model_dirs, "llama", TEXTS[2:3])[0]
    first = client.attention(TEXTS[2], model="llama", layers=[1], query_start=0, query_end=1)[0]
    again = client.attention(TEXTS[2], model="llama", layers=[1], query_start=1, query_end=2)[0]
    whole = client.attention(TEXTS[2], model="llama", layers=[1])[0]
    np.testing.assert_allclose(first.layers[1], reference[1][:, 0:1], atol=TOLERANCE, rtol=0)
    np.testing.assert_allclose(again.layers[1], reference[1][:, 1:2], atol=TOLERANCE, rtol=0)
    np.testing.assert_allclose(whole.layers[1], reference[1], atol=TOLERANCE, rtol=0)


@pytest.mark.parametrize(
    ("arguments", "field"),
    [
        ({"query_start": 12}, "query_start"),  # "The quick ..." is 12 tokens: rows 0..11
        ({"query_start": -13}, "query_start"),
        ({"query_start": 5, "query_end": 5}, "query_end"),
        ({"query_start": 5, "query_end": 3}, "query_end"),
        ({"query_end": 13}, "query_end"),
        ({"query_start": -2, "query_end": -2}, "query_end"),
    ],
)
def test_bad_ranges_are_invalid_argument_naming_the_field(
    client: Client, arguments: dict[str, int], field: str
) -> None:
    with pytest.raises(IntrospectError) as error:
        client.attention(TEXTS[0], model="minilm", **arguments)  # type: ignore[arg-type]
    assert error.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert field in error.value.message


def test_a_range_past_a_shorter_input_of_the_batch_is_refused(client: Client) -> None:
    with pytest.raises(IntrospectError) as error:
        client.attention(TEXTS, model="minilm", query_start=4)  # "Hi" is 3 tokens
    assert error.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "query_start" in error.value.message and "3 tokens" in error.value.message
