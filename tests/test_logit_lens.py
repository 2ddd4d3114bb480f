"""StreamLogitLens through the session server and the real client, against a direct
computation with plain transformers: `output_hidden_states=True`, then the final norm on
every intermediate layer and the LM head (the last hidden state is already normed, so it
goes through the LM head alone)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import reference_model
from introspect_client import Client, IntrospectError

TOLERANCE = 1e-5
IDS = [101, 1996, 3007, 1997, 2605, 2003, 3000, 1012, 102]
FINAL_NORM = {"gpt2": lambda model: model.transformer.ln_f, "llama": lambda model: model.model.norm}


def direct_lens(model_dirs: dict[str, Path], name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(probabilities [layers, positions, vocab] of every layer's lens, the model's own
    final prediction [positions])."""
    model = reference_model(model_dirs, name)
    with torch.no_grad():
        output = model(torch.tensor([IDS]), output_hidden_states=True, use_cache=False)
        hidden = output.hidden_states  # embeddings, then one per block; the last one normed
        layers = len(hidden) - 1
        logits = [
            model.lm_head(hidden[layer + 1][0] if layer == layers - 1 else FINAL_NORM[name](model)(hidden[layer + 1][0]))
            for layer in range(layers)
        ]
    return torch.softmax(torch.stack(logits).float(), dim=-1), output.logits[0].argmax(dim=-1)


@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_every_layer_and_position_equals_the_direct_computation(
    client: Client, model_dirs: dict[str, Path], name: str
) -> None:
    probabilities, prediction = direct_lens(model_dirs, name)
    lens = client.logit_lens(IDS, model=name, top_k=4)
    assert lens.layers == list(range(probabilities.shape[0])) and lens.positions == list(range(len(IDS)))
    expected_top = torch.topk(probabilities, 4, dim=-1)
    np.testing.assert_array_equal(lens.top_token_ids, expected_top.indices.numpy())
    np.testing.assert_allclose(lens.top_probabilities, expected_top.values.numpy(), atol=TOLERANCE, rtol=0)
    assert lens.chosen_token_ids == prediction.tolist()
    chosen = probabilities.gather(2, prediction[None, :, None].expand(probabilities.shape[0], -1, 1))[..., 0]
    np.testing.assert_allclose(lens.chosen_probabilities, chosen.numpy(), atol=TOLERANCE, rtol=0)
    # the last layer is the model's own output: its top token is the model's prediction
    np.testing.assert_array_equal(lens.top_token_ids[-1, :, 0], prediction.numpy())
    assert lens.top_tokens[0][0][0] and len(lens.top_tokens[0][0]) == 4


def test_chosen_layers_positions_and_token(client: Client, model_dirs: dict[str, Path]) -> None:
    probabilities, _ = direct_lens(model_dirs, "llama")
    lens = client.logit_lens(IDS, model="llama", layers=[1, 0], positions=[-1, 2], top_k=2, token_id=2003)
    assert lens.layers == [0, 1] and lens.positions == [2, len(IDS) - 1]
    assert lens.chosen_token_ids == [2003, 2003]
    np.testing.assert_allclose(lens.chosen_probabilities, probabilities[:2][:, [2, len(IDS) - 1], 2003].numpy(),
                               atol=TOLERANCE, rtol=0)


@pytest.mark.parametrize(
    ("model", "options", "field", "fragment"),
    [
        ("minilm", {}, "model", "has no LM head"),
        ("classifier", {}, "model", "has no LM head"),
        ("gpt2", {"layers": [3]}, "layers", "out of range"),
        ("gpt2", {"positions": [len(IDS)]}, "positions", "outside the input"),
        ("gpt2", {"top_k": -1}, "top_k", "must be in"),
        ("gpt2", {"token_id": 10**9}, "token_id", "outside the vocabulary"),
    ],
)
def test_invalid_requests_name_the_field(
    client: Client, model: str, options: dict[str, object], field: str, fragment: str
) -> None:
    with pytest.raises(IntrospectError) as raised:
        client.logit_lens(IDS, model=model, **options)  # type: ignore[arg-type]
    assert raised.value.code.name == "INVALID_ARGUMENT"
    assert [violation for violation, _ in raised.value.field_violations] == [field]
    assert fragment in raised.value.message


def test_cli_lens_json_equals_the_client_and_the_table_names_the_top_tokens(client: Client, address: str,
                                                                            capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from introspect_client.cli import main

    expected = client.logit_lens("The capital of France is", model="gpt2", top_k=2, positions=[-1])
    assert main(["lens", "--server", address, "--model", "gpt2", "--text", "The capital of France is",
                 "--top-k", "2", "--at", "-1", "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["top_token_ids"] == expected.top_token_ids.tolist()
    np.testing.assert_allclose(document["chosen_probabilities"], expected.chosen_probabilities, rtol=0, atol=0)
    assert main(["lens", "--server", address, "--model", "gpt2", "--text", "The capital of France is", "--at", "-1"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[1].split()[0] == "layer" and len(table) == 2 + len(expected.layers)
    assert table[-1].split()[1] == expected.top_tokens[-1][0][0]
