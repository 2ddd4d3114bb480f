"""Image inputs as sent -> RGB pixels, before the model's image processor sees them.

Encoded files are PNG, JPEG or WebP (nothing else is even probed), decoded with Pillow
under a pixel limit checked from the header before any pixel is decoded (decompression
bombs are refused, not decoded), turned upright by their EXIF orientation and converted
to 8-bit RGB: alpha composited onto white (as transformers' `convert_rgb` does), palette,
grey, CMYK and 16-bit images converted. Raw pixel tensors ([channels, height, width],
uint8 0-255 or float32 0-1, with 1 or 3 channels) are checked and laid out as
[height, width, 3] for the processor.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import InvalidInput, require
from .requests import ImageSpec

FORMATS = ("PNG", "JPEG", "WEBP")
DEFAULT_MAX_IMAGE_PIXELS = 40_000_000
"""Largest image accepted (width x height), about 6300 x 6300."""
_CHANNELS = (1, 3)


@dataclass(frozen=True)
class DecodedImage:
    """An image ready for a processor: pixels [height, width, 3], uint8 (0-255) or
    float32 (0-1)."""

    pixels: np.ndarray

    @property
    def height(self) -> int:
        """Rows of pixels, as sent (after EXIF orientation)."""
        return int(self.pixels.shape[0])

    @property
    def width(self) -> int:
        """Columns of pixels, as sent."""
        return int(self.pixels.shape[1])

    @property
    def is_float(self) -> bool:
        """Whether the pixels are float32 in [0, 1] (else uint8 0-255)."""
        return self.pixels.dtype == np.float32


def decode_image(spec: ImageSpec, field: str, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> DecodedImage:
    """The image of an ImageSpec as RGB pixels; InvalidInput naming `field` (and what is
    accepted) for anything undecodable, too large or of the wrong shape."""
    if spec.encoded is not None:
        return DecodedImage(_decode_file(spec.encoded, f"{field}.encoded", max_pixels))
    return DecodedImage(_raw_pixels(spec, f"{field}.pixels", max_pixels))


def _decode_file(data: bytes, field: str, max_pixels: int) -> np.ndarray:
    accepted = "send a PNG, JPEG or WebP file"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=FORMATS)
    except UnidentifiedImageError:
        raise InvalidInput(field, f"not a PNG, JPEG or WebP image; {accepted}") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise InvalidInput(field, f"the image declares too many pixels; at most {max_pixels} are accepted") from None
    except Exception as error:  # noqa: BLE001 - any unreadable header is the caller's file
        raise InvalidInput(field, f"cannot be read as an image ({_reason(error)}); {accepted}") from None
    width, height = image.size
    require(width > 0 and height > 0, field, "the image has no pixels")
    require(width * height <= max_pixels, field,
            f"the image is {width}x{height} = {width * height} pixels; at most {max_pixels} are accepted")
    try:
        image.load()
        image = ImageOps.exif_transpose(image)
        return np.asarray(_to_rgb(image), dtype=np.uint8)
    except Exception as error:  # noqa: BLE001 - truncated or corrupt data
        raise InvalidInput(field, f"the {image.format} data cannot be decoded ({_reason(error)}); {accepted}") from None


def _to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB: 16-bit and 32-bit grey scaled to 0-255, alpha composited onto white."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        values = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode != "I" or values.max() > 255 else 255.0
        image = Image.fromarray(np.clip(np.rint(values * (255.0 / top)), 0, 255).astype(np.uint8), mode="L")
    elif image.mode == "F":
        values = np.asarray(image, dtype=np.float64)
        image = Image.fromarray(np.clip(np.rint(values * 255.0), 0, 255).astype(np.uint8), mode="L")
    if image.mode == "RGB":
        return image
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def _raw_pixels(spec: ImageSpec, field: str, max_pixels: int) -> np.ndarray:
    channels, height, width = spec.pixel_shape
    require(channels in _CHANNELS, f"{field}.shape",
            f"{channels} channels; pixels are [channels, height, width] with 1 (grey) or 3 (RGB) channels")
    require(height * width <= max_pixels, f"{field}.shape",
            f"the image is {width}x{height} = {height * width} pixels; at most {max_pixels} are accepted")
    dtype = np.uint8 if spec.pixel_dtype == "uint8" else np.dtype("<f4")
    pixels = np.frombuffer(spec.pixel_data, dtype=dtype).reshape(spec.pixel_shape)
    if spec.pixel_dtype == "float32":
        finite = np.isfinite(pixels).all()
        require(bool(finite) and float(pixels.min()) >= 0.0 and float(pixels.max()) <= 1.0, f"{field}.data",
                "float32 pixels must be finite and in [0, 1] (send uint8 for 0-255)")
        pixels = pixels.astype(np.float32)
    layout = np.ascontiguousarray(np.moveaxis(pixels, 0, -1))  # [height, width, channels]
    return np.repeat(layout, 3, axis=-1) if channels == 1 else layout


def _reason(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return (text[0][:200] if text else type(error).__name__) or type(error).__name__
