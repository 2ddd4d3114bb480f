"""Shared prefixes (service/introspect/prefix.py) and the last-position final MLP
(HookSet.last_position_only), the two load-time-verified shortcuts of activation
patching on causal models, against plain transformers forwards (eager attention) of the
whole input. Patching values with them are checked against the naive loop in
test_patching_activation.py; here each shortcut is checked on its own, and so are the
load-time decisions, including a refusal that matters (OPT's MLP sees the tokens
flattened, so cutting it to the last position would be wrong).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from architectures import CASES_BY_TYPE, build_tiny_model, minilm_tokenizer
from conftest import patching_layers

TOKENS = [101, 2023, 3185, 2003, 1037, 2204, 2154, 1996, 4937, 2003, 2919, 102]  # 12 > mistral's window of 4


@pytest.fixture(scope="module")
def loaded(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Any, Any]]:
    """name -> (introspect's LoadedModel, the same weights in transformers with eager attention)."""
    from introspect.config import ModelSpec
    from introspect.models import load_model
    from transformers import AutoModelForCausalLM

    root = tmp_path_factory.mktemp("prefix-models")
    models = {}
    for name in ("gpt2", "llama", "mistral", "opt"):
        path = build_tiny_model(CASES_BY_TYPE[name], root, minilm_tokenizer())
        served = load_model(ModelSpec(name, path), torch.device("cpu"), "float32")
        models[name] = (served, AutoModelForCausalLM.from_pretrained(path, attn_implementation="eager").eval())
    return models


def arguments(tokens: list[int]) -> dict[str, torch.Tensor]:
    return {"input_ids": torch.tensor([tokens]), "attention_mask": torch.ones(1, len(tokens), dtype=torch.long)}


def eager_logits(reference: Any, tokens: list[int]) -> np.ndarray:
    with torch.no_grad():
        return reference(**arguments(tokens)).logits[0].numpy()


def test_load_time_decisions(loaded: dict[str, tuple[Any, Any]]) -> None:
    decisions = {name: (model.hooks.prefix_reuse, model.hooks.last_position_mlp) for name, (model, _) in loaded.items()}
    assert decisions == {"gpt2": (True, True), "llama": (True, True), "mistral": (True, True), "opt": (True, False)}


@pytest.mark.parametrize("name", ["gpt2", "llama", "mistral"])
@pytest.mark.parametrize(("start", "end"), [(1, 12), (5, 12), (9, 12), (5, 10)])
def test_a_suffix_with_the_recorded_prefix_equals_the_whole_input(loaded: dict[str, tuple[Any, Any]], name: str,
                                                                   start: int, end: int) -> None:
    """Positions start..end-1 run on the keys and values recorded from all 12 tokens."""
    from introspect import hooks
    from introspect.prefix import PrefixKeys, suffix_arguments

    model, reference = loaded[name]
    recorded = PrefixKeys.recording()
    with model.hooks.active(hooks.HookSet(prefix=recorded)), torch.inference_mode():
        model.outputs(arguments(TOKENS))
    suffix = suffix_arguments(arguments(TOKENS[:end]), start)
    with model.hooks.active(hooks.HookSet(prefix=recorded.from_position(start))), torch.inference_mode():
        logits = model.outputs(suffix)[0].numpy()  # [end - start, vocab]
    assert logits.shape[0] == end - start
    np.testing.assert_allclose(logits, eager_logits(reference, TOKENS)[start:end], rtol=0, atol=1e-4)


@pytest.mark.parametrize("name", ["gpt2", "llama", "mistral", "opt"])
def test_the_final_mlp_on_the_last_position_keeps_the_last_logits_where_verified(
        loaded: dict[str, tuple[Any, Any]], name: str) -> None:
    from introspect import hooks

    model, reference = loaded[name]
    verified = model.hooks.last_position_mlp
    model.hooks.last_position_mlp = True  # forced on, to show what the load-time check decided on
    expected = eager_logits(reference, TOKENS)[-1]
    try:
        with model.hooks.active(hooks.HookSet(last_position_only=True)), torch.inference_mode():
            cut = model.outputs(arguments(TOKENS), last_positions=1)[0, -1].numpy()
        difference = float(np.abs(cut - expected).max())
    except RuntimeError:  # OPT: its MLP gets [batch * tokens, hidden], so the cut breaks the shapes
        difference = float("inf")
    finally:
        model.hooks.last_position_mlp = verified
    if verified:
        assert difference < 1e-4
    else:  # the check refused it because the cut breaks the forward or changes the logits
        assert difference > 1e-3


def test_patching_values_are_the_same_with_and_without_the_shortcuts(loaded: dict[str, tuple[Any, Any]]) -> None:
    """Activation patching on mistral (sliding window) with both shortcuts, and with every
    row running the whole input and the whole final MLP."""
    from introspect.requests import InputPairSpec, InputSpec, PatchingQuery, TargetSpec

    model, _ = loaded["mistral"]
    corrupted = list(TOKENS)
    corrupted[3], corrupted[8] = 1996, 3185
    query = PatchingQuery(model="mistral", pairs=(InputPairSpec(InputSpec(token_ids=tuple(TOKENS)),
                                                                InputSpec(token_ids=tuple(corrupted))),),
                          target=TargetSpec("next_token", token_id=2154),
                          points=("resid_pre", "resid_post", "attn_out", "mlp_out", "head", "head_position"))

    results = {}
    for shortcuts in (True, False):
        model.hooks.prefix_reuse = model.hooks.last_position_mlp = shortcuts
        results[shortcuts] = patching_layers(model, query)
    model.hooks.prefix_reuse = model.hooks.last_position_mlp = True
    for fast, slow in zip(results[True], results[False], strict=True):
        assert (fast.point, fast.layer) == (slow.point, slow.layer)
        np.testing.assert_allclose(fast.values.values, slow.values.values, rtol=0, atol=1e-5,
                                   err_msg=f"{fast.point} layer {fast.layer}")
    assert len({float(v) for layer in results[True] for v in layer.values.values.ravel()}) > 10  # not all baseline
