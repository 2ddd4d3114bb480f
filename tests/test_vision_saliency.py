"""StreamSaliency on images through raw gRPC, against references computed here,
independently of the server's code: the same weights loaded by plain transformers (eager
attention) and fed the case's own image processor's pixel_values, the targets written out
again, torch.autograd, Captum's IntegratedGradients and Occlusion on the pixel tensor,
scipy's Gaussian filter, torch's bilinear interpolate and numpy rollouts."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import torch
import vision
from conftest import InProcessServer, reference_pixel_values, reference_vision_model
from introspect_contract import pb, pb_grpc
from introspect_contract.tensors import decode_tensor, encode_tensor

from google.rpc import error_details_pb2

IMAGE_SEED = 3
CLASS = 1


@dataclass(frozen=True)
class Case:
    """A vision model and its target, on the server and written out for the reference."""

    model: str
    target: pb.Target
    # (reference model, pixel_values [batch, 3, height, width]) -> [batch] scores
    score: Callable[[Any, torch.Tensor], torch.Tensor]


def _features(output: Any) -> torch.Tensor:
    return output if isinstance(output, torch.Tensor) else output.pooler_output


_TEXT_FEATURES: dict[str, torch.Tensor] = {}


def _clip_similarity(model: Any, pixels: torch.Tensor) -> torch.Tensor:
    """cosine(get_image_features(pixels), get_text_features("a dog")), the text tokenized
    by the case's own tokenizer."""
    if "clip" not in _TEXT_FEATURES:
        tokenizer = vision.text_tokenizer()
        with torch.no_grad():
            _TEXT_FEATURES["clip"] = _features(model.get_text_features(**tokenizer(["a dog"], return_tensors="pt")))[0]
    image = _features(model.get_image_features(pixel_values=pixels))
    return torch.nn.functional.cosine_similarity(image, _TEXT_FEATURES["clip"][None], dim=-1)


CASES = {
    "vit-classifier": Case("vit-classifier", pb.Target(class_score=pb.ClassTarget(class_index=CLASS)),
                           lambda m, x: m(pixel_values=x).logits[:, CLASS]),
    "deit-classifier": Case("deit-classifier", pb.Target(class_score=pb.ClassTarget(class_index=CLASS)),
                            lambda m, x: m(pixel_values=x).logits[:, CLASS]),
    "dinov2-encoder": Case("dinov2-encoder", pb.Target(embedding_norm=pb.EmbeddingNormTarget()),
                           lambda m, x: m(pixel_values=x).last_hidden_state.mean(dim=1).norm(dim=-1)),
    "clip-dual": Case("clip-dual", pb.Target(embedding_similarity=pb.EmbeddingSimilarityTarget(
        reference=pb.Input(text=pb.TextInput(text="a dog")))), _clip_similarity),
}


@dataclass
class Reference:
    """The reference side of one case on one image."""

    model: Any
    pixels: torch.Tensor  # [1, 3, height, width]
    case: Case
    processor: Any

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        """Target scores [batch] of pixel_values [batch, 3, height, width]."""
        return self.case.score(self.model, pixels)

    def gradient(self, pixels: torch.Tensor | None = None) -> torch.Tensor:
        """d target / d pixel_values [3, height, width] by torch.autograd."""
        leaf = (self.pixels if pixels is None else pixels).clone().requires_grad_(True)
        (gradient,) = torch.autograd.grad(self(leaf).sum(), leaf)
        return gradient[0]

    def normalised(self, raw: torch.Tensor) -> torch.Tensor:
        """Raw pixels [..., 3, height, width] in 0..1 normalised as the processor does."""
        mean = torch.tensor(self.processor.image_mean, dtype=torch.float32)[:, None, None]
        std = torch.tensor(self.processor.image_std, dtype=torch.float32)[:, None, None]
        return (raw - mean) / std


def image(seed: int = IMAGE_SEED) -> Any:
    return vision.draw_image(seed)


def reference_of(vision_dirs: dict[str, Path], name: str, seed: int = IMAGE_SEED) -> Reference:
    from transformers import AutoImageProcessor

    case = CASES[name]
    return Reference(reference_vision_model(vision_dirs, case.model), reference_pixel_values(vision_dirs, case.model,
                     image(seed)), case, AutoImageProcessor.from_pretrained(vision_dirs[case.model]))


