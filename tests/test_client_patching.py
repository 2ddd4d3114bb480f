"""The Python client's StreamPatching support: request building field by field, the
assembly of hand-made streams into arrays (NaN where nothing was sent, the means over
pairs, the header's inputs per pair), the CLI's --json and --png on a stand-in client,
and end to end through the session server on the tiny GPT-2 (the client's arrays against
the raw messages' tensors)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from introspect_client import Client, PatchingAssembler, patching_request, targets
from introspect_client.plot_patching import patching_figure
from introspect_contract import pb
from introspect_contract.tensors import decode_tensor, encode_tensor

LAYERS, HEADS = 3, 4
CLEAN, CORRUPTED = [5, 6, 7, 8, 9], [5, 6, 17, 8, 9]
TOKENS = ["a", "b", "c", "d", "e"]


# ----------------------------------------------------------------------------------------
# Requests


def test_every_option_lands_in_its_field() -> None:
    request = patching_request(
        "the clean text", [1, 2, 3], model="gpt2", method="attribution",
        target=targets.logit_difference(3, 4, position=-2), metric="kl_divergence",
        points=["resid_pre", "head_position"], direction="noising", layers=[0, 2], positions=-1,
        with_exact=True, knockout_queries=[-1], knockout_keys=(1, 2), window=3, alignment=[0, -1, 2],
        batch_size=8, cache="bypass",
    )
    expected = pb.StreamPatchingRequest(
        model="gpt2",
        pairs=[pb.InputPair(clean=pb.Input(text=pb.TextInput(text="the clean text")),
                            corrupted=pb.Input(token_ids=pb.TokenIds(ids=[1, 2, 3])), alignment=[0, -1, 2])],
        method=pb.PATCHING_METHOD_ATTRIBUTION,
        target=pb.Target(logit_difference=pb.LogitDifferenceTarget(position=-2, token_id=3, contrast_token_id=4)),
        metric=pb.PATCHING_METRIC_KL_DIVERGENCE,
        points=[pb.PATCH_POINT_RESID_PRE, pb.PATCH_POINT_HEAD_POSITION],
        direction=pb.PATCH_DIRECTION_NOISING,
        layers=[0, 2],
        positions=[-1],
        with_exact=True,
        knockout=pb.KnockoutOptions(query_positions=[-1], key_positions=[1, 2], window=3),
        batch_size=8,
        cache=pb.CACHE_POLICY_BYPASS,
    )
    assert request == expected


def test_defaults_and_several_pairs() -> None:
    request = patching_request(pairs=[(CLEAN, CORRUPTED), ("clean only", None), (CLEAN, CORRUPTED[:4], [0, 1, 2, 3, -1])])
    expected = pb.StreamPatchingRequest(
        pairs=[
            pb.InputPair(clean=pb.Input(token_ids=pb.TokenIds(ids=CLEAN)),
                         corrupted=pb.Input(token_ids=pb.TokenIds(ids=CORRUPTED))),
            pb.InputPair(clean=pb.Input(text=pb.TextInput(text="clean only"))),
            pb.InputPair(clean=pb.Input(token_ids=pb.TokenIds(ids=CLEAN)),
                         corrupted=pb.Input(token_ids=pb.TokenIds(ids=CORRUPTED[:4])), alignment=[0, 1, 2, 3, -1]),
        ],
        method=pb.PATCHING_METHOD_ACTIVATION, metric=pb.PATCHING_METRIC_TARGET,
        direction=pb.PATCH_DIRECTION_DENOISING,
    )
    assert request == expected
    assert not request.HasField("knockout") and not request.HasField("target")
    assert not request.pairs[1].HasField("corrupted")


def test_bad_options_are_refused_before_sending() -> None:
    with pytest.raises(ValueError, match="method must be one of"):
        patching_request(CLEAN, CORRUPTED, method="causal_tracing")
    with pytest.raises(ValueError, match="points must be one of"):
        patching_request(CLEAN, CORRUPTED, points=["resid_mid"])
    with pytest.raises(TypeError, match="exactly one"):
        patching_request(CLEAN, CORRUPTED, pairs=[(CLEAN, CORRUPTED)])
    with pytest.raises(TypeError, match="exactly one"):
        patching_request()
    with pytest.raises(TypeError, match="pairs\\[0\\]"):
        patching_request(pairs=[CLEAN])
    with pytest.raises(TypeError, match="target must be a Target"):
        patching_request(CLEAN, CORRUPTED, target="next_token")  # type: ignore[arg-type]


# ----------------------------------------------------------------------------------------
# Assembly of hand-made streams


def _tokenized(index: int, ids: list[int]) -> pb.TokenizedInput:
    return pb.TokenizedInput(input_index=index, tokens=[f"t{token}" for token in ids], token_ids=ids,
                             original_length=len(ids))


def _header(*inputs: list[int]) -> pb.StreamPatchingResponse:
    return pb.StreamPatchingResponse(header=pb.StreamHeader(
        model="gpt2", fingerprint="f" * 8, inputs=[_tokenized(index, ids) for index, ids in enumerate(inputs)]))


def _baseline(pair: int, clean: float, corrupted: float, metric: str = "target") -> pb.StreamPatchingResponse:
    return pb.StreamPatchingResponse(baseline=pb.PatchingBaseline(
        pair_index=pair, clean_score=clean, corrupted_score=corrupted, metric=metric, num_layers=LAYERS,
        num_heads=HEADS, batch_size=4))


def _layer(pair: int, point: int, layer: int, values: np.ndarray, *, positions: list[int] = (),  # type: ignore[assignment]
           heads: list[int] = (), normalized: np.ndarray | None = None,  # type: ignore[assignment]
           method: int = pb.PATCHING_METHOD_ACTIVATION) -> pb.StreamPatchingResponse:
    message = pb.PatchingLayer(pair_index=pair, method=method, point=point, layer=layer, positions=positions,
                               heads=heads, values=encode_tensor(values))
    if normalized is not None:
        message.normalized.CopyFrom(encode_tensor(normalized))
    return pb.StreamPatchingResponse(layer=message)


def _activation_stream(rng: np.random.Generator) -> tuple[list[pb.StreamPatchingResponse], dict[str, np.ndarray]]:
    """Two pairs: resid_pre at layers 0 and 2, positions 0, 2, 3; head at layer 1,
    heads 1 and 3; head_position at layer 2, heads 0 and 2, positions 1 and 4; the
    means of the per-position point and the head point."""
    made = {name: rng.normal(size=shape).astype(np.float32) for name, shape in {
        "resid_pre": (2, 2, 3), "resid_pre_norm": (2, 2, 3), "head": (2, 2), "head_norm": (2, 2),
        "head_position": (2, 2, 2), "mean_resid_pre": (3,), "mean_head": (2,)}.items()}
    stream = [_header(CLEAN, CORRUPTED, CLEAN, CORRUPTED)]
    for pair in range(2):
        stream.append(_baseline(pair, 2.0 + pair, -1.0))
        for row, layer in enumerate((0, 2)):
            stream.append(_layer(pair, pb.PATCH_POINT_RESID_PRE, layer, made["resid_pre"][pair, row],
                                 positions=[0, 2, 3], normalized=made["resid_pre_norm"][pair, row]))
        stream.append(_layer(pair, pb.PATCH_POINT_HEAD, 1, made["head"][pair], heads=[1, 3],
                             normalized=made["head_norm"][pair]))
        stream.append(_layer(pair, pb.PATCH_POINT_HEAD_POSITION, 2, made["head_position"][pair], heads=[0, 2],
                             positions=[1, 4], normalized=made["head_position"][pair] * 2))
    stream.append(_layer(-1, pb.PATCH_POINT_RESID_PRE, 0, made["mean_resid_pre"], positions=[0, 2, 3],
                         normalized=made["mean_resid_pre"] / 2))
    stream.append(_layer(-1, pb.PATCH_POINT_HEAD, 1, made["mean_head"], heads=[1, 3]))
    return stream, made


def _assembled(stream: list[pb.StreamPatchingResponse], corrupted_sent: list[bool] | None = None):  # type: ignore[no-untyped-def]
    assembler = PatchingAssembler(corrupted_sent)
    for message in stream:
        assembler.add(message)
    return assembler.result()


def test_layers_fill_whole_model_grids_with_nan_elsewhere() -> None:
    stream, made = _activation_stream(np.random.default_rng(1))
    result = _assembled(stream)
    assert (result.model, len(result), len(result.inputs)) == ("gpt2", 2, 4)
    for pair in range(2):
        item = result[pair]
        assert item.clean is not None and item.clean.token_ids == CLEAN
        assert item.corrupted is not None and item.corrupted.token_ids == CORRUPTED
        assert item.baseline is not None and (item.baseline.clean_score, item.baseline.corrupted_score) == (2.0 + pair, -1.0)
        assert set(item.maps) == {("activation", "resid_pre"), ("activation", "head"), ("activation", "head_position")}

        resid = item.maps["activation", "resid_pre"]
        expected = np.full((LAYERS, len(CLEAN)), np.nan, np.float32)
        expected[np.ix_([0, 2], [0, 2, 3])] = made["resid_pre"][pair]
        np.testing.assert_array_equal(resid.values, expected)
        expected[np.ix_([0, 2], [0, 2, 3])] = made["resid_pre_norm"][pair]
        np.testing.assert_array_equal(resid.normalized, expected)
        assert (resid.layers, resid.positions, resid.heads) == ([0, 2], [0, 2, 3], [])

        head = item.maps["activation", "head"]
        expected = np.full((LAYERS, HEADS), np.nan, np.float32)
        expected[1, [1, 3]] = made["head"][pair]
        np.testing.assert_array_equal(head.values, expected)
        assert (head.layers, head.heads) == ([1], [1, 3])

        grid = item.maps["activation", "head_position"]
        expected = np.full((LAYERS, HEADS, len(CLEAN)), np.nan, np.float32)
        expected[2][np.ix_([0, 2], [1, 4])] = made["head_position"][pair]
        np.testing.assert_array_equal(grid.values, expected)
        np.testing.assert_array_equal(grid.normalized, expected * 2)
        assert int(np.isfinite(grid.values).sum()) == 4

    mean = result.mean
    assert mean is not None and mean.index == -1 and mean.baseline is None
    assert set(mean.maps) == {("activation", "resid_pre"), ("activation", "head")}
    expected = np.full((LAYERS, len(CLEAN)), np.nan, np.float32)
    expected[0, [0, 2, 3]] = made["mean_resid_pre"]
    np.testing.assert_array_equal(mean.maps["activation", "resid_pre"].values, expected)
    expected = np.full((LAYERS, HEADS), np.nan, np.float32)
    expected[1, [1, 3]] = made["mean_head"]
    np.testing.assert_array_equal(mean.maps["activation", "head"].values, expected)
    assert np.isnan(mean.maps["activation", "head"].normalized).all()  # the mean sent none


def test_kl_maps_have_no_normalized_and_one_pair_no_mean() -> None:
    values = np.array([0.5, 0.25], np.float32)
    result = _assembled([_header(CLEAN, CORRUPTED), _baseline(0, 0.0, 3.0, "kl_divergence"),
                         _layer(0, pb.PATCH_POINT_MLP_OUT, 1, values, positions=[-1 + 5, 1])])
    item = result[0].maps["activation", "mlp_out"]
    assert item.normalized is None and result.mean is None
    np.testing.assert_array_equal(item.values[1, [4, 1]], values)
    assert np.isnan(item.values[[0, 2]]).all()


def test_attribution_with_exact_and_correlations() -> None:
    exact, estimate = np.array([1.0, 2.0], np.float32), np.array([1.5, 1.0], np.float32)
    result = _assembled([
        _header(CLEAN, CORRUPTED), _baseline(0, 1.0, 0.0),
        _layer(0, pb.PATCH_POINT_ATTN_OUT, 0, exact, positions=[0, 1]),
        _layer(0, pb.PATCH_POINT_ATTN_OUT, 0, estimate, positions=[0, 1], method=pb.PATCHING_METHOD_ATTRIBUTION),
        pb.StreamPatchingResponse(correlation=pb.PatchingCorrelation(
            pair_index=0, point=pb.PATCH_POINT_ATTN_OUT, pearson=-1.0, max_abs_difference=1.0)),
    ])
    np.testing.assert_array_equal(result[0].maps["activation", "attn_out"].values[0, :2], exact)
    np.testing.assert_array_equal(result[0].maps["attribution", "attn_out"].values[0, :2], estimate)
    assert result[0].correlations["attn_out"].pearson == -1.0


def test_clean_only_pairs_take_their_header_inputs_in_order() -> None:
    """Pair 0 sends a corrupted input, pair 1 none: the header's inputs are clean0,
    corrupted0, clean1, and each method's arrays come through with their shapes."""
    rng = np.random.default_rng(2)
    lda = {name: rng.normal(size=shape).astype(np.float32) for name, shape in {
        "heads": (LAYERS, HEADS, 5), "mlps": (LAYERS, 5), "attention_biases": (LAYERS, 5), "embeddings": (5,),
        "bias": (5,), "logit_difference": (5,)}.items()}
    second = [3, 4, 5, 6, 7]
    stream = [_header(CLEAN, CORRUPTED, second)]
    for pair in range(2):
        stream += [_baseline(pair, 1.0, 1.0), pb.StreamPatchingResponse(logit_attribution=pb.LogitAttribution(
            pair_index=pair, **{name: encode_tensor(values + pair) for name, values in lda.items()}))]
    stream.append(pb.StreamPatchingResponse(logit_attribution=pb.LogitAttribution(
        pair_index=-1, **{name: encode_tensor(values + 0.5) for name, values in lda.items()})))
    result = _assembled(stream, [True, False])
    assert result[1].clean is not None and result[1].clean.token_ids == second and result[1].corrupted is None
    for pair, shift in ((result[0], 0.0), (result[1], 1.0), (result.mean, 0.5)):
        assert pair is not None and pair.logit_attribution is not None
        for name, values in lda.items():
            np.testing.assert_array_equal(getattr(pair.logit_attribution, name), values + shift)
    with pytest.raises(ValueError, match="give corrupted_sent"):
        _assembled(stream)

    knockout = _assembled([_header(CLEAN), _baseline(0, 2.0, 2.0), pb.StreamPatchingResponse(
        knockout=pb.KnockoutResult(pair_index=0, window_starts=[0, 1], window=2,
                                   values=encode_tensor(np.array([1.0, 1.5], np.float32)),
                                   change=encode_tensor(np.array([-1.0, -0.5], np.float32))))])
    assert knockout[0].knockout is not None and knockout[0].knockout.window_starts == [0, 1]
    np.testing.assert_array_equal(knockout[0].knockout.change, [-1.0, -0.5])


