"""Images -> `ImageInput` messages, and the pixel layouts the client accepts.

One image is a `pathlib.Path` (the file's bytes are sent as they are), `bytes` (an encoded
PNG, JPEG or WebP file, sent untouched), a `PIL.Image.Image` (encoded losslessly as PNG;
Pillow is imported only when one is given) or a numpy array of pixels:

- [height, width] or [height, width, 3] (numpy/PIL's layout), uint8 0-255 or float 0-1:
  transposed to [channels, height, width] for the wire;
- [1, height, width] or [3, height, width] (torch's layout), uint8 0-255 or float 0-1:
  sent as they are.

A [3, height, 3] array is read as channels-last when uint8 (PIL's layout) and as
channels-first when float (torch's). Float pixels travel as float32.
"""

from __future__ import annotations

import io
import os
import pathlib
import sys
from typing import TYPE_CHECKING, Any, TypeAlias

import numpy as np

from introspect_contract import pb
from introspect_contract.tensors import encode_tensor

if TYPE_CHECKING:
    from PIL.Image import Image as PILImage

ImageLike: TypeAlias = "pathlib.Path | bytes | np.ndarray | PILImage"
"""One image: a Path, encoded bytes, a PIL.Image.Image or a numpy pixel array."""

_CHANNELS = (1, 3)
# PIL modes that PNG stores without loss; others are converted to RGB first.
_PNG_MODES = frozenset({"1", "L", "LA", "P", "RGB", "RGBA", "I", "I;16"})


def is_pil_image(value: object) -> bool:
    """True for a PIL.Image.Image (without importing Pillow when nothing has)."""
    module = sys.modules.get("PIL.Image")
    return module is not None and isinstance(value, module.Image)


def is_pixel_array(value: object) -> bool:
    """True for a numpy array that is an image rather than token ids: 2-D or 3-D, of
    uint8 or a floating dtype (1-D integer arrays are token ids, 2-D integer arrays of
    another dtype a batch of them)."""
    return (
        isinstance(value, np.ndarray)
        and value.ndim in (2, 3)
        and (value.dtype == np.uint8 or np.issubdtype(value.dtype, np.floating))
    )


def is_image(value: object) -> bool:
    """True when `value` is one image in a form `make_image_input` takes positionally
    (a Path, bytes, a PIL image or a pixel array; a str is text)."""
    return isinstance(value, (pathlib.PurePath, bytes, bytearray)) or is_pil_image(value) or is_pixel_array(value)


def pixels_chw(array: np.ndarray) -> np.ndarray:
    """Pixels in the wire layout [channels, height, width] (channels 1 or 3): uint8 kept,
    floats as float32 checked to lie in [0, 1]. ValueError for other shapes or ranges."""
    values = np.asarray(array)
    floating = np.issubdtype(values.dtype, np.floating)
    if values.dtype != np.uint8 and not floating:
        raise TypeError(f"pixels must be uint8 (0-255) or float (0-1), got dtype {values.dtype}")
    if values.ndim == 2:  # [height, width]
        values = values[np.newaxis]
    elif values.ndim == 3:
        channels_last = values.shape[2] in _CHANNELS and not (floating and values.shape[0] in _CHANNELS)
        if channels_last:  # [height, width, channels] -> [channels, height, width]
            values = values.transpose(2, 0, 1)
        elif values.shape[0] not in _CHANNELS:
            raise ValueError(
                "pixels must be [height, width], [height, width, 1 or 3] or [1 or 3, height, width]; "
                f"got shape {values.shape} (drop an alpha channel first)"
            )
    else:
        raise ValueError(f"pixels must be 2-D or 3-D, got shape {values.shape}")
    if values.shape[1] == 0 or values.shape[2] == 0:
        raise ValueError(f"pixels of shape {array.shape} hold no pixels")
    if floating:
        values = values.astype(np.float32)
        if not np.isfinite(values).all() or values.min() < 0.0 or values.max() > 1.0:
            raise ValueError("float pixels must lie in [0, 1]")
    return np.ascontiguousarray(values)  # [channels, height, width]


def pil_png_bytes(image: Any) -> bytes:
    """A PIL image encoded losslessly as PNG (modes PNG cannot store become RGB)."""
    if image.mode not in _PNG_MODES:
        image = image.convert("RGB")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def encoded_bytes(value: object) -> bytes | None:
    """The encoded file behind a Path, bytes or PIL image; None for a pixel array.
    OSError when a file cannot be read."""
    if isinstance(value, (str, os.PathLike)):
        return pathlib.Path(value).read_bytes()
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if is_pil_image(value):
        return pil_png_bytes(value)
    return None


def make_image_input(value: ImageLike) -> pb.Input:
    """Converts one image to an Input: a path (Path or, here only, str) or encoded bytes
    travel as `ImageInput.encoded`, a PIL image as PNG bytes, a numpy array as
    `ImageInput.pixels` [channels, height, width] (uint8 or float32; see the module).

    Raises TypeError for anything else, ValueError for empty files or bad pixel arrays.
    """
    encoded = encoded_bytes(value)
    if encoded is not None:
        if not encoded:
            raise ValueError("the image is empty (0 bytes)")
        return pb.Input(image=pb.ImageInput(encoded=encoded))
    if isinstance(value, np.ndarray):
        pixels = pixels_chw(value)
        dtype = "uint8" if pixels.dtype == np.uint8 else "float32"
        return pb.Input(image=pb.ImageInput(pixels=encode_tensor(pixels, dtype)))
    raise TypeError(
        "an image is a pathlib.Path, encoded bytes (PNG/JPEG/WebP), a PIL.Image.Image or a numpy "
        f"array of pixels; got {type(value).__name__}"
    )