def png_input(seed: int = IMAGE_SEED, format: str = "PNG") -> pb.Input:  # noqa: A002
    return pb.Input(image=pb.ImageInput(encoded=vision.encode(image(seed), format)))


@pytest.fixture(scope="module")
def stub(vision_server: InProcessServer) -> Iterator[pb_grpc.IntrospectionStub]:
    channel = grpc.insecure_channel(vision_server.address)
    yield pb_grpc.IntrospectionStub(channel)
    channel.close()


@dataclass
class Result:
    """A decoded saliency stream."""

    header: pb.StreamHeader
    chunks: list[pb.SaliencyChunk]

    @property
    def final(self) -> pb.SaliencyChunk:
        assert self.chunks[-1].final
        return self.chunks[-1]

    def tensor(self, name: str) -> np.ndarray:
        """A tensor field of the final chunk, as float64."""
        return decode_tensor(getattr(self.final, name)).astype(np.float64)


def request(model: str, target: pb.Target, method: int, input: pb.Input | None = None,  # noqa: A002
            **options: Any) -> pb.StreamSaliencyRequest:
    return pb.StreamSaliencyRequest(model=model, input=input or png_input(), target=target, method=method, **options)


def saliency(stub: pb_grpc.IntrospectionStub, message: pb.StreamSaliencyRequest) -> Result:
    messages = list(stub.StreamSaliency(message))
    assert messages[0].HasField("header")
    return Result(messages[0].header, [item.chunk for item in messages[1:]])


def refused(stub: pb_grpc.IntrospectionStub, message: pb.StreamSaliencyRequest) -> tuple[str, str]:
    """(field, message) of the INVALID_ARGUMENT the request gets."""
    from grpc_status import rpc_status

    with pytest.raises(grpc.RpcError) as error:
        list(stub.StreamSaliency(message))
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT, error.value.details()
    status = rpc_status.from_call(error.value)
    assert status is not None
    bad = error_details_pb2.BadRequest()
    assert status.details[0].Unpack(bad)
    return bad.field_violations[0].field, error.value.details()


def assert_close(actual: np.ndarray, expected: torch.Tensor | np.ndarray, rtol: float = 1e-4,
                 floor: float = 1e-5) -> None:
    """Equal up to float32 noise: relative per value, plus a floor far below the largest
    expected value (for small values from sums that cancel)."""
    expected = np.asarray(expected, dtype=np.float64)
    scale = float(np.abs(expected).max()) or 1.0
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=floor * scale)