def test_broken_streams_are_refused() -> None:
    values = np.zeros(2, np.float32)
    with pytest.raises(ValueError, match="before its baseline"):
        _assembled([_header(CLEAN, CORRUPTED), _layer(0, pb.PATCH_POINT_HEAD, 0, values, heads=[0, 1])])
    with pytest.raises(ValueError, match="outside the model's 4 heads"):
        _assembled([_header(CLEAN, CORRUPTED), _baseline(0, 1.0, 0.0),
                    _layer(0, pb.PATCH_POINT_HEAD, 0, values, heads=[0, 4])])
    with pytest.raises(ValueError, match="expected \\(3,\\)"):
        _assembled([_header(CLEAN, CORRUPTED), _baseline(0, 1.0, 0.0),
                    _layer(0, pb.PATCH_POINT_RESID_PRE, 0, values, positions=[0, 1, 2])])
    with pytest.raises(ValueError, match="without its header and baselines"):
        _assembled([_header(CLEAN, CORRUPTED)])


# ----------------------------------------------------------------------------------------
# The CLI on a stand-in client


class _StandInClient:
    """Records the CLI's calls and answers with a hand-made stream, assembled."""

    def __init__(self, stream: list[pb.StreamPatchingResponse]) -> None:
        self.calls: list[tuple[object, object, dict[str, object]]] = []
        self._stream = stream

    def patch(self, clean: object, corrupted: object, **options: object) -> object:
        self.calls.append((clean, corrupted, options))
        return _assembled(self._stream, [corrupted is not None])

    def get_model(self, name: str, **options: object) -> pb.ModelInfo:
        return pb.ModelInfo(name=name, kind=pb.MODEL_KIND_CAUSAL_LM)


