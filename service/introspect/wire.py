"""torch tensors -> numpy arrays in wire storage, converted on the tensor's device."""

from __future__ import annotations

import numpy as np
import torch

from .results import WireArray

_TORCH_WIRE = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "int32": torch.int32}


def to_wire(tensor: torch.Tensor, dtype: str) -> WireArray:
    """Rounds `tensor` to wire dtype `dtype` and copies it to host memory."""
    converted = tensor.detach().to(_TORCH_WIRE[dtype]).contiguous()
    if dtype == "bfloat16":
        return WireArray(converted.view(torch.int16).cpu().numpy().view(np.uint16), dtype)
    return WireArray(converted.cpu().numpy(), dtype)
