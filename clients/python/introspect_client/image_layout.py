"""`ImageLayout`: how an image input became the model's tokens (from the stream header),
the mapping between per-token values and the patch grid, and the bilinear resize that
takes a grid to the processed image's pixels."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from introspect_contract import pb


@dataclass(frozen=True)
class ImageLayout:
    """How an image became tokens: the special tokens, then one token per patch in
    row-major order (patch (r, c) is token first_patch + r * grid_columns + c).

    Attributes:
        height, width: pixels of the processed image the model saw.
        patch_height, patch_width: pixels of one patch.
        grid_rows, grid_columns: the patch grid.
        special_tokens: names of the tokens before the patches ("[CLS]", "[DIST]",
            "[REG0]", ...); empty for models without any (SigLIP).
        first_patch: token index of patch (0, 0).
        original_height, original_width: pixels of the image as sent.
    """

    height: int
    width: int
    patch_height: int
    patch_width: int
    grid_rows: int
    grid_columns: int
    special_tokens: tuple[str, ...]
    first_patch: int
    original_height: int
    original_width: int

    @classmethod
    def of(cls, message: pb.ImageLayout) -> ImageLayout:
        """The layout an ImageLayout message describes."""
        return cls(
            height=message.height,
            width=message.width,
            patch_height=message.patch_height,
            patch_width=message.patch_width,
            grid_rows=message.grid_rows,
            grid_columns=message.grid_columns,
            special_tokens=tuple(message.special_tokens),
            first_patch=message.first_patch,
            original_height=message.original_height,
            original_width=message.original_width,
        )

    @property
    def patches(self) -> int:
        """Number of patch tokens (grid_rows * grid_columns)."""
        return self.grid_rows * self.grid_columns

    def patch_token(self, row: int, column: int) -> int:
        """Token index of patch (row, column)."""
        if not (0 <= row < self.grid_rows and 0 <= column < self.grid_columns):
            raise IndexError(f"patch ({row}, {column}) outside the {self.grid_rows}x{self.grid_columns} grid")
        return self.first_patch + row * self.grid_columns + column

    def grid_of(self, per_token: np.ndarray) -> np.ndarray:
        """The patch tokens' values of `per_token` [..., tokens] laid out as the grid:
        [..., grid_rows, grid_columns] (the special tokens' values are left out)."""
        values = np.asarray(per_token)
        patches = values[..., self.first_patch : self.first_patch + self.patches]
        if patches.shape[-1] != self.patches:
            raise ValueError(f"{values.shape[-1]} token values, the layout has {self.first_patch + self.patches}")
        return patches.reshape(*values.shape[:-1], self.grid_rows, self.grid_columns)

    def upsample(self, grid: np.ndarray) -> np.ndarray:
        """A map [rows, columns] resized bilinearly to the processed image: [height, width]."""
        return bilinear_resize(grid, self.height, self.width)


def _linear_taps(size_in: int, size_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(lower index, upper index, weight of the upper) of every output position along one
    axis, with half-pixel centres (source = (out + 0.5) * in / out - 0.5, clamped at 0)."""
    source = np.maximum((np.arange(size_out, dtype=np.float64) + 0.5) * (size_in / size_out) - 0.5, 0.0)
    lower = np.minimum(np.floor(source).astype(np.int64), size_in - 1)
    upper = np.minimum(lower + 1, size_in - 1)
    return lower, upper, source - lower


def bilinear_resize(grid: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resizes a 2-D map [rows, columns] to [height, width] (float32) by bilinear
    interpolation with half-pixel centres, as torch's interpolate(mode="bilinear",
    align_corners=False) and OpenCV's resize do (and the server's `upsample`)."""
    values = np.asarray(grid, dtype=np.float64)
    if values.ndim != 2 or not values.size or height <= 0 or width <= 0:
        raise ValueError(f"cannot resize a map of shape {values.shape} to {height}x{width}")
    low, high, weight = _linear_taps(values.shape[0], height)
    rows = values[low] * (1 - weight)[:, None] + values[high] * weight[:, None]  # [height, columns]
    low, high, weight = _linear_taps(values.shape[1], width)
    return (rows[:, low] * (1 - weight) + rows[:, high] * weight).astype(np.float32)  # [height, width]


def layout_of(item: pb.TokenizedInput) -> ImageLayout | None:
    """The image layout of a header's input; None for text inputs."""
    return ImageLayout.of(item.image) if item.HasField("image") else None