def _run_cli(arguments: list[str], client: _StandInClient) -> str:
    from introspect_client.cli import build_parser

    args = build_parser({}).parse_args(arguments)
    out = io.StringIO()
    args.run(args, client, out)
    return out.getvalue()


def _one_pair_stream(rng: np.random.Generator) -> tuple[list[pb.StreamPatchingResponse], np.ndarray, np.ndarray]:
    resid = rng.normal(size=(LAYERS, 5)).astype(np.float32)
    heads = rng.normal(size=(LAYERS, HEADS)).astype(np.float32)
    stream = [_header(CLEAN, CORRUPTED), _baseline(0, 2.0, 0.0)]
    stream += [_layer(0, pb.PATCH_POINT_RESID_PRE, layer, resid[layer], positions=list(range(5)),
                      normalized=resid[layer] / 2) for layer in range(LAYERS)]
    stream += [_layer(0, pb.PATCH_POINT_HEAD, layer, heads[layer], heads=list(range(HEADS)),
                      normalized=heads[layer] / 2) for layer in range(LAYERS)]
    return stream, resid, heads


def test_cli_patch_json_sends_the_flags_and_prints_the_arrays() -> None:
    stream, resid, heads = _one_pair_stream(np.random.default_rng(3))
    client = _StandInClient(stream)
    document = json.loads(_run_cli([
        "patch", "--clean", "Mary gave", "--corrupted", "John gave", "--model", "gpt2", "--point", "resid_pre",
        "--point", "head", "--direction", "noising", "--target", "logit_difference", "--token-id", "3",
        "--contrast-token-id", "4", "--layer", "1", "--at", "-1", "--json"], client))
    clean, corrupted, options = client.calls[0]
    assert (clean, corrupted) == ("Mary gave", "John gave")
    assert options["points"] == ["resid_pre", "head"] and options["direction"] == "noising"
    assert options["target"] == targets.logit_difference(3, 4) and options["layers"] == [1]
    assert options["positions"] == [-1] and options["method"] == "activation"
    pair = document["pairs"][0]
    assert pair["baseline"]["clean_score"] == 2.0 and pair["clean_tokens"] == [f"t{t}" for t in CLEAN]
    np.testing.assert_allclose(np.array(pair["maps"]["activation/resid_pre"]["values"], dtype=np.float32), resid)
    np.testing.assert_allclose(np.array(pair["maps"]["activation/head"]["normalized"], dtype=np.float32), heads / 2)
    assert document["mean"] is None

    client = _StandInClient([_header(CLEAN), _baseline(0, 1.0, 1.0), pb.StreamPatchingResponse(
        knockout=pb.KnockoutResult(pair_index=0, window_starts=[0, 1, 2], window=1,
                                   values=encode_tensor(np.ones(3, np.float32)),
                                   change=encode_tensor(np.array([0.0, -0.5, np.nan], np.float32))))])
    document = json.loads(_run_cli(["patch", "--clean", "x", "--method", "attention_knockout", "--metric",
                                    "kl_divergence", "--knockout-queries", "-1", "--knockout-keys", "1", "2",
                                    "--window", "3", "--json"], client))
    _, corrupted, options = client.calls[0]
    assert corrupted is None and options["target"] is None  # KL without --target sends none
    assert (options["knockout_queries"], options["knockout_keys"], options["window"]) == ([-1], [1, 2], 3)
    assert document["pairs"][0]["knockout"]["change"] == [0.0, -0.5, None]


