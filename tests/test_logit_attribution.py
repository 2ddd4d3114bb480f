"""Direct logit attribution (StreamPatching, DIRECT_LOGIT_ATTRIBUTION) through a real
server, against a decomposition written here with TransformerLens-style formulas on the
plain transformers model (eager): each head's output through its slice of W_O, each MLP's
output, the embeddings and the output projections' biases, read through the final norm
frozen at its scale on the clean run and the unembedding direction W_U[token] -
W_U[contrast]; every component within 1e-4, and their sum equal to the model's logit
difference at every position within 1e-4."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import grpc
import numpy as np
import pytest
import torch
from introspect.errors import InvalidInput
from introspect.methods.frozen_norm import freeze
from introspect.methods.logit_attribution import _served_parts
from introspect_contract import pb
from patching_helpers import IDS, array, logit_difference, pair, payloads, qwen2, refusal, served, stream_patching
from torch import nn

__all__ = ["qwen2"]  # the fixture, imported for this module

TOLERANCE = 1e-4
TOKEN, CONTRAST = 2003, 1996


def _modules(model: Any) -> tuple[list[Any], nn.Module, str]:
    """(per block (output projection, MLP), final norm, "layer" or "rms")."""
    if hasattr(model, "transformer"):  # GPT-2: Conv1D c_proj, LayerNorm ln_f
        return [(block.attn.c_proj, block.mlp) for block in model.transformer.h], model.transformer.ln_f, "layer"
    return [(layer.self_attn.o_proj, layer.mlp) for layer in model.model.layers], model.model.norm, "rms"


def _w_o(projection: nn.Module, head: int, head_dim: int) -> torch.Tensor:
    """W_O of one head [head_dim, d_model]: Conv1D stores [in, out], Linear [out, in]."""
    rows = slice(head * head_dim, (head + 1) * head_dim)
    return projection.weight[rows] if type(projection).__name__ == "Conv1D" else projection.weight[:, rows].T


def manual_attribution(model: Any) -> dict[str, np.ndarray]:
    """The decomposition of the logit difference at every position of IDS."""
    blocks, norm, kind = _modules(model)
    z: dict[int, torch.Tensor] = {}
    mlp_out: dict[int, torch.Tensor] = {}
    final: list[torch.Tensor] = []
    handles = [norm.register_forward_pre_hook(lambda _, args: final.append(args[0][0]))]
    for layer, (projection, mlp) in enumerate(blocks):
        handles.append(projection.register_forward_pre_hook(
            lambda _, args, layer=layer: z.__setitem__(layer, args[0][0])))  # [positions, heads * head_dim]
        handles.append(mlp.register_forward_hook(
            lambda _, args, out, layer=layer: mlp_out.__setitem__(layer, out[0])))  # [positions, d_model]
    with torch.no_grad():
        output = model(torch.tensor([IDS]), output_hidden_states=True, use_cache=False)
    for handle in handles:
        handle.remove()
    residual = final[0]  # [positions, d_model], before the final norm
    if kind == "layer":
        centred = lambda x: x - x.mean(dim=-1, keepdim=True)  # noqa: E731
        scale = torch.sqrt(residual.var(dim=-1, unbiased=False, keepdim=True) + norm.eps)
        shift = norm.bias
    else:
        centred = lambda x: x  # noqa: E731
        scale = torch.sqrt(residual.pow(2).mean(dim=-1, keepdim=True) + norm.variance_epsilon)
        shift = torch.zeros_like(norm.weight)
    direction = model.lm_head.weight[TOKEN] - model.lm_head.weight[CONTRAST]
    read = lambda x: (centred(x) / scale * norm.weight * direction).sum(dim=-1)  # noqa: E731
    heads, head_dim = model.config.num_attention_heads, residual.shape[-1] // model.config.num_attention_heads
    head_dim = getattr(model.config, "head_dim", None) or head_dim
    with torch.no_grad():
        per_head = [[read(z[layer][:, h * head_dim:(h + 1) * head_dim] @ _w_o(projection, h, head_dim))
                     for h in range(heads)] for layer, (projection, _) in enumerate(blocks)]
        biases = [read((projection.bias if projection.bias is not None else torch.zeros_like(direction))[None])
                  .expand(len(IDS)) for projection, _ in blocks]
        logits = output.logits[0]
        return {
            "heads": torch.stack([torch.stack(row) for row in per_head]).numpy(),
            "mlps": torch.stack([read(mlp_out[layer]) for layer in range(len(blocks))]).numpy(),
            "attention_biases": torch.stack(biases).numpy(),
            "embeddings": read(output.hidden_states[0][0]).numpy(),
            "bias": (shift * direction).sum().expand(len(IDS)).numpy(),
            "logit_difference": (logits[:, TOKEN] - logits[:, CONTRAST]).numpy(),
        }


def attribution_request(name: str, **fields: Any) -> pb.StreamPatchingRequest:
    """A DLA request on IDS with a logit difference target (fields override)."""
    request = pb.StreamPatchingRequest(model=name, pairs=[pair(IDS)],
                                       method=pb.PATCHING_METHOD_DIRECT_LOGIT_ATTRIBUTION,
                                       target=logit_difference(TOKEN, CONTRAST))
    for field, value in fields.items():
        if isinstance(value, list):
            getattr(request, field).extend(value)
        elif value is None:
            request.ClearField(field)
        elif isinstance(value, pb.Target):
            request.target.CopyFrom(value)
        else:
            setattr(request, field, value)
    return request


@pytest.mark.parametrize("name", ["gpt2", "llama", "qwen2"])
def test_contributions_equal_the_manual_decomposition_and_sum_to_the_logit_difference(
    address: str, model_dirs: dict[str, Path], qwen2: tuple[str, Path], name: str
) -> None:
    server, eager = served(name, address, model_dirs, qwen2)
    (result,) = payloads(stream_patching(server, attribution_request(name)), "logit_attribution")
    expected = manual_attribution(eager)
    got = {field: array(getattr(result, field)) for field in expected}
    for field, values in expected.items():
        assert got[field].shape == values.shape, field
        np.testing.assert_allclose(got[field], values, atol=TOLERANCE, rtol=0, err_msg=field)
    total = got["heads"].sum(axis=(0, 1)) + got["mlps"].sum(axis=0) + got["attention_biases"].sum(axis=0) \
        + got["embeddings"] + got["bias"]
    np.testing.assert_allclose(total, got["logit_difference"], atol=TOLERANCE, rtol=0)
    assert np.abs(got["heads"]).max() > 1e-2  # not all zeros: the comparison can fail


def test_two_pairs_give_their_mean(address: str) -> None:
    request = attribution_request("gpt2")
    request.pairs.append(pair(IDS[::-1]))
    results = payloads(stream_patching(address, request), "logit_attribution")
    assert [result.pair_index for result in results] == [0, 1, -1]
    np.testing.assert_allclose(array(results[2].heads), (array(results[0].heads) + array(results[1].heads)) / 2,
                               atol=1e-6, rtol=0)


@pytest.mark.parametrize(
    ("name", "fields", "field"),
    [
        ("gpt2", {"target": None}, "target"),
        ("gpt2", {"target": pb.Target(next_token=pb.NextTokenTarget(token_id=TOKEN))}, "target"),
        ("gpt2", {"metric": pb.PATCHING_METRIC_KL_DIVERGENCE}, "metric"),
        ("gpt2", {"layers": [0]}, "layers"),
        ("gpt2", {"positions": [-1]}, "positions"),
        ("minilm", {}, "target"),  # an encoder cannot serve a logit difference (the shared target check)
    ],
)
def test_bad_requests_are_refused_naming_the_field(address: str, name: str, fields: dict[str, Any],
                                                   field: str) -> None:
    code, violation, _ = refusal(address, attribution_request(name, **fields))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and violation == field


def test_a_model_without_unembedding_or_with_softcapping_is_refused_naming_the_model() -> None:
    modules = SimpleNamespace(projections=(nn.Linear(2, 2),), mlps=(nn.Linear(2, 2),))
    without = SimpleNamespace(name="m", unembedding=None, hooks=SimpleNamespace(modules=modules))
    with pytest.raises(InvalidInput) as raised:
        _served_parts(without)  # type: ignore[arg-type]
    assert raised.value.field == "model" and "unembedding" in str(raised.value)
    capped = SimpleNamespace(name="m", hooks=SimpleNamespace(modules=modules),
                             unembedding=SimpleNamespace(softcap=30.0, head=nn.Linear(2, 5)))
    with pytest.raises(InvalidInput) as raised:
        _served_parts(capped)  # type: ignore[arg-type]
    assert raised.value.field == "model" and "softcap" in str(raised.value)


class OffsetRMSNorm(nn.Module):
    """Gemma's RMSNorm: x / rms * (1 + weight), which the freeze must not take for x / rms * weight."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(width))
        self.eps = 1e-6

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * (1 + self.weight)


def test_the_frozen_norm_reproduces_layer_and_rms_norms_and_refuses_others() -> None:
    torch.manual_seed(0)
    residual = torch.randn(5, 8) * 3 + 1
    layer_norm = nn.LayerNorm(8)
    nn.init.normal_(layer_norm.weight)
    nn.init.normal_(layer_norm.bias)
    for norm in (layer_norm, nn.RMSNorm(8, eps=1e-6)):
        frozen = freeze(norm, residual, 1e-5)
        with torch.no_grad():
            np.testing.assert_allclose(frozen(residual).numpy(), norm(residual).numpy(), atol=1e-5, rtol=0)
        direction = torch.randn(8)
        np.testing.assert_allclose(((frozen(residual) - frozen.shift) * direction).sum(-1).numpy(),
                                   (residual * frozen.readout(direction)).sum(-1).numpy(), atol=1e-4, rtol=0)
    with pytest.raises(InvalidInput) as raised:
        freeze(OffsetRMSNorm(8), residual, 1e-5)
    assert raised.value.field == "model" and "OffsetRMSNorm" in str(raised.value)
    with pytest.raises(InvalidInput) as raised:
        freeze(nn.Tanh(), residual, 1e-5)
    assert "Tanh" in str(raised.value)