def patch_sums(pixels: torch.Tensor | np.ndarray, patch: int) -> np.ndarray:
    """[height, width] -> [rows, columns]: the sum of each patch's pixels."""
    values = np.asarray(pixels, dtype=np.float64)
    height, width = values.shape
    return values.reshape(height // patch, patch, width // patch, patch).sum(axis=(1, 3))


def patch_of(name: str) -> int:
    return vision.VISION_CASES_BY_NAME[name].patch_size


# --- gradients ---------------------------------------------------------------------


@pytest.mark.parametrize("name", list(CASES))
def test_gradient_and_gradient_x_input_equal_autograd(stub: pb_grpc.IntrospectionStub,
                                                      vision_dirs: dict[str, Path], name: str) -> None:
    reference = reference_of(vision_dirs, name)
    gradient = reference.gradient()  # [3, height, width]
    case = CASES[name]
    plain = saliency(stub, request(case.model, case.target, pb.SALIENCY_METHOD_GRADIENT))
    layout = plain.header.inputs[0].image
    assert (layout.height, layout.width) == tuple(reference.pixels.shape[2:])
    with torch.no_grad():
        expected_target = float(reference(reference.pixels)[0])
    assert plain.final.target_score == pytest.approx(expected_target, rel=1e-4, abs=1e-5)
    expected = gradient.norm(dim=0)  # [height, width]: L2 over the channels
    assert_close(plain.tensor("pixel_scores"), expected)
    grid = plain.tensor("grid_scores")
    assert grid.shape == (layout.grid_rows, layout.grid_columns)
    assert_close(grid, patch_sums(expected, patch_of(name)))
    tokens = plain.tensor("scores")
    assert np.all(tokens[: layout.first_patch] == 0)
    np.testing.assert_array_equal(tokens[layout.first_patch:], grid.flatten())
    times_input = saliency(stub, request(case.model, case.target, pb.SALIENCY_METHOD_GRADIENT_X_INPUT))
    expected = (gradient * reference.pixels[0]).sum(dim=0)  # sum over the channels
    assert_close(times_input.tensor("pixel_scores"), expected)
    assert_close(times_input.tensor("grid_scores"), patch_sums(expected, patch_of(name)))


def test_the_vit_grid_is_not_square(stub: pb_grpc.IntrospectionStub) -> None:
    case = CASES["vit-classifier"]
    result = saliency(stub, request(case.model, case.target, pb.SALIENCY_METHOD_GRADIENT))
    layout = result.header.inputs[0].image
    assert (layout.grid_rows, layout.grid_columns, layout.height, layout.width) == (4, 6, 32, 48)
    assert result.tensor("pixel_scores").shape == (32, 48)


def test_smoothgrad_equals_a_hand_loop_on_the_same_noise(stub: pb_grpc.IntrospectionStub,
                                                         vision_dirs: dict[str, Path]) -> None:
    reference = reference_of(vision_dirs, "vit-classifier")
    case = CASES["vit-classifier"]
    samples, level, seed = 5, 0.2, 11
    options = pb.SmoothGradOptions(noise_level=level, samples=samples, seed=seed, batch_size=2)
    result = saliency(stub, request(case.model, case.target, pb.SALIENCY_METHOD_SMOOTHGRAD, smoothgrad=options))
    pixels = reference.pixels[0]  # [3, height, width]
    height, width = pixels.shape[1:]
    std = level * float(pixels.max() - pixels.min())  # the range of the processed pixel values
    generator = torch.Generator().manual_seed(seed)
    total = torch.zeros_like(pixels)
    for _ in range(samples):
        # the noise is drawn in the features' order: [height * width, 3]
        noise = torch.randn((height * width, 3), generator=generator).reshape(height, width, 3).permute(2, 0, 1) * std
        total += reference.gradient((pixels + noise)[None])
    expected = (total / samples).norm(dim=0)
    assert [chunk.steps for chunk in result.chunks] == [2, 4, 5]
    assert_close(result.tensor("pixel_scores"), expected)
    assert_close(result.tensor("grid_scores"), patch_sums(expected, 8))


# --- integrated gradients ----------------------------------------------------------


def blurred(pixels: torch.Tensor, sigma: float) -> torch.Tensor:
    """[3, height, width] under scipy's Gaussian filter per channel: mode "mirror" (d c b |
    a b c d | c b a, torch's "reflect" padding; scipy's "reflect" repeats the edge pixel)
    and truncate so that its radius int(truncate * sigma + 0.5) is ceil(3 sigma), the
    server's kernel radius below the image's size."""
    from scipy.ndimage import gaussian_filter

    radius = min(math.ceil(3 * sigma), pixels.shape[1] - 1, pixels.shape[2] - 1)
    values = pixels.double().numpy()
    channels = [gaussian_filter(values[c], sigma, mode="mirror", truncate=radius / sigma) for c in range(3)]
    return torch.from_numpy(np.stack(channels)).float()


@pytest.mark.parametrize("sigma", [0.7, 2.0, 5.0, 40.0])  # 40: the radius capped at the image's side - 1
def test_the_blur_equals_scipy(sigma: float) -> None:
    from introspect.methods.attribution import gaussian_blur

    pixels = torch.randn(3, 32, 48, generator=torch.Generator().manual_seed(0))
    np.testing.assert_allclose(gaussian_blur(pixels, sigma).numpy(), blurred(pixels, sigma).numpy(), rtol=0, atol=1e-6)


def baseline_pixels(reference: Reference, baseline: str, sigma: float = 5.0, seed: int = 0) -> torch.Tensor:
    """The baseline [1, 3, height, width] written out independently of the server."""
    pixels = reference.pixels[0]
    height, width = pixels.shape[1:]
    if baseline == "black":
        start = reference.normalised(torch.zeros_like(pixels))
    elif baseline == "blur":
        start = blurred(pixels, sigma)
    else:  # noise: torch.rand over [height, width, 3] from the seed, then normalised
        raw = torch.rand((height * width, 3), generator=torch.Generator().manual_seed(seed))
        start = reference.normalised(raw.reshape(height, width, 3).permute(2, 0, 1))
    return start[None]


IG_CASES = [
    ("vit-classifier", "black", {}),
    ("vit-classifier", "blur", {"blur_sigma": 2.0}),
    ("vit-classifier", "noise", {"seed": 5}),
    ("deit-classifier", "blur", {}),  # blur_sigma 0: 5 pixels
    ("dinov2-encoder", "black", {}),
    ("clip-dual", "noise", {"seed": 123}),
]


@pytest.mark.parametrize(("name", "baseline", "options"), IG_CASES)
def test_integrated_gradients_equal_captum(stub: pb_grpc.IntrospectionStub, vision_dirs: dict[str, Path], name: str,
                                           baseline: str, options: dict[str, Any]) -> None:
    from captum.attr import IntegratedGradients

    reference = reference_of(vision_dirs, name)
    steps = 16
    start = baseline_pixels(reference, baseline, sigma=options.get("blur_sigma") or 5.0, seed=options.get("seed", 0))
    expected = IntegratedGradients(reference).attribute(reference.pixels, baselines=start, n_steps=steps,
                                                       method="gausslegendre")[0].detach().sum(dim=0)
    case = CASES[name]
    number = getattr(pb, f"BASELINE_{baseline.upper()}")
    result = saliency(stub, request(case.model, case.target, pb.SALIENCY_METHOD_INTEGRATED_GRADIENTS,
                                    integrated_gradients=pb.IntegratedGradientsOptions(
                                        baseline=number, rule=pb.INTEGRATION_RULE_GAUSS_LEGENDRE, steps=steps,
                                        batch_size=5, **options)))
    with torch.no_grad():
        expected_baseline = float(reference(start)[0])
    assert result.final.baseline_score == pytest.approx(expected_baseline, rel=1e-5, abs=1e-6)
    assert_close(result.tensor("pixel_scores"), expected, rtol=1e-5, floor=1e-6)
    assert_close(result.tensor("grid_scores"), patch_sums(expected, patch_of(name)), rtol=1e-5, floor=1e-6)


def test_black_is_the_default_image_baseline(stub: pb_grpc.IntrospectionStub) -> None:
    case = CASES["deit-classifier"]
    method = pb.SALIENCY_METHOD_INTEGRATED_GRADIENTS
    unset = saliency(stub, request(case.model, case.target, method, integrated_gradients=pb.IntegratedGradientsOptions(
        steps=4)))
    black = saliency(stub, request(case.model, case.target, method, integrated_gradients=pb.IntegratedGradientsOptions(
        steps=4, baseline=pb.BASELINE_BLACK)))
    np.testing.assert_array_equal(unset.tensor("pixel_scores"), black.tensor("pixel_scores"))


# --- occlusion ---------------------------------------------------------------------


def captum_occlusion(reference: Reference, span: int, stride: int, patch: int,
                     start: torch.Tensor | float) -> np.ndarray:
    """Captum's Occlusion on the pixel tensor with windows of span x span patches over all
    channels, at stride patches: per-pixel [height, width] (every channel alike)."""
    from captum.attr import Occlusion

    with torch.no_grad():
        attributions = Occlusion(reference).attribute(
            reference.pixels, sliding_window_shapes=(3, span * patch, span * patch),
            strides=(3, stride * patch, stride * patch), baselines=start, perturbations_per_eval=8)[0]
    for channel in (1, 2):
        np.testing.assert_allclose(attributions[channel].numpy(), attributions[0].numpy(), rtol=0, atol=0)
    return attributions[0].double().numpy()


@pytest.mark.parametrize(
    ("name", "span", "stride", "replacement"),
    # strides that divide (grid side - span): Captum's windows then end at the edge too
    [("vit-classifier", 2, 2, "zero"), ("vit-classifier", 1, 1, "black"), ("deit-classifier", 2, 1, "zero"),
     ("clip-dual", 3, 1, "black")],
)
def test_occlusion_equals_captum(stub: pb_grpc.IntrospectionStub, vision_dirs: dict[str, Path], name: str, span: int,
                                 stride: int, replacement: str) -> None:
    reference = reference_of(vision_dirs, name)
    patch = patch_of(name)
    start = baseline_pixels(reference, "black") if replacement == "black" else 0.0
    expected = captum_occlusion(reference, span, stride, patch, start)
    # aligned windows: every pixel of a patch has the patch's score
    per_patch = expected[::patch, ::patch]
    np.testing.assert_array_equal(np.repeat(np.repeat(per_patch, patch, axis=0), patch, axis=1), expected)
    case = CASES[name]
    options = pb.OcclusionOptions(span=span, stride=stride, batch_size=3,
                                  replacement=getattr(pb, f"BASELINE_{replacement.upper()}"))
    result = saliency(stub, request(case.model, case.target, pb.SALIENCY_METHOD_OCCLUSION, occlusion=options))
    assert len(result.chunks) == 1  # images: one final result
    assert not result.final.HasField("pixel_scores")
    # drops are differences of nearly equal float32 scores
    assert_close(result.tensor("grid_scores"), per_patch, floor=1e-4)
    first = result.header.inputs[0].image.first_patch
    np.testing.assert_array_equal(result.tensor("scores")[first:], result.tensor("grid_scores").flatten())


def test_occlusion_windows_end_at_the_grid_edge(stub: pb_grpc.IntrospectionStub, vision_dirs: dict[str, Path]) -> None:
    """span 3, stride 2 on the 4 x 6 grid: rows start at 0, 1 and columns at 0, 2, 3 (the last
    window of each axis ends at the edge; Captum's would hang over it)."""
    reference = reference_of(vision_dirs, "vit-classifier")
    with torch.no_grad():
        base = float(reference(reference.pixels)[0])
        totals, counts = np.zeros((4, 6)), np.zeros((4, 6))
        for top in (0, 1):
            for left in (0, 2, 3):
                occluded = reference.pixels.clone()
                occluded[..., top * 8:(top + 3) * 8, left * 8:(left + 3) * 8] = 0.0
                totals[top:top + 3, left:left + 3] += base - float(reference(occluded)[0])
                counts[top:top + 3, left:left + 3] += 1
    case = CASES["vit-classifier"]
    result = saliency(stub, request(case.model, case.target, pb.SALIENCY_METHOD_OCCLUSION,
                                    occlusion=pb.OcclusionOptions(span=3, stride=2)))
    assert_close(result.tensor("grid_scores"), totals / counts, floor=1e-4)


# --- inputs, cache and upsampling --------------------------------------------------


def raw_input(pixels: np.ndarray, dtype: str) -> pb.Input:
    return pb.Input(image=pb.ImageInput(pixels=encode_tensor(pixels, dtype)))


def test_the_same_pixels_in_any_encoding_are_one_result_and_one_cache_entry(stub: pb_grpc.IntrospectionStub) -> None:
    seed = 41  # an image no other test sends: its first request is computed
    case = CASES["vit-classifier"]
    inputs = [png_input(seed, "PNG"), png_input(seed, "WEBP"), raw_input(vision.pixels_uint8(image(seed)), "uint8")]
    method = pb.SALIENCY_METHOD_GRADIENT_X_INPUT
    served = [saliency(stub, request(case.model, case.target, method, input=item)) for item in inputs]
    assert [result.header.cached for result in served] == [False, True, True]
    fresh = [saliency(stub, request(case.model, case.target, method, input=item, cache=pb.CACHE_POLICY_BYPASS))
             for item in inputs]
    for result in [*served[1:], *fresh]:
        assert result.header.inputs[0] == served[0].header.inputs[0]
        for name in ("pixel_scores", "grid_scores", "scores"):
            np.testing.assert_array_equal(result.tensor(name), served[0].tensor(name))


def test_float_pixels_are_accepted(stub: pb_grpc.IntrospectionStub) -> None:
    case = CASES["vit-classifier"]
    method = pb.SALIENCY_METHOD_GRADIENT
    as_float = saliency(stub, request(case.model, case.target, method,
                                      input=raw_input(vision.pixels_float(image()), "float32")))
    as_bytes = saliency(stub, request(case.model, case.target, method,
                                      input=raw_input(vision.pixels_uint8(image()), "uint8")))
    assert as_float.header.inputs[0].image == as_bytes.header.inputs[0].image
    # the processor resizes float and uint8 pixels alike up to rounding: close, not equal
    assert_close(as_float.tensor("grid_scores"), as_bytes.tensor("grid_scores"), rtol=0.05, floor=0.02)


def test_upsample_is_the_bilinear_resize_of_the_grid(stub: pb_grpc.IntrospectionStub) -> None:
    case = CASES["vit-classifier"]
    result = saliency(stub, request(case.model, case.target, pb.SALIENCY_METHOD_ATTENTION_ROLLOUT, upsample=True))
    grid = torch.from_numpy(result.tensor("grid_scores")).float()
    expected = torch.nn.functional.interpolate(grid[None, None], size=(32, 48), mode="bilinear", align_corners=False)
    np.testing.assert_allclose(result.tensor("upsampled_scores"), expected[0, 0].numpy(), rtol=1e-6, atol=1e-7)
    plain = saliency(stub, request(case.model, case.target, pb.SALIENCY_METHOD_ATTENTION_ROLLOUT))
    assert not plain.final.HasField("upsampled_scores")


# --- attention rollout and flow ----------------------------------------------------


def rollout_row(model: Any, pixels: torch.Tensor) -> np.ndarray:
    """[tokens]: the [CLS] row of the rollout of eager attentions (mean over heads,
    0.5 A + 0.5 I, rows renormalised, multiplied from the first layer on)."""
    with torch.no_grad():
        attentions = model(pixel_values=pixels, output_attentions=True).attentions
    maps = torch.stack(attentions)[:, 0].double().mean(dim=1).numpy()
    mixed = 0.5 * maps + 0.5 * np.eye(maps.shape[-1])
    mixed /= mixed.sum(axis=-1, keepdims=True)
    rollout = np.eye(maps.shape[-1])
    for layer in mixed:
        rollout = layer @ rollout
    return rollout[0]


@pytest.mark.parametrize("name", ["vit-classifier", "deit-classifier"])
def test_rollout_equals_a_hand_rollout(stub: pb_grpc.IntrospectionStub, vision_dirs: dict[str, Path],
                                       name: str) -> None:
    reference = reference_of(vision_dirs, name)
    expected = rollout_row(reference.model, reference.pixels)
    case = CASES[name]
    result = saliency(stub, request(case.model, case.target, pb.SALIENCY_METHOD_ATTENTION_ROLLOUT))
    layout = result.header.inputs[0].image
    assert_close(result.tensor("scores"), expected)
    grid = expected[layout.first_patch:].reshape(layout.grid_rows, layout.grid_columns)
    assert_close(result.tensor("grid_scores"), grid)


def test_attention_flow_on_17_tokens(stub: pb_grpc.IntrospectionStub) -> None:
    case = CASES["clip-dual"]
    result = saliency(stub, request(case.model, case.target, pb.SALIENCY_METHOD_ATTENTION_FLOW))
    assert len(result.header.inputs[0].tokens) == 17
    scores = result.tensor("scores")
    assert scores.sum() == pytest.approx(1.0, abs=1e-5) and np.all(scores >= 0)
    assert result.tensor("grid_scores").shape == (4, 4)
    np.testing.assert_array_equal(result.tensor("grid_scores").flatten(), scores[1:])


@pytest.fixture(scope="module")
def large_grid_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcessServer]:
    """A ViT of 96 x 96 pixels in 8-pixel patches: 1 + 12 * 12 = 145 tokens."""
    case = vision.VisionCase("vit-145", "vit", vision.IMAGE_CLASSIFIER, "ViTForImageClassification", vision.CLS,
                             (96, 96), 8)
    path = vision.build_vision_model(case, tmp_path_factory.mktemp("vit-145"))
    running = InProcessServer(f"--model=vit-145={path}", "--cache-bytes=0")
    yield running
    assert running.stop() == 0


