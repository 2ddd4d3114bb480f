"""The Python client and CLI on image models, end to end through a real server: every
image form the client takes, attention with its views and the patch grid, pixel saliency
and the overlay PNGs, each checked against the reference model run by plain transformers
on the reference processor's pixels."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import vision
from conftest import reference_pixel_values, reference_vision_model
from test_client_cli import run_cli

MODEL = "vit-classifier"  # non-square: a 4 x 6 patch grid after [CLS]
TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def image() -> Image.Image:
    """The drawn image every test sends."""
    return vision.draw_image(5, size=(60, 40))


@pytest.fixture(scope="module")
def png_path(tmp_path_factory: pytest.TempPathFactory, image: Image.Image) -> Path:
    """The image as a PNG file."""
    path = tmp_path_factory.mktemp("images") / "drawn.png"
    path.write_bytes(vision.encode(image, "PNG"))
    return path


def _eager_maps(vision_dirs: dict[str, Path], image: Image.Image) -> list[np.ndarray]:
    """Every layer's attention [heads, tokens, tokens] of the reference model (eager)."""
    model = reference_vision_model(vision_dirs, MODEL)
    pixels = reference_pixel_values(vision_dirs, MODEL, image)
    with torch.no_grad():
        attentions = model(pixel_values=pixels, output_attentions=True).attentions
    return [layer[0].numpy() for layer in attentions]


def test_every_image_form_the_client_takes_gives_the_reference_attention(
    vision_client, vision_dirs: dict[str, Path], image: Image.Image, png_path: Path
) -> None:
    eager = _eager_maps(vision_dirs, image)
    forms = {
        "path": png_path,
        "bytes": png_path.read_bytes(),
        "pil": image,
        "hwc uint8": np.asarray(image),
        "chw float32": np.asarray(image).transpose(2, 0, 1).astype(np.float32) / 255.0,
    }
    for name, value in forms.items():
        result = vision_client.attention(image=value, model=MODEL)
        layout = result[0].image
        assert layout is not None and (layout.grid_rows, layout.grid_columns) == (4, 6), name
        assert (layout.original_height, layout.original_width) == (40, 60), name
        assert result[0].tokens[:2] == ["[CLS]", "patch 0,0"], name
        for layer, maps in enumerate(eager):
            np.testing.assert_allclose(result[0].layers[layer], maps, atol=TOLERANCE, err_msg=f"{name} layer {layer}")


def test_patch_grid_rollout_and_mean_distance_through_the_client(
    vision_client, vision_dirs: dict[str, Path], image: Image.Image, png_path: Path
) -> None:
    eager = _eager_maps(vision_dirs, image)
    grid = vision_client.attention(image=png_path, model=MODEL, view="head_mean", patch_grid=True)
    for layer, maps in enumerate(eager):
        cls_row = maps.mean(axis=0)[0, 1:].reshape(4, 6)  # [CLS] over the patch keys, row-major
        np.testing.assert_allclose(grid[0].layers[layer][0], cls_row, atol=TOLERANCE)
    distance = vision_client.attention(image=png_path, model=MODEL, view="mean_distance")
    centres = [((r + 0.5) * 8, (c + 0.5) * 8) for r in range(4) for c in range(6)]
    for layer, maps in enumerate(eager):
        for head in range(maps.shape[0]):
            naive = np.mean([
                sum(maps[head, 1 + q, 1 + k] * np.hypot(centres[q][0] - centres[k][0], centres[q][1] - centres[k][1])
                    for k in range(24))
                for q in range(24)
            ])
            assert abs(float(distance[0].layers[layer][head]) - naive) < 1e-4


