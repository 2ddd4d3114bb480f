"""result.to_xarray(): named axes and token coordinates over the arrays the client
assembles, on calls to the session's real server; a clear ImportError without xarray."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from introspect_client import Client, targets

xr = pytest.importorskip("xarray")
TEXT = "The cat sat on the mat."


def test_attention_heads_as_a_dataarray(client: Client) -> None:
    item = client.attention(TEXT, model="minilm", layers=[1, 4], heads=[3, 0])[0]
    array = item.to_xarray()
    assert isinstance(array, xr.DataArray)
    assert array.dims == ("layer", "head", "query", "key")
    assert list(array.layer.values) == [1, 4] and list(array["head"].values) == [3, 0]
    assert list(array.query_token.values) == item.tokens == list(array.key_token.values)
    np.testing.assert_array_equal(array.sel(layer=4, head=0).values, item.layers[4][1])
    # labelled selection: what does "cat" attend to in layer 1, head 3?
    row = array.sel(layer=1, head=3).isel(query=item.tokens.index("cat"))
    np.testing.assert_array_equal(row.values, item.layers[1][0, item.tokens.index("cat")])


def test_reduced_view_row_range_and_top_k(client: Client) -> None:
    item = client.attention(TEXT, model="minilm", layers=[0], view="head_mean", query_start=-3, top_k=2)[0]
    array = item.to_xarray()
    assert array.dims == ("layer", "head", "query", "rank")
    assert list(array["head"].values) == ["head_mean"]
    assert list(array["query"].values) == list(range(len(item.tokens) - 3, len(item.tokens)))
    assert list(array.query_token.values) == item.tokens[-3:]
    np.testing.assert_array_equal(array.key_index.values[0], item.key_indices[0])


def test_batch_gives_one_dataarray_per_input(client: Client) -> None:
    result = client.attention([TEXT, "Another, longer text about a dog."], model="minilm", layers=[2])
    arrays = result.to_xarray()
    assert [array.sizes["key"] for array in arrays] == [len(item.tokens) for item in result]


def test_saliency_and_ablation(client: Client) -> None:
    saliency = client.saliency(TEXT, model="minilm", method="gradient", target=targets.embedding_norm())
    scores = saliency.to_xarray()
    assert scores.dims == ("token",) and list(scores.token_text.values) == saliency.tokens
    np.testing.assert_array_equal(scores.values, saliency.scores)
    ablation = client.ablate(TEXT, model="classifier", target=targets.class_score(0))
    grids = ablation.to_xarray()
    assert isinstance(grids, xr.Dataset) and grids.target_delta.dims == ("layer", "head")
    np.testing.assert_array_equal(grids.target_delta.values, ablation.target_delta)
    np.testing.assert_array_equal(grids.output_change.sel(layer=1, head=2).values, ablation.output_change[1, 2])


def test_without_xarray_the_error_says_what_to_install(client: Client, monkeypatch: pytest.MonkeyPatch) -> None:
    item = client.attention(TEXT, model="minilm", layers=[0], view="head_mean")[0]
    monkeypatch.setitem(sys.modules, "xarray", None)
    with pytest.raises(ImportError, match=r"pip install 'introspect\[xarray\]'"):
        item.to_xarray()