def test_attention_flow_refuses_more_than_64_tokens(large_grid_server: InProcessServer) -> None:
    channel = grpc.insecure_channel(large_grid_server.address)
    try:
        field, message = refused(pb_grpc.IntrospectionStub(channel), request(
            "vit-145", pb.Target(class_score=pb.ClassTarget()), pb.SALIENCY_METHOD_ATTENTION_FLOW))
    finally:
        channel.close()
    assert field == "input" and "64 tokens" in message and "145" in message


# --- refusals ----------------------------------------------------------------------


IG = pb.SALIENCY_METHOD_INTEGRATED_GRADIENTS
VIT, VIT_TARGET = "vit-classifier", CASES["vit-classifier"].target


@pytest.mark.parametrize(
    ("arguments", "field", "fragment"),
    [
        ({"method": pb.SALIENCY_METHOD_GRADIENT, "per_dimension": True}, "per_dimension", "pixel_scores"),
        ({"model": "siglip-dual", "target": pb.Target(embedding_norm=pb.EmbeddingNormTarget()),
          "method": pb.SALIENCY_METHOD_ATTENTION_ROLLOUT}, "method", "[CLS]"),
        ({"integrated_gradients": pb.IntegratedGradientsOptions(baseline=pb.BASELINE_PAD)},
         "integrated_gradients.baseline", "['black', 'blur', 'noise', 'zero']"),
        ({"integrated_gradients": pb.IntegratedGradientsOptions(baseline=pb.BASELINE_MASK)},
         "integrated_gradients.baseline", "mask is a text baseline"),
        ({"integrated_gradients": pb.IntegratedGradientsOptions(baseline=pb.BASELINE_BLACK, blur_sigma=2.0)},
         "integrated_gradients.blur_sigma", "not BASELINE_BLUR"),
        ({"integrated_gradients": pb.IntegratedGradientsOptions(baseline=pb.BASELINE_BLUR, blur_sigma=-1.0)},
         "integrated_gradients.blur_sigma", ">= 0"),
        ({"integrated_gradients": pb.IntegratedGradientsOptions(baseline=pb.BASELINE_BLUR, blur_sigma=math.nan)},
         "integrated_gradients.blur_sigma", "finite"),
        ({"integrated_gradients": pb.IntegratedGradientsOptions(baseline=pb.BASELINE_BLUR, seed=3)},
         "integrated_gradients.seed", "not BASELINE_NOISE"),
        ({"method": pb.SALIENCY_METHOD_OCCLUSION, "occlusion": pb.OcclusionOptions(replacement=pb.BASELINE_PAD)},
         "occlusion.replacement", "image inputs take ['black', 'zero']"),
        ({"method": pb.SALIENCY_METHOD_OCCLUSION, "occlusion": pb.OcclusionOptions(replacement=pb.BASELINE_BLUR)},
         "occlusion.replacement", "images ['black', 'zero']"),
        ({"method": pb.SALIENCY_METHOD_OCCLUSION, "occlusion": pb.OcclusionOptions(span=5)},
         "occlusion.span", "4x6 patch grid"),
    ],
)
def test_bad_image_options_name_the_field(stub: pb_grpc.IntrospectionStub, arguments: dict[str, Any], field: str,
                                          fragment: str) -> None:
    options = {"model": VIT, "target": VIT_TARGET, "method": IG, **arguments}
    got_field, message = refused(stub, request(**options))
    assert got_field == field, message
    assert fragment in message