def test_pixel_gradient_and_its_patch_sums_through_the_client(
    vision_client, vision_dirs: dict[str, Path], image: Image.Image, png_path: Path
) -> None:
    from introspect_client import targets

    model = reference_vision_model(vision_dirs, MODEL)
    pixels = reference_pixel_values(vision_dirs, MODEL, image).requires_grad_(True)
    logits = model(pixel_values=pixels).logits[0]
    predicted = int(logits.argmax())
    (gradient,) = torch.autograd.grad(logits[predicted], pixels)
    per_pixel = gradient[0].norm(dim=0).numpy()  # L2 over the colour channels: [height, width]
    result = vision_client.saliency(image=png_path, model=MODEL, method="gradient", target=targets.class_score(),
                                    upsample=True)
    np.testing.assert_allclose(result.pixel_scores, per_pixel, rtol=1e-4, atol=1e-6)
    patch_sums = per_pixel.reshape(4, 8, 6, 8).sum(axis=(1, 3))
    np.testing.assert_allclose(result.grid_scores, patch_sums, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(result.scores[1:], patch_sums.flatten(), rtol=1e-4, atol=1e-6)
    assert result.scores[0] == 0.0 and result.method == "gradient"
    upsampled = torch.nn.functional.interpolate(torch.from_numpy(result.grid_scores)[None, None], size=(32, 48),
                                                mode="bilinear", align_corners=False)[0, 0].numpy()
    np.testing.assert_allclose(result.upsampled_scores, upsampled, atol=1e-6)


def test_the_cli_draws_overlays_and_writes_json(
    vision_server, vision_dirs: dict[str, Path], image: Image.Image, png_path: Path, tmp_path: Path
) -> None:
    overlay = tmp_path / "rollout.png"
    finished = run_cli("attention", "--server", vision_server.address, "--image", str(png_path), "--model", MODEL,
                       "--view", "rollout", "--patch-grid", "--png", str(overlay))
    assert finished.returncode == 0, finished.stderr
    with Image.open(overlay) as drawn:
        assert drawn.format == "PNG" and drawn.size[0] > 100 and drawn.size[1] > 100
    heads = tmp_path / "heads.png"
    finished = run_cli("attention", "--server", vision_server.address, "--image", str(png_path), "--model", MODEL,
                       "--patch-grid", "--layer", "1", "--png", str(heads))
    assert finished.returncode == 0, finished.stderr
    assert heads.stat().st_size > 0

    finished = run_cli("saliency", "--server", vision_server.address, "--image", str(png_path), "--model", MODEL,
                       "--method", "gradient", "--json", "--png", str(tmp_path / "gradient.png"))
    assert finished.returncode == 0, finished.stderr
    printed = json.loads(finished.stdout)
    model = reference_vision_model(vision_dirs, MODEL)
    pixels = reference_pixel_values(vision_dirs, MODEL, image).requires_grad_(True)
    logits = model(pixel_values=pixels).logits[0]
    (gradient,) = torch.autograd.grad(logits[int(logits.argmax())], pixels)
    patch_sums = gradient[0].norm(dim=0).numpy().reshape(4, 8, 6, 8).sum(axis=(1, 3))
    np.testing.assert_allclose(np.asarray(printed["grid_scores"]), patch_sums, rtol=1e-4, atol=1e-6)
    assert printed["image"]["grid_rows"] == 4 and printed["image"]["grid_columns"] == 6
    assert (tmp_path / "gradient.png").stat().st_size > 0


def test_four_cams_from_one_request_through_the_client(vision_client, vision_dirs: dict[str, Path],
                                                       png_path: Path) -> None:
    """by_method holds every CAM of the request; each equals its own request, and the
    Grad-CAM grid equals a hand computation from autograd at the last block's first norm."""
    from introspect_client import targets

    together = vision_client.saliency(image=png_path, model=MODEL, method="grad_cam", target=targets.class_score(0),
                                      also=["hi_res_cam", "xgrad_cam", "layer_cam"])
    assert list(together.by_method) == ["grad_cam", "hi_res_cam", "xgrad_cam", "layer_cam"]
    for name, result in together.by_method.items():
        alone = vision_client.saliency(image=png_path, model=MODEL, method=name, target=targets.class_score(0))
        np.testing.assert_allclose(result.grid_scores, alone.grid_scores, atol=1e-6, err_msg=name)

    model = reference_vision_model(vision_dirs, MODEL)
    with Image.open(png_path) as image:
        pixels = reference_pixel_values(vision_dirs, MODEL, image.convert("RGB"))
    kept: list[torch.Tensor] = []
    norm = model.vit.layers[-1].layernorm_before
    handle = norm.register_forward_hook(lambda module, args, output: kept.append(output))
    try:
        logits = model(pixel_values=pixels).logits
    finally:
        handle.remove()
    (gradients,) = torch.autograd.grad(logits[0, 0], kept[0])
    activations, gradients = kept[0][0, 1:].detach(), gradients[0, 1:]  # patches only: [24, hidden]
    grad_cam = torch.relu((activations * gradients.mean(dim=0)).sum(dim=-1)).reshape(4, 6).numpy()
    np.testing.assert_allclose(together.by_method["grad_cam"].grid_scores, grad_cam, rtol=1e-4, atol=1e-6)
    assert float(grad_cam.max()) > 0


def test_the_cli_scores_similarity_to_a_reference_image(
    vision_server, vision_dirs: dict[str, Path], image: Image.Image, png_path: Path, tmp_path: Path
) -> None:
    """--reference-image: the target is the cosine of the two images' mean-pooled last
    hidden states (an image encoder), as the reference model computes it."""
    other = vision.draw_image(9, size=(50, 50))
    other_path = tmp_path / "other.png"
    other_path.write_bytes(vision.encode(other, "PNG"))
    finished = run_cli("saliency", "--server", vision_server.address, "--image", str(png_path), "--model",
                       "dinov2-encoder", "--method", "gradient", "--target", "similarity", "--reference-image",
                       str(other_path), "--json")
    assert finished.returncode == 0, finished.stderr
    model = reference_vision_model(vision_dirs, "dinov2-encoder")
    with torch.no_grad():
        embeddings = [model(pixel_values=reference_pixel_values(vision_dirs, "dinov2-encoder", picture))
                      .last_hidden_state.mean(dim=1)[0] for picture in (image, other)]
    cosine = float(torch.nn.functional.cosine_similarity(embeddings[0], embeddings[1], dim=0))
    assert abs(json.loads(finished.stdout)["target_score"] - cosine) < 1e-5


def test_a_text_reference_of_a_dual_encoder_is_part_of_the_cache_key(vision_server, png_path: Path) -> None:
    """The same image and text reference twice: the second answer is the cached one, with
    the same score; another text is computed afresh, with the cosine to that text."""
    import grpc
    from introspect_contract import pb, pb_grpc

    def target_score(text: str) -> tuple[bool, float]:
        request = pb.StreamSaliencyRequest(
            model="clip-dual", input=pb.Input(image=pb.ImageInput(encoded=png_path.read_bytes())),
            target=pb.Target(embedding_similarity=pb.EmbeddingSimilarityTarget(
                reference=pb.Input(text=pb.TextInput(text=text)))),
            method=pb.SALIENCY_METHOD_GRADIENT)
        with grpc.insecure_channel(vision_server.address) as channel:
            messages = list(pb_grpc.IntrospectionStub(channel).StreamSaliency(request))
        return messages[0].header.cached, messages[-1].chunk.target_score

    first, second, other = target_score("a red square"), target_score("a red square"), target_score("a blue disc")
    assert (first[0], second[0], other[0]) == (False, True, False)
    assert first[1] == second[1] and other[1] != first[1]