def test_cli_patch_png_draws_one_panel_per_point(tmp_path: Path) -> None:
    stream, resid, heads = _one_pair_stream(np.random.default_rng(4))
    client = _StandInClient(stream)
    out = _run_cli(["patch", "--clean", "a", "--corrupted", "b", "--target", "next_token", "--png",
                    str(tmp_path / "maps.png")], client)
    assert "wrote" in out and Image.open(tmp_path / "maps.png").size[0] > 0

    figure = patching_figure(_assembled(stream))
    panels = [axes for axes in figure.axes if axes.get_images()]
    assert [axes.get_title() for axes in panels] == ["activation patching, resid_pre", "activation patching, head"]
    np.testing.assert_array_equal(np.asarray(panels[0].get_images()[0].get_array()), resid / 2)  # normalized
    np.testing.assert_array_equal(np.asarray(panels[1].get_images()[0].get_array()), heads / 2)
    assert [label.get_text() for label in panels[0].get_xticklabels()] == [f"t{t}" for t in CLEAN]
    assert len(figure.axes) == 4  # two panels, two colour bars


def test_dla_and_knockout_figures() -> None:
    rng = np.random.default_rng(5)
    heads = rng.normal(size=(LAYERS, HEADS, 5)).astype(np.float32)
    mlps = rng.normal(size=(LAYERS, 5)).astype(np.float32)
    zeros = np.zeros(5, np.float32)
    stream = [_header(CLEAN), _baseline(0, 1.0, 1.0), pb.StreamPatchingResponse(logit_attribution=pb.LogitAttribution(
        pair_index=0, heads=encode_tensor(heads), mlps=encode_tensor(mlps), attention_biases=encode_tensor(mlps * 0),
        embeddings=encode_tensor(zeros), bias=encode_tensor(zeros), logit_difference=encode_tensor(zeros)))]
    figure = patching_figure(_assembled(stream, [False]))
    drawn = np.asarray(figure.axes[0].get_images()[0].get_array())
    np.testing.assert_array_equal(drawn[:, :HEADS], heads[:, :, -1])
    np.testing.assert_array_equal(drawn[:, HEADS], mlps[:, -1])
    assert figure.axes[0].get_xticklabels()[-1].get_text() == "MLP"

    change = np.array([0.25, -1.0], np.float32)
    stream = [_header(CLEAN), _baseline(0, 1.0, 1.0), pb.StreamPatchingResponse(knockout=pb.KnockoutResult(
        pair_index=0, window_starts=[0, 2], window=2, values=encode_tensor(change), change=encode_tensor(change)))]
    line = patching_figure(_assembled(stream, [False])).axes[0].lines[0]
    np.testing.assert_array_equal(line.get_xdata(), [0, 2])
    np.testing.assert_array_equal(line.get_ydata(), change)


