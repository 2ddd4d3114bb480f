"""Image inputs: an image as sent -> the model's own image processor -> pixel values and
the layout of its tokens (special tokens, then the patch grid in row-major order).

The model wrapper (models.py) owns one processor per modality it takes; this is the image
one. Its layout (patch size, special token names) is found at load (`image_layout`) from
the model's embeddings and checked against the sequence length a forward produces.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .errors import InvalidInput
from .images import DEFAULT_MAX_IMAGE_PIXELS, decode_image
from .requests import InputSpec
from .results import EncodedInput, ImageLayout

if TYPE_CHECKING:
    from .models import ModelDescription


@dataclass(frozen=True)
class TokenLayout:
    """What a model makes of any processed image: patch size and the special tokens
    before the patches."""

    patch_height: int
    patch_width: int
    special_tokens: tuple[str, ...]

    def layout(self, height: int, width: int, original_height: int, original_width: int) -> ImageLayout:
        """The layout of one processed image of height x width pixels."""
        return ImageLayout(
            height=height,
            width=width,
            patch_height=self.patch_height,
            patch_width=self.patch_width,
            grid_rows=height // self.patch_height,
            grid_columns=width // self.patch_width,
            special_tokens=self.special_tokens,
            original_height=original_height,
            original_width=original_width,
        )


def special_token_names(embeddings: torch.nn.Module | None) -> tuple[str, ...]:
    """Names of the tokens a vision transformer's embeddings put before the patches, from
    the parameters that make them: a class token (`cls_token`, CLIP's `class_embedding`),
    DeiT's `distillation_token`, DINOv2's `register_tokens`."""
    if embeddings is None:
        return ()
    names: list[str] = []
    if getattr(embeddings, "cls_token", None) is not None or getattr(embeddings, "class_embedding", None) is not None:
        names.append("[CLS]")
    if getattr(embeddings, "distillation_token", None) is not None:
        names.append("[DIST]")
    registers = getattr(embeddings, "register_tokens", None)
    if isinstance(registers, torch.Tensor):
        names.extend(f"[REG{index}]" for index in range(registers.shape[1]))
    return tuple(names)


def patch_size(config: Any) -> tuple[int, int]:
    """(height, width) of a patch from a vision config's `patch_size` (int or pair)."""
    size = getattr(config, "patch_size", None)
    if isinstance(size, int) and size > 0:
        return size, size
    if isinstance(size, (tuple, list)) and len(size) == 2:
        return int(size[0]), int(size[1])
    raise ValueError("the config has no patch_size: not a patch-based vision transformer")


class ImageProcessor:
    """A model's image processor (transformers' AutoImageProcessor, loaded without remote
    code), safe to use from several threads, with the token layout of its model."""

    modality = "image"

    def __init__(self, processor: Any, tokens: TokenLayout, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> None:
        self.processor = processor
        self.tokens = tokens
        self.max_pixels = max_pixels
        self._lock = threading.Lock()

    @property
    def mean_and_std(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-channel normalisation of the processor ([3] each): processed = (raw - mean) / std
        with raw in [0, 1]; zeros and ones when it does not normalise."""
        if not getattr(self.processor, "do_normalize", True):
            return np.zeros(3, np.float32), np.ones(3, np.float32)
        mean = np.broadcast_to(np.asarray(self.processor.image_mean, np.float32), (3,))
        std = np.broadcast_to(np.asarray(self.processor.image_std, np.float32), (3,))
        return mean.copy(), std.copy()

    def pixel_values(self, pixels: np.ndarray) -> np.ndarray:
        """The processor's output [3, height, width] float32 for pixels [height, width, 3]
        (uint8 0-255, or float32 0-1: then the processor does not rescale them)."""
        extra = {"do_rescale": False} if pixels.dtype == np.float32 else {}
        with self._lock:
            processed = self.processor(images=pixels, return_tensors="pt", **extra)["pixel_values"]
        return np.ascontiguousarray(processed[0].to(torch.float32).numpy())

    def encode(self, spec: InputSpec, truncate: bool, field: str, description: ModelDescription) -> EncodedInput:
        """Decodes and processes one image (`truncate` does not apply: every image becomes
        the same number of tokens)."""
        if spec.image is None:
            raise InvalidInput(field, f"model {description.name!r} takes images, not text or token ids")
        decoded = decode_image(spec.image, f"{field}.image", self.max_pixels)
        values = self.pixel_values(decoded.pixels)
        _, height, width = values.shape
        layout = self.tokens.layout(height, width, decoded.height, decoded.width)
        names = layout.special_tokens + tuple(
            f"patch {row},{column}" for row in range(layout.grid_rows) for column in range(layout.grid_columns)
        )
        return EncodedInput(
            token_ids=(),
            tokens=names,
            token_type_ids=None,
            truncated=False,
            original_length=len(names),
            image=layout,
            pixel_values=values,
        )