@pytest.mark.parametrize(
    ("options", "field", "fragment"),
    [
        ({"integrated_gradients": pb.IntegratedGradientsOptions(baseline=pb.BASELINE_BLACK)},
         "integrated_gradients.baseline", "black is an image baseline; text inputs take ['pad', 'mask', 'zero', "
                                          "'tokens']"),
        ({"integrated_gradients": pb.IntegratedGradientsOptions(baseline=pb.BASELINE_NOISE, seed=4)},
         "integrated_gradients.baseline", "noise is an image baseline"),
        ({"method": pb.SALIENCY_METHOD_OCCLUSION, "occlusion": pb.OcclusionOptions(replacement=pb.BASELINE_BLACK)},
         "occlusion.replacement", "black is an image baseline; text inputs take ['pad', 'mask', 'zero']"),
    ],
)
def test_image_baselines_on_text_name_the_field(address: str, options: dict[str, Any], field: str,
                                                fragment: str) -> None:
    channel = grpc.insecure_channel(address)
    try:
        got_field, message = refused(pb_grpc.IntrospectionStub(channel), request(
            "minilm", pb.Target(embedding_norm=pb.EmbeddingNormTarget()), **{"method": IG, **options},
            input=pb.Input(text=pb.TextInput(text="a photo of a cat"))))
    finally:
        channel.close()
    assert got_field == field, message
    assert fragment in message
