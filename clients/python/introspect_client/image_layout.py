"""`ImageLayout`: how an image input became the model's tokens (from the stream header),
and the mapping between per-token values and the patch grid."""

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


def layout_of(item: pb.TokenizedInput) -> ImageLayout | None:
    """The image layout of a header's input; None for text inputs."""
    return ImageLayout.of(item.image) if item.HasField("image") else None
