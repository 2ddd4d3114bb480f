"""The Python client's image support without a server: request building for every image
input form, assembly of hand-made image streams (patch-grid attention, mean attention
distance, CAM results with `also`), and the overlay figures."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from introspect_client import (
    AttentionAssembler,
    ImageLayout,
    SaliencyAssembler,
    attention_request,
    make_image_input,
    make_input,
    make_inputs,
    saliency_request,
)
from introspect_client.ablation import ablation_request
from introspect_client.plot_images import figure_for
from introspect_contract import pb
from introspect_contract.tensors import encode_tensor

GRID = (3, 4)  # rows, columns of the patch grid
PATCH = 8
HEIGHT, WIDTH = GRID[0] * PATCH, GRID[1] * PATCH
SPECIAL = ("[CLS]",)
TOKENS = len(SPECIAL) + GRID[0] * GRID[1]


def _png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def _pixels(height: int = 10, width: int = 7) -> np.ndarray:
    """Distinct RGB pixels [height, width, 3] uint8."""
    return (np.arange(height * width * 3).reshape(height, width, 3) % 251).astype(np.uint8)


# ----------------------------------------------------------------------------------------
# Request building


def _encoded(data: bytes) -> pb.Input:
    return pb.Input(image=pb.ImageInput(encoded=data))


def _pixel_input(chw: np.ndarray, dtype: int) -> pb.Input:
    tensor = pb.Tensor(shape=list(chw.shape), dtype=dtype, data=chw.tobytes())  # type: ignore[arg-type]
    return pb.Input(image=pb.ImageInput(pixels=tensor))


def test_path_sends_the_file_bytes(tmp_path: Path) -> None:
    data = _png(_pixels())
    path = tmp_path / "cat.png"
    path.write_bytes(data)
    assert make_input(path) == _encoded(data)
    assert make_image_input(str(path)) == _encoded(data)  # the explicit image helper reads a str path


def test_str_stays_text(tmp_path: Path) -> None:
    path = tmp_path / "cat.png"
    path.write_bytes(_png(_pixels()))
    assert make_input(str(path)) == pb.Input(text=pb.TextInput(text=str(path)))


def test_bytes_are_sent_untouched() -> None:
    data = _png(_pixels())
    assert make_input(data) == _encoded(data)
    assert make_inputs([data, data]) == [_encoded(data), _encoded(data)]


def test_pil_image_is_encoded_losslessly_as_png() -> None:
    pixels = _pixels()
    message = make_input(Image.fromarray(pixels))
    assert message.image.WhichOneof("source") == "encoded"
    decoded = np.asarray(Image.open(io.BytesIO(message.image.encoded)))
    assert Image.open(io.BytesIO(message.image.encoded)).format == "PNG"
    np.testing.assert_array_equal(decoded, pixels)


def test_hwc_uint8_is_transposed_to_chw() -> None:
    pixels = _pixels()  # [height, width, 3]
    expected = _pixel_input(np.ascontiguousarray(pixels.transpose(2, 0, 1)), pb.DTYPE_UINT8)
    assert make_input(pixels) == expected
    assert list(expected.image.pixels.shape) == [3, 10, 7]


def test_hw_uint8_is_one_channel() -> None:
    pixels = _pixels()[:, :, 0]  # [height, width]
    assert make_input(pixels) == _pixel_input(pixels[np.newaxis].copy(), pb.DTYPE_UINT8)


def test_chw_float_is_sent_as_is() -> None:
    pixels = np.random.default_rng(0).random((3, 5, 6)).astype(np.float32)  # [channels, height, width]
    assert make_input(pixels) == _pixel_input(pixels.astype("<f4"), pb.DTYPE_FLOAT32)
    grey = pixels[:1]
    assert make_input(grey) == _pixel_input(grey.astype("<f4"), pb.DTYPE_FLOAT32)


def test_chw_uint8_is_sent_as_is() -> None:
    pixels = np.ascontiguousarray(_pixels().transpose(2, 0, 1))  # [3, 10, 7]
    assert make_input(pixels) == _pixel_input(pixels, pb.DTYPE_UINT8)


def test_bad_pixels_are_refused() -> None:
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        make_input(np.full((3, 4, 4), 2.0, dtype=np.float32))
    with pytest.raises(ValueError, match="alpha"):
        make_input(np.zeros((5, 5, 4), dtype=np.uint8))
    with pytest.raises(ValueError, match="empty"):
        make_input(b"")


def test_token_id_arrays_stay_token_ids() -> None:
    assert list(make_input(np.array([5, 6], dtype=np.uint8)).token_ids.ids) == [5, 6]
    batch = make_inputs(np.array([[5, 6], [7, 8]], dtype=np.int64))  # a batch of token ids
    assert [list(item.token_ids.ids) for item in batch] == [[5, 6], [7, 8]]


def test_image_keyword_on_every_request() -> None:
    data = _png(_pixels())
    assert list(attention_request(image=data, patch_grid=True).inputs) == [_encoded(data)]
    assert attention_request(image=data, patch_grid=True).patch_grid
    assert saliency_request(image=data).input == _encoded(data)
    assert ablation_request(image=data).input == _encoded(data)
    with pytest.raises(TypeError, match="exactly one"):
        attention_request("text", image=data)
    with pytest.raises(TypeError, match="exactly one"):
        saliency_request()


def test_cam_and_baseline_options() -> None:
    request = saliency_request(
        image=_pixels(), method="grad_cam", cam_layer=2, cam_point="block_output",
        also=["layer_cam", "hi_res_cam"], upsample=True,
    )
    assert request.method == pb.SALIENCY_METHOD_GRAD_CAM
    assert request.cam == pb.CamOptions(
        layer=2, point=pb.CAM_POINT_BLOCK_OUTPUT, also=[pb.SALIENCY_METHOD_LAYER_CAM, pb.SALIENCY_METHOD_HI_RES_CAM]
    )
    assert request.upsample
    assert not saliency_request(image=_pixels(), method="grad_cam").cam.HasField("layer")
    blur = saliency_request(image=_pixels(), method="ig", baseline="blur", blur_sigma=2.5)
    assert (blur.integrated_gradients.baseline, blur.integrated_gradients.blur_sigma) == (pb.BASELINE_BLUR, 2.5)
    noise = saliency_request(image=_pixels(), baseline="noise", seed=7)
    assert (noise.integrated_gradients.baseline, noise.integrated_gradients.seed) == (pb.BASELINE_NOISE, 7)
    assert saliency_request(image=_pixels(), baseline="black").integrated_gradients.baseline == pb.BASELINE_BLACK
    with pytest.raises(ValueError, match="CAM"):
        saliency_request(image=_pixels(), method="grad_cam", also=["ig"])
    with pytest.raises(ValueError, match="cam_point"):
        saliency_request(image=_pixels(), method="grad_cam", cam_point="nowhere")


# ----------------------------------------------------------------------------------------
# Assembly of hand-made streams


def _layout_message() -> pb.ImageLayout:
    return pb.ImageLayout(
        height=HEIGHT, width=WIDTH, patch_height=PATCH, patch_width=PATCH, grid_rows=GRID[0],
        grid_columns=GRID[1], special_tokens=list(SPECIAL), first_patch=len(SPECIAL),
        original_height=HEIGHT * 2, original_width=WIDTH * 2,
    )


def _header(inputs: int = 1) -> pb.StreamHeader:
    tokens = list(SPECIAL) + [f"patch {r},{c}" for r in range(GRID[0]) for c in range(GRID[1])]
    return pb.StreamHeader(
        model="vit", fingerprint="f",
        inputs=[
            pb.TokenizedInput(input_index=index, token_ids=[0] * TOKENS, tokens=tokens, original_length=TOKENS,
                              image=_layout_message())
            for index in range(inputs)
        ],
    )


def test_image_layout_on_results() -> None:
    assembler = AttentionAssembler("mean_distance")
    assembler.add(pb.StreamAttentionResponse(header=_header()))
    layout = assembler.result()[0].image
    assert layout == ImageLayout(HEIGHT, WIDTH, PATCH, PATCH, GRID[0], GRID[1], SPECIAL, 1, HEIGHT * 2, WIDTH * 2)
    assert layout.patch_token(1, 2) == 1 + 1 * GRID[1] + 2
    per_token = np.arange(TOKENS, dtype=np.float32)
    np.testing.assert_array_equal(layout.grid_of(per_token), per_token[1:].reshape(GRID))


def _grid_chunk(layer: int, heads: list[int], values: np.ndarray, complete: bool) -> pb.StreamAttentionResponse:
    return pb.StreamAttentionResponse(chunk=pb.AttentionChunk(
        input_index=0, layer=layer, view=pb.ATTENTION_VIEW_HEADS, heads=heads, query_start=0, query_end=1,
        values=encode_tensor(values), layer_complete=complete, grid_rows=GRID[0], grid_columns=GRID[1],
    ))


def test_patch_grid_attention_assembles_to_layers_heads_rows_columns() -> None:
    rng = np.random.default_rng(1)
    expected = rng.random((2, 4, *GRID)).astype(np.float32)  # [layers, heads, rows, columns]
    assembler = AttentionAssembler("heads")
    assembler.add(pb.StreamAttentionResponse(header=_header()))
    for layer in range(2):  # each layer split by heads, the later heads first
        assembler.add(_grid_chunk(layer, [2, 3], expected[layer, 2:], False))
        assembler.add(_grid_chunk(layer, [0, 1], expected[layer, :2], True))
    item = assembler.result()[0]
    assert item.heads == [0, 1, 2, 3]
    np.testing.assert_array_equal(item.stacked(), expected)


def test_patch_grid_chunk_of_the_wrong_shape_is_refused() -> None:
    assembler = AttentionAssembler("heads")
    assembler.add(pb.StreamAttentionResponse(header=_header()))
    with pytest.raises(ValueError, match="patch-grid"):
        assembler.add(_grid_chunk(0, [0], np.zeros((1, GRID[1], GRID[0]), np.float32), True))


def test_mean_distance_assembles_to_layers_heads() -> None:
    expected = np.random.default_rng(2).random((3, 4)).astype(np.float32) * 20  # [layers, heads]
    assembler = AttentionAssembler("mean_distance")
    assembler.add(pb.StreamAttentionResponse(header=_header()))
    for layer in (2, 0, 1):
        assembler.add(pb.StreamAttentionResponse(chunk=pb.AttentionChunk(
            input_index=0, layer=layer, view=pb.ATTENTION_VIEW_MEAN_DISTANCE, heads=[0, 1, 2, 3], query_start=0,
            query_end=1, values=encode_tensor(expected[layer].reshape(4, 1, 1)), layer_complete=True,
        )))
    item = assembler.result()[0]
    assert item.view == "mean_distance" and item.heads == [0, 1, 2, 3]
    assert item.layers[1].shape == (4,)
    np.testing.assert_array_equal(item.stacked(), expected)


def _cam_chunk(method: int, grid: np.ndarray, upsampled: np.ndarray | None = None) -> pb.StreamSaliencyResponse:
    scores = np.concatenate([[0.0], grid.ravel()]).astype(np.float32)  # [tokens]: [CLS] scores 0
    chunk = pb.SaliencyChunk(
        token_start=0, token_end=TOKENS, scores=encode_tensor(scores), final=True, target_score=1.5,
        converged=True, method=method, grid_scores=encode_tensor(grid),  # type: ignore[arg-type]
    )
    if upsampled is not None:
        chunk.upsampled_scores.CopyFrom(encode_tensor(upsampled))
    return pb.StreamSaliencyResponse(chunk=chunk)


def test_cam_with_also_assembles_one_result_per_method() -> None:
    rng = np.random.default_rng(3)
    grad_cam, layer_cam = rng.random(GRID).astype(np.float32), rng.random(GRID).astype(np.float32)
    upsampled = rng.random((HEIGHT, WIDTH)).astype(np.float32)
    assembler = SaliencyAssembler("grad_cam")
    assembler.add(pb.StreamSaliencyResponse(header=_header()))
    assembler.add(_cam_chunk(pb.SALIENCY_METHOD_GRAD_CAM, grad_cam, upsampled))
    assembler.add(_cam_chunk(pb.SALIENCY_METHOD_LAYER_CAM, layer_cam))
    result = assembler.result()
    assert result.method == "grad_cam" and result.image is not None and result.image.grid_rows == GRID[0]
    assert list(result.by_method) == ["grad_cam", "layer_cam"]
    np.testing.assert_array_equal(result.grid_scores, grad_cam)
    np.testing.assert_array_equal(result.upsampled_scores, upsampled)
    assert result.pixel_scores is None
    np.testing.assert_array_equal(result.scores[1:], grad_cam.ravel())
    other = result.by_method["layer_cam"]
    assert other.method == "layer_cam" and other.by_method == {}
    np.testing.assert_array_equal(other.grid_scores, layer_cam)
    np.testing.assert_array_equal(other.scores[1:], layer_cam.ravel())
    np.testing.assert_array_equal(result.by_method["grad_cam"].grid_scores, grad_cam)


def test_an_unfinished_also_method_is_an_error() -> None:
    assembler = SaliencyAssembler("grad_cam")
    assembler.add(pb.StreamSaliencyResponse(header=_header()))
    assembler.add(_cam_chunk(pb.SALIENCY_METHOD_GRAD_CAM, np.ones(GRID, np.float32)))
    partial = _cam_chunk(pb.SALIENCY_METHOD_XGRAD_CAM, np.ones(GRID, np.float32))
    partial.chunk.final = False
    assembler.add(partial)
    with pytest.raises(ValueError, match="xgrad_cam"):
        assembler.result()


# ----------------------------------------------------------------------------------------
# Figures


def _torch_bilinear(grid: np.ndarray, height: int, width: int) -> np.ndarray:
    tensor = torch.from_numpy(grid)[None, None]
    return torch.nn.functional.interpolate(tensor, size=(height, width), mode="bilinear",
                                           align_corners=False)[0, 0].numpy()


def test_overlay_has_the_processed_size_and_the_bilinear_map(tmp_path: Path) -> None:
    grid = np.random.default_rng(4).random(GRID).astype(np.float32)
    assembler = SaliencyAssembler("grad_cam")
    assembler.add(pb.StreamSaliencyResponse(header=_header()))
    assembler.add(_cam_chunk(pb.SALIENCY_METHOD_GRAD_CAM, grid))
    result = assembler.result()
    image = tmp_path / "sent.png"
    image.write_bytes(_png(_pixels(HEIGHT * 2 + 3, WIDTH * 2 - 1)))  # any size: resized to the processed one

    figure = figure_for(result, image=image)
    panels = [axes for axes in figure.axes if axes.images]
    assert len(panels) == 1
    picture, heat = panels[0].images
    assert picture.get_array().shape == (HEIGHT, WIDTH, 3)
    np.testing.assert_allclose(heat.get_array(), _torch_bilinear(grid, HEIGHT, WIDTH), atol=1e-6)
    assert heat.get_alpha() == pytest.approx(0.5)
    assert "vit" in figure._suptitle.get_text() and "grad_cam" in figure._suptitle.get_text()
    assert len(figure.axes) == 2  # the panel and its colour bar
    figure.savefig(tmp_path / "out.png")


def test_head_panels_of_patch_grid_attention() -> None:
    values = np.random.default_rng(5).random((1, 4, *GRID)).astype(np.float32)
    assembler = AttentionAssembler("heads")
    assembler.add(pb.StreamAttentionResponse(header=_header()))
    assembler.add(_grid_chunk(3, [0, 1, 2, 3], values[0], True))
    figure = figure_for(assembler.result(), image=_pixels(50, 60))
    panels = [axes for axes in figure.axes if axes.images]
    assert [axes.get_title() for axes in panels] == ["L3 H0", "L3 H1", "L3 H2", "L3 H3"]
    for head, axes in enumerate(panels):
        assert axes.images[0].get_array().shape == (HEIGHT, WIDTH, 3)
        np.testing.assert_allclose(axes.images[1].get_array(), _torch_bilinear(values[0, head], HEIGHT, WIDTH),
                                   atol=1e-6)


def test_mean_distance_figure_plots_every_head() -> None:
    distances = np.array([[1.0, 2.0], [5.0, 9.0]], dtype=np.float32)  # [layers, heads]
    assembler = AttentionAssembler("mean_distance")
    assembler.add(pb.StreamAttentionResponse(header=_header()))
    for layer in range(2):
        assembler.add(pb.StreamAttentionResponse(chunk=pb.AttentionChunk(
            layer=layer, view=pb.ATTENTION_VIEW_MEAN_DISTANCE, heads=[0, 1], query_start=0, query_end=1,
            values=encode_tensor(distances[layer].reshape(2, 1, 1)), layer_complete=True,
        )))
    axes = figure_for(assembler.result()).axes[0]
    points = np.concatenate([collection.get_offsets() for collection in axes.collections])
    assert sorted(map(tuple, points.tolist())) == [(0, 1), (0, 2), (1, 5), (1, 9)]
    np.testing.assert_allclose(axes.lines[0].get_ydata(), distances.mean(axis=1))


# ----------------------------------------------------------------------------------------
# The CLI's image flags, on a stand-in client that returns hand-assembled results


class _StandInClient:
    """Records the calls of the CLI and answers with assembled hand-made streams."""

    def __init__(self, saliency: list[pb.StreamSaliencyResponse], attention: list[pb.StreamAttentionResponse]) -> None:
        self.calls: list[tuple[str, object, dict[str, object]]] = []
        self._saliency, self._attention = saliency, attention

    def saliency(self, input: object, **options: object) -> object:
        self.calls.append(("saliency", input, options))
        assembler = SaliencyAssembler(str(options["method"]))
        for message in self._saliency:
            assembler.add(message)
        return assembler.result()

    def attention(self, inputs: object, **options: object) -> object:
        self.calls.append(("attention", inputs, options))
        assembler = AttentionAssembler(str(options["view"]))
        for message in self._attention:
            assembler.add(message)
        return assembler.result()


def _run_cli(arguments: list[str], client: _StandInClient) -> str:
    from introspect_client.cli import build_parser

    args = build_parser({}).parse_args(arguments)
    out = io.StringIO()
    args.run(args, client, out)
    return out.getvalue()


def test_cli_saliency_image_json_and_png(tmp_path: Path) -> None:
    import json

    grid, other = np.ones(GRID, np.float32), np.full(GRID, 2.0, np.float32)
    client = _StandInClient([pb.StreamSaliencyResponse(header=_header()),
                             _cam_chunk(pb.SALIENCY_METHOD_GRAD_CAM, grid),
                             _cam_chunk(pb.SALIENCY_METHOD_LAYER_CAM, other)], [])
    image = tmp_path / "cat.png"
    image.write_bytes(_png(_pixels(40, 50)))
    common = ["saliency", "--image", str(image), "--target", "class", "--method", "grad_cam", "--cam-layer", "1",
              "--cam-point", "block_input", "--also", "layer_cam", "--upsample"]
    document = json.loads(_run_cli(common + ["--json"], client))
    _, sent, options = client.calls[0]
    assert sent == image and options["cam_layer"] == 1 and options["also"] == ["layer_cam"] and options["upsample"]
    assert document["image"]["grid_rows"] == GRID[0] and document["image"]["special_tokens"] == ["[CLS]"]
    assert document["grid_scores"] == grid.tolist() and document["also"]["layer_cam"]["grid_scores"] == other.tolist()
    _run_cli(common + ["--png", str(tmp_path / "out.png")], client)
    assert Image.open(tmp_path / "out.png").size[0] > 0
    with pytest.raises(SystemExit):
        _run_cli(["saliency", "--image", str(image), "--text", "both"], client)


def test_cli_attention_patch_grid_and_mean_distance(tmp_path: Path) -> None:
    import json

    values = np.random.default_rng(6).random((4, *GRID)).astype(np.float32)
    client = _StandInClient([], [pb.StreamAttentionResponse(header=_header()), _grid_chunk(2, [0, 1, 2, 3], values, True)])
    image = tmp_path / "cat.png"
    image.write_bytes(_png(_pixels(40, 50)))
    document = json.loads(_run_cli(["attention", "--image", str(image), "--layer", "2", "--view", "heads",
                                    "--patch-grid", "--json"], client))
    assert client.calls[0][2]["patch_grid"] is True
    np.testing.assert_allclose(np.array(document["layers"]["2"]), values)
    assert document["image"]["height"] == HEIGHT
    _run_cli(["attention", "--image", str(image), "--layer", "2", "--view", "heads", "--patch-grid",
              "--png", str(tmp_path / "heads.png")], client)
    assert (tmp_path / "heads.png").stat().st_size > 0

    distances = np.arange(8, dtype=np.float32).reshape(2, 4)
    client = _StandInClient([], [pb.StreamAttentionResponse(header=_header())] + [
        pb.StreamAttentionResponse(chunk=pb.AttentionChunk(
            layer=layer, view=pb.ATTENTION_VIEW_MEAN_DISTANCE, heads=[0, 1, 2, 3], query_start=0, query_end=1,
            values=encode_tensor(distances[layer].reshape(4, 1, 1)), layer_complete=True))
        for layer in range(2)
    ])
    document = json.loads(_run_cli(["attention", "--image", str(image), "--view", "mean_distance", "--json"], client))
    assert client.calls[0][2]["layers"] == []
    assert document["layers"] == {"0": [0.0, 1.0, 2.0, 3.0], "1": [4.0, 5.0, 6.0, 7.0]}
    assert "mean attention distance" in _run_cli(["attention", "--image", str(image), "--view", "mean_distance"], client)
