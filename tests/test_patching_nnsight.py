"""Activation patching of the residual stream (resid_pre, the block input) per (layer,
position) against nnsight: the same local model directory wrapped by nnsight's NNsight
around the plain transformers model, the clean run's block input written into the
corrupted run one (layer, position) at a time (denoising), the logit difference read
from the patched logits. The server's StreamPatching values must agree within 1e-4.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

nnsight = pytest.importorskip("nnsight")

import torch  # noqa: E402
from introspect_client import Client, targets  # noqa: E402

CLEAN = [101, 1996, 4937, 2938, 2006, 1996]
CORRUPTED = [101, 1996, 3899, 2938, 2006, 1996]
TOKEN, CONTRAST = 2003, 2001
TOLERANCE = 1e-4


def _blocks(wrapped: object, name: str) -> object:
    """The wrapped model's list of transformer blocks."""
    return wrapped.transformer.h if name == "gpt2" else wrapped.model.layers  # type: ignore[attr-defined]


def nnsight_resid_pre_patching(path: Path, name: str) -> tuple[np.ndarray, float, float]:
    """([layers, positions] patched logit differences, clean score, corrupted score)."""
    from transformers import AutoModelForCausalLM

    wrapped = nnsight.NNsight(AutoModelForCausalLM.from_pretrained(path).eval())
    clean, corrupted = torch.tensor([CLEAN]), torch.tensor([CORRUPTED])
    layers = len(_blocks(wrapped, name))  # type: ignore[arg-type]

    def difference(logits: torch.Tensor) -> float:
        return float(logits[0, -1, TOKEN] - logits[0, -1, CONTRAST])

    with torch.no_grad():
        saved: list[torch.Tensor] = []  # filled inside the trace (nnsight runs its body in its own scope)
        with wrapped.trace(clean):
            for layer in range(layers):
                saved.append(_blocks(wrapped, name)[layer].input.save())  # type: ignore[index]
            clean_logits = wrapped.output.logits.save()
        with wrapped.trace(corrupted):
            corrupted_logits = wrapped.output.logits.save()
        values = np.zeros((layers, len(CLEAN)), np.float32)
        for layer in range(layers):
            for position in range(len(CLEAN)):
                with wrapped.trace(corrupted):
                    _blocks(wrapped, name)[layer].input[:, position] = saved[layer][:, position]  # type: ignore[index]
                    patched = wrapped.output.logits.save()
                values[layer, position] = difference(patched)
    return values, difference(clean_logits), difference(corrupted_logits)


@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_resid_pre_activation_patching_equals_nnsight(client: Client, model_dirs: dict[str, Path], name: str) -> None:
    expected, clean_score, corrupted_score = nnsight_resid_pre_patching(model_dirs[name], name)
    result = client.patch(CLEAN, CORRUPTED, model=name, points=["resid_pre"],
                          target=targets.logit_difference(TOKEN, CONTRAST), cache="bypass")
    pair = result[0]
    assert pair.baseline is not None
    np.testing.assert_allclose([pair.baseline.clean_score, pair.baseline.corrupted_score],
                               [clean_score, corrupted_score], atol=TOLERANCE)
    patched = pair.maps["activation", "resid_pre"]
    np.testing.assert_allclose(patched.values, expected, atol=TOLERANCE)
    assert not np.allclose(expected, corrupted_score, atol=TOLERANCE)  # some patch changes the metric
    normalized = (expected - corrupted_score) / (clean_score - corrupted_score)
    span = abs(clean_score - corrupted_score)  # the normalization magnifies errors by 1 / span
    np.testing.assert_allclose(patched.normalized, normalized, atol=2 * TOLERANCE / span)