# ----------------------------------------------------------------------------------------
# End to end (needs activation patching, DLA and knockout served: see methods/patching*.py)


def _raw_layers(client: Client, **options: object) -> list[pb.PatchingLayer]:
    return [message.layer for message in client.stream_patch(**options) if message.HasField("layer")]  # type: ignore[arg-type]


def test_end_to_end_activation_patching_equals_the_raw_messages(client: Client) -> None:
    options: dict[str, object] = {
        "pairs": [(CLEAN, CORRUPTED), (CLEAN, [5, 16, 7, 8, 9])], "model": "gpt2",
        "target": targets.next_token(), "points": ["resid_pre", "head", "head_position"], "layers": [0, 2],
        "cache": "bypass",
    }
    result = client.patch(**options)  # type: ignore[arg-type]
    raw = _raw_layers(client, **options)
    assert raw and result.mean is not None
    for layer in raw:
        pair = result.mean if layer.pair_index == -1 else result[layer.pair_index]
        point = pb.PatchPoint.Name(layer.point).removeprefix("PATCH_POINT_").lower()
        item = pair.maps["activation", point]
        index: tuple[object, ...] = (layer.layer,)
        if layer.heads:
            index += (list(layer.heads),)
        if layer.positions:
            index += (list(layer.positions),)
        cells = item.values[layer.layer][np.ix_(*index[1:])] if len(index) > 2 else item.values[index]
        np.testing.assert_array_equal(cells, decode_tensor(layer.values))
    for pair in result:
        assert np.isnan(pair.maps["activation", "resid_pre"].values[1]).all()  # layer 1 not requested
        assert pair.baseline is not None and pair.baseline.num_layers == LAYERS


def test_end_to_end_logit_attribution_and_knockout(client: Client) -> None:
    lda = client.patch(CLEAN, model="gpt2", method="direct_logit_attribution",
                       target=targets.logit_difference(3, 4), cache="bypass")
    arrays = lda[0].logit_attribution
    assert arrays is not None and arrays.heads.shape == (LAYERS, HEADS, len(CLEAN))
    total = (arrays.heads.sum(axis=(0, 1)) + arrays.mlps.sum(axis=0) + arrays.attention_biases.sum(axis=0)
             + arrays.embeddings + arrays.bias)
    np.testing.assert_allclose(total, arrays.logit_difference, atol=1e-4)

    knockout = client.patch(CLEAN, model="gpt2", method="attention_knockout", target=targets.next_token(),
                            knockout_queries=[-1], knockout_keys=[0, 1], window=2, cache="bypass")
    assert knockout[0].knockout is not None and knockout[0].knockout.window_starts == list(range(LAYERS))
    assert knockout[0].baseline is not None
    np.testing.assert_allclose(knockout[0].knockout.change,
                               knockout[0].knockout.values - knockout[0].baseline.clean_score, atol=1e-5)
