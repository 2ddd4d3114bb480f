"""StreamHeadAblation through a real server and the real client, against plain
transformers models (eager attention) on the same weights, ablated by an independent
hook: a forward pre-hook on the attention output projection (BertSelfOutput.dense,
GPT2Attention.c_proj, LlamaAttention.o_proj) that edits one head's slice of its input,
one forward per variant.
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch
from conftest import reference_model, reference_tokenizer
from introspect_client import AsyncClient, Client, IntrospectError, targets
from introspect_contract import pb

# Server against reference: at most 1.4e-6 apart measured (deltas up to 0.43), so a 0.1%
# error in the deltas of any model fails.
TOLERANCE = 1e-5
# How far apart two results must be to count as different.
SEPARATION = 1e-4
# Head importance against central finite differences (O(eps^2) truncation error).
FINITE_DIFFERENCE_TOLERANCE = 1e-4
TEXT = "The quick brown fox jumps over the lazy dog because it"
REFERENCES = ["A completely different sentence about the weather.", "Short one.", "Heads attend to tokens."]

HeadEdit = Callable[[torch.Tensor], torch.Tensor]
"""Edits one layer's per-head outputs [batch, tokens, heads, head_dim]."""


@dataclass(frozen=True)
class Case:
    """A model, its kind and the target the tests measure on it."""

    name: str
    kind: str  # "encoder", "causal" or "classifier"
    target: pb.Target
    position: int = -1  # causal LM target position


CASES = {
    "minilm": Case("minilm", "encoder", targets.embedding_norm()),
    "gpt2": Case("gpt2", "causal", targets.next_token()),
    # a position before the end: the server cuts the input after it
    "llama": Case("llama", "causal", targets.next_token(position=-3), position=-3),
    "classifier": Case("classifier", "classifier", targets.class_score(class_index=1)),
}


def projection(model: torch.nn.Module, name: str, layer: int) -> torch.nn.Module:
    """The attention output projection of `layer`; its input is [batch, tokens, heads * head_dim]."""
    if name == "minilm":
        return model.encoder.layer[layer].attention.output.dense
    if name == "classifier":
        return model.bert.encoder.layer[layer].attention.output.dense
    if name == "gpt2":
        return model.transformer.h[layer].attn.c_proj
    return model.model.layers[layer].self_attn.o_proj


def num_heads(model: torch.nn.Module) -> int:
    return model.config.num_attention_heads


@contextmanager
def edited(model: torch.nn.Module, name: str, edits: dict[int, HeadEdit]) -> Iterator[None]:
    """Forward pre-hooks on the output projections of the layers in `edits`."""
    heads = num_heads(model)

    def hook_for(edit: HeadEdit) -> Callable[..., tuple[torch.Tensor, ...]]:
        def hook(module: torch.nn.Module, args: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
            inputs = args[0]
            batch, tokens, width = inputs.shape
            per_head = edit(inputs.reshape(batch, tokens, heads, width // heads))
            return (per_head.reshape(batch, tokens, width), *args[1:])

        return hook

    handles = [
        projection(model, name, layer).register_forward_pre_hook(hook_for(edit)) for layer, edit in edits.items()
    ]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def zeroed(heads: Sequence[int]) -> HeadEdit:
    def edit(values: torch.Tensor) -> torch.Tensor:
        values = values.clone()
        values[:, :, list(heads)] = 0
        return values

    return edit


def replaced(heads: Sequence[int], means: torch.Tensor) -> HeadEdit:
    """Replaces `heads` by their rows of means [heads, head_dim]."""

    def edit(values: torch.Tensor) -> torch.Tensor:
        values = values.clone()
        for head in heads:
            values[:, :, head] = means[head].to(values.dtype)
        return values

    return edit


def gated(head: int, gate: float) -> HeadEdit:
    def edit(values: torch.Tensor) -> torch.Tensor:
        values = values.clone()
        values[:, :, head] = values[:, :, head] * gate
        return values

    return edit


class Reference:
    """A case's reference model on one text: target score and output change under edits."""

    def __init__(self, model_dirs: dict[str, Path], case: Case, text: str = TEXT, model: torch.nn.Module | None = None):
        self.case = case
        self.model = model if model is not None else reference_model(model_dirs, case.name)
        self.tokenizer = reference_tokenizer(model_dirs, case.name)
        self.encoded = self.encode(text)
        self.length = self.encoded["input_ids"].shape[1]
        self.base = self.outputs({})
        self.token = int(self.base[case.position].argmax()) if case.kind == "causal" else None

    def encode(self, text: str) -> dict[str, torch.Tensor]:
        """Model inputs as the server builds them: token types only for models with them."""
        encoded = dict(self.tokenizer(text, return_tensors="pt"))
        if not getattr(self.model.config, "type_vocab_size", 0):
            encoded.pop("token_type_ids", None)
        return encoded

    def outputs(self, edits: dict[int, HeadEdit]) -> torch.Tensor:
        """Logits [tokens, vocab] (causal), pooled embedding [hidden] (encoder) or logits [classes]."""
        with torch.no_grad(), edited(self.model, self.case.name, edits):
            output = self.model(**self.encoded)
        if self.case.kind == "encoder":
            return output.last_hidden_state[0].mean(dim=0)
        return output.logits[0]

    def score(self, outputs: torch.Tensor) -> float:
        if self.case.kind == "causal":
            return float(torch.log_softmax(outputs[self.case.position], -1)[self.token])
        if self.case.kind == "encoder":
            return float(outputs.norm())
        return float(outputs[1])

    def change(self, outputs: torch.Tensor) -> float:
        if self.case.kind == "encoder":
            return float(1 - torch.nn.functional.cosine_similarity(outputs, self.base, dim=0))
        position = self.case.position if self.case.kind == "causal" else slice(None)
        base = torch.log_softmax(self.base[position], -1)
        changed = torch.log_softmax(outputs[position], -1)
        return float((base.exp() * (base - changed)).sum())

    def delta_and_change(self, edits: dict[int, HeadEdit]) -> tuple[float, float]:
        outputs = self.outputs(edits)
        return self.score(outputs) - self.score(self.base), self.change(outputs)

    def head_means(self, texts: Sequence[str]) -> dict[int, torch.Tensor]:
        """Per layer, every head's mean output [heads, head_dim] over all positions of
        `texts`, each run alone (no padding)."""
        heads = num_heads(self.model)
        layers = self.model.config.num_hidden_layers
        sums: dict[int, torch.Tensor] = {}
        count = 0
        for text in texts:
            captured: dict[int, torch.Tensor] = {}

            def capture(layer: int) -> HeadEdit:
                def edit(values: torch.Tensor) -> torch.Tensor:
                    captured[layer] = values[0].sum(dim=0)  # [heads, head_dim]
                    return values

                return edit

            encoded = self.encode(text)
            captures = {layer: capture(layer) for layer in range(layers)}
            with torch.no_grad(), edited(self.model, self.case.name, captures):
                self.model(**encoded)
            count += encoded["input_ids"].shape[1]
            for layer, total in captured.items():
                sums[layer] = sums.get(layer, 0) + total
        assert len(sums) == layers and all(value.shape[0] == heads for value in sums.values())
        return {layer: total / count for layer, total in sums.items()}


def assert_grid_close(actual: np.ndarray, expected: dict[tuple[int, int], float]) -> None:
    for (layer, head), value in expected.items():
        assert actual[layer, head] == pytest.approx(value, abs=TOLERANCE), (layer, head)


@pytest.mark.parametrize("name", ["minilm", "gpt2", "llama", "classifier"])
def test_per_head_zero_ablation_equals_a_naive_loop(client: Client, model_dirs: dict[str, Path], name: str) -> None:
    case = CASES[name]
    reference = Reference(model_dirs, case)
    result = client.ablate(TEXT, model=name, target=case.target)
    assert result.baseline_score == pytest.approx(reference.score(reference.base), abs=TOLERANCE)
    layers, heads = result.target_delta.shape
    assert result.output_change_metric == ("cosine_distance" if case.kind == "encoder" else "kl_divergence")
    assert not np.isnan(result.target_delta).any() and not np.isnan(result.output_change).any()
    deltas, changes = {}, {}
    for layer in range(layers):
        for head in range(heads):
            deltas[layer, head], changes[layer, head] = reference.delta_and_change({layer: zeroed([head])})
    assert_grid_close(result.target_delta, deltas)
    assert_grid_close(result.output_change, changes)


def test_ablation_changes_the_output(client: Client) -> None:
    result = client.ablate(TEXT, model="minilm", target=targets.embedding_norm())
    assert np.abs(result.target_delta).max() > 1e-2
    assert (result.output_change > 0).mean() > 0.9
    assert result.output_change.max() > 1e-3


def test_batch_size_and_head_subset_do_not_change_results(client: Client) -> None:
    full = client.ablate(TEXT, model="minilm", target=targets.embedding_norm())
    small = client.ablate(TEXT, model="minilm", target=targets.embedding_norm(), batch_size=5)
    np.testing.assert_allclose(small.target_delta, full.target_delta, atol=1e-5, rtol=0)
    np.testing.assert_allclose(small.output_change, full.output_change, atol=1e-5, rtol=0)
    chosen = [(4, 2), (0, 11), (4, 7), (2, 0)]
    subset = client.ablate(TEXT, model="minilm", target=targets.embedding_norm(), heads=chosen, batch_size=2)
    mask = np.zeros_like(full.target_delta, dtype=bool)
    for layer, head in chosen:
        mask[layer, head] = True
    assert np.isnan(subset.target_delta[~mask]).all()
    np.testing.assert_allclose(subset.target_delta[mask], full.target_delta[mask], atol=1e-5, rtol=0)


async def test_async_client_matches_the_sync_client(client: Client, address: str) -> None:
    expected = client.ablate(TEXT, model="llama", target=targets.next_token(), heads=[(2, 1), (0, 3)])
    async with AsyncClient(address) as async_client:
        result = await async_client.ablate(TEXT, model="llama", target=targets.next_token(), heads=[(2, 1), (0, 3)])
    np.testing.assert_array_equal(result.target_delta, expected.target_delta)
    assert result.baseline_score == expected.baseline_score


def test_stream_is_header_baseline_then_layers_in_order(client: Client) -> None:
    messages = list(client.stream_ablation(TEXT, model="gpt2", target=targets.next_token(), batch_size=3))
    kinds = [message.WhichOneof("payload") for message in messages]
    assert kinds == ["header", "baseline", "layer", "layer", "layer"]
    assert [message.layer.layer for message in messages[2:]] == [0, 1, 2]
    assert all(list(message.layer.heads) == [0, 1, 2, 3] for message in messages[2:])
    assert messages[1].baseline.num_layers == 3 and messages[1].baseline.num_heads == 4


def test_leaving_a_stream_early_cancels_it_and_leaves_no_hooks_behind(client: Client) -> None:
    expected = client.ablate(TEXT, model="minilm", target=targets.embedding_norm(), heads=[(1, 2), (5, 0)])
    # 72 single-row forwards of ~300 tokens: ~10 s uncancelled on a busy 2-core machine
    long_text = " ".join(["the model attends to every token it has seen so far"] * 28)
    stream = client.stream_ablation(long_text, model="minilm", target=targets.embedding_norm(), batch_size=1,
                                    cache="bypass")
    for message in stream:
        if message.WhichOneof("payload") == "layer":
            break  # 60 forwards still to go: cancelled at the next check
    stream.close()  # type: ignore[attr-defined]  # cancels the call (a reference would keep it open)
    started = time.perf_counter()
    after = client.ablate(TEXT, model="minilm", target=targets.embedding_norm(), heads=[(1, 2), (5, 0)],
                          cache="bypass")
    # one worker per device: the follow-up ran at once, not after the abandoned forwards
    assert time.perf_counter() - started < 3
    np.testing.assert_array_equal(after.target_delta, expected.target_delta)
    assert after.baseline_score == expected.baseline_score


def test_gqa_ablating_one_query_head_leaves_its_key_value_head_alone(
    client: Client, model_dirs: dict[str, Path]
) -> None:
    case = CASES["llama"]
    reference = Reference(model_dirs, case)
    config = reference.model.config
    group = config.num_attention_heads // config.num_key_value_heads
    assert group > 1
    result = client.ablate(TEXT, model="llama", target=case.target)
    for layer, head in [(0, 2), (1, 3), (2, 1)]:
        own_delta, _ = reference.delta_and_change({layer: zeroed([head])})
        first = head - head % group
        group_delta, _ = reference.delta_and_change({layer: zeroed(range(first, first + group))})
        assert result.target_delta[layer, head] == pytest.approx(own_delta, abs=TOLERANCE)
        assert abs(result.target_delta[layer, head] - group_delta) > 10 * SEPARATION


class CollectedLayers:
    """A sink for in-process runs that keeps the per-layer ablation results."""

    def __init__(self) -> None:
        self.layers: list[object] = []

    def emit(self, item: object) -> None:
        from introspect.results import LayerAblationResult

        if isinstance(item, LayerAblationResult):
            self.layers.append(item)

    def check(self) -> None:
        """Never cancelled."""

    def grid(self, field: str) -> np.ndarray:
        """`field` of every layer, [layers, heads]."""
        return np.stack([getattr(layer, field).values for layer in self.layers])


@pytest.mark.parametrize("name", ["minilm", "gpt2", "llama", "classifier"])
def test_growing_at_the_output_projections_agrees_with_growing_at_the_layer_inputs(
    model_dirs: dict[str, Path], name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The attention output projections are found without knowing the architecture, and
    the layer-input growth kept for models where they are not (and running every row
    from the start, for models that cannot grow a batch) gives the same results."""
    from introspect.config import ModelSpec
    from introspect.methods import method_for
    from introspect.models import load_model
    from introspect.requests import HeadAblationQuery, InputSpec, TargetSpec

    loaded = load_model(ModelSpec(name, model_dirs[name]), torch.device("cpu"), "float32")
    found = loaded.hooks.modules.projections
    assert found is not None and loaded.hooks.growth == "projection"
    assert all(module is projection(loaded.model, name, layer) for layer, module in enumerate(found))
    target = {"encoder": TargetSpec("embedding_norm"), "causal": TargetSpec("next_token"),
              "classifier": TargetSpec("class_score", class_index=1)}[CASES[name].kind]

    def ablate(value: str) -> CollectedLayers:
        query = HeadAblationQuery(model=name, input=InputSpec(text=TEXT), target=target, value=value, batch_size=7)
        method = method_for(query)
        sink = CollectedLayers()
        method.run(loaded, query, method.prepare(loaded.description, query), sink)  # type: ignore[arg-type]
        return sink

    at_projections = {value: ablate(value) for value in ("zero", "mean")}
    for growth in ("layer_input", "none"):
        monkeypatch.setattr(loaded.hooks, "growth", growth)
        for value, expected in at_projections.items():
            grown_otherwise = ablate(value)
            for field in ("target_delta", "output_change"):
                np.testing.assert_allclose(grown_otherwise.grid(field), expected.grid(field), atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", ["minilm", "gpt2"])
def test_mean_ablation_with_reference_texts(client: Client, model_dirs: dict[str, Path], name: str) -> None:
    case = CASES[name]
    reference = Reference(model_dirs, case)
    means = reference.head_means(REFERENCES)
    chosen = [(0, 1), (1, 3), (2, 0)] + ([(5, 7)] if name == "minilm" else [])
    result = client.ablate(TEXT, model=name, target=case.target, value="mean", heads=chosen,
                           mean_references=REFERENCES)
    for layer, head in chosen:
        delta, change = reference.delta_and_change({layer: replaced([head], means[layer])})
        assert result.target_delta[layer, head] == pytest.approx(delta, abs=TOLERANCE)
        assert result.output_change[layer, head] == pytest.approx(change, abs=TOLERANCE)
    zero = client.ablate(TEXT, model=name, target=case.target, heads=chosen)
    assert not np.allclose(zero.target_delta[0, 1], result.target_delta[0, 1], atol=SEPARATION)


def test_mean_ablation_over_the_inputs_own_positions(client: Client, model_dirs: dict[str, Path]) -> None:
    case = CASES["llama"]
    reference = Reference(model_dirs, case)
    means = reference.head_means([TEXT])
    result = client.ablate(TEXT, model="llama", target=case.target, value="mean")
    expected = {
        (layer, head): reference.delta_and_change({layer: replaced([head], means[layer])})[0]
        for layer in range(3)
        for head in range(4)
    }
    assert_grid_close(result.target_delta, expected)


@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_joint_ablation_and_greedy_continuations(client: Client, model_dirs: dict[str, Path], name: str) -> None:
    case = CASES[name]
    reference = Reference(model_dirs, case)
    heads = [(0, 1), (1, 3), (1, 0), (2, 2)]
    steps = 6
    result = client.ablate(TEXT, model=name, target=case.target, mode="joint", heads=heads, continuation_tokens=steps)
    edits = {layer: zeroed([h for l, h in heads if l == layer]) for layer in {layer for layer, _ in heads}}
    delta, change = reference.delta_and_change(edits)
    assert result.target_delta is None and result.importance is None
    joint = result.joint
    assert joint is not None and joint.heads == heads
    assert joint.ablated_score == pytest.approx(reference.score(reference.base) + delta, abs=TOLERANCE)
    assert joint.output_change == pytest.approx(change, abs=TOLERANCE)

    def greedy(edits: dict[int, HeadEdit]) -> list[int]:
        ids = reference.encoded["input_ids"]
        with torch.no_grad(), edited(reference.model, name, edits):
            for _ in range(steps):
                logits = reference.model(input_ids=ids, use_cache=False).logits[0, -1]
                ids = torch.cat([ids, logits.argmax().view(1, 1)], dim=1)
        return ids[0, reference.length :].tolist()

    assert joint.base_continuation == greedy({})
    assert joint.ablated_continuation == greedy(edits)
    assert joint.ablated_continuation_tokens == reference.tokenizer.convert_ids_to_tokens(joint.ablated_continuation)


def test_joint_ablation_on_an_encoder(client: Client, model_dirs: dict[str, Path]) -> None:
    case = CASES["minilm"]
    reference = Reference(model_dirs, case)
    heads = [(3, 4), (0, 0)]
    result = client.ablate(TEXT, model="minilm", target=case.target, mode="joint", heads=heads)
    delta, change = reference.delta_and_change({3: zeroed([4]), 0: zeroed([0])})
    assert result.joint.ablated_score - result.baseline_score == pytest.approx(delta, abs=TOLERANCE)
    assert result.joint.output_change == pytest.approx(change, abs=TOLERANCE)
    assert result.joint.base_continuation == []


@pytest.mark.parametrize("name", ["minilm", "llama"])
def test_importance_agrees_with_finite_differences(client: Client, model_dirs: dict[str, Path], name: str) -> None:
    case = CASES[name]
    # float64 copy for central differences; eps not too small, since LLaMA's RMSNorm still
    # rounds through float32 (O(eps^2) truncation error is far below the tolerance)
    model64 = copy.deepcopy(reference_model(model_dirs, name)).double()
    reference = Reference(model_dirs, case, model=model64)
    result = client.ablate(TEXT, model=name, target=case.target, mode="importance")
    assert result.importance is not None and result.target_delta is None
    assert result.baseline_score == pytest.approx(reference.score(reference.base), abs=TOLERANCE)
    eps = 1e-2
    for layer, head in [(0, 0), (1, 3), (2, 1)]:
        above = reference.score(reference.outputs({layer: gated(head, 1 + eps)}))
        below = reference.score(reference.outputs({layer: gated(head, 1 - eps)}))
        expected = (above - below) / (2 * eps)
        assert result.importance[layer, head] == pytest.approx(expected, abs=FINITE_DIFFERENCE_TOLERANCE, rel=1e-3), (layer, head)
    assert np.abs(result.importance).max() > 1e-3


def test_importance_reports_the_chosen_heads(client: Client) -> None:
    full = client.ablate(TEXT, model="gpt2", target=targets.next_token(), mode="importance")
    some = client.ablate(TEXT, model="gpt2", target=targets.next_token(), mode="importance", heads=[(1, 2)])
    assert np.isnan(some.importance).sum() == some.importance.size - 1
    assert some.importance[1, 2] == pytest.approx(full.importance[1, 2], abs=1e-6)


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"model": "gpt2", "heads": [(0, 4)]}, "heads[0].head"),
        ({"model": "gpt2", "heads": [(1, 1), (3, 0)]}, "heads[1].layer"),
        ({"model": "gpt2", "mode": "joint", "heads": [(0, 1), (0, 1)]}, "heads"),
        ({"model": "gpt2", "mode": "joint"}, "heads"),
        ({"model": "gpt2", "target": targets.embedding_norm()}, "target"),
        ({"model": "minilm", "target": targets.next_token()}, "target"),
        ({"model": "gpt2", "target": None}, "target"),
        ({"model": "gpt2", "mode": "joint", "heads": [(0, 1)], "continuation_tokens": -1}, "continuation_tokens"),
        ({"model": "gpt2", "mode": "joint", "heads": [(0, 1)], "continuation_tokens": 65}, "continuation_tokens"),
        ({"model": "gpt2", "continuation_tokens": 3}, "continuation_tokens"),
        ({"model": "minilm", "target": targets.embedding_norm(), "mode": "joint", "heads": [(0, 1)],
          "continuation_tokens": 3}, "continuation_tokens"),
        ({"model": "gpt2", "mean_references": ["some text"]}, "mean_references"),
        ({"model": "gpt2", "value": "mean", "mean_references": [""]}, "mean_references[0].text"),
        ({"model": "gpt2", "batch_size": -2}, "batch_size"),
        ({"model": "gpt2", "target": targets.next_token(position=40)}, "target.position"),
    ],
)
def test_invalid_requests_name_the_field(client: Client, options: dict[str, object], field: str) -> None:
    options = {"target": targets.next_token(), **options}
    with pytest.raises(IntrospectError) as raised:
        client.ablate(TEXT, **options)  # type: ignore[arg-type]
    assert raised.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert [violation[0] for violation in raised.value.field_violations] == [field], raised.value.message


def test_continuation_must_fit_the_model(client: Client) -> None:
    long_text = " ".join(["word"] * 100)  # gpt2 accepts 128 positions
    with pytest.raises(IntrospectError) as raised:
        client.ablate(long_text, model="gpt2", target=targets.next_token(), mode="joint", heads=[(0, 0)],
                      continuation_tokens=60)
    assert raised.value.field_violations[0][0] == "continuation_tokens"


def test_cli_ablate_json_and_heatmap(client: Client, address: str, tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    from introspect_client.cli import main
    from matplotlib.image import imread

    arguments = ["ablate", "--server", address, "--text", TEXT, "--model", "gpt2", "--target", "next_token"]
    assert main([*arguments, "--heads", "0:1", "2:3", "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    expected = client.ablate(TEXT, model="gpt2", target=targets.next_token(), heads=[(0, 1), (2, 3)])
    assert document["baseline_score"] == expected.baseline_score
    assert document["target_delta"][0][1] == float(expected.target_delta[0, 1])
    assert document["target_delta"][0][0] is None  # not ablated: NaN as null

    path = tmp_path / "heads.png"
    assert main([*arguments, "--mode", "importance", "--png", str(path)]) == 0
    image = imread(path)
    assert image.shape[0] > 200 and float(image[..., :3].std()) > 0.05

    assert main([*arguments, "--mode", "joint", "--heads", "1:1", "--continuation", "3"]) == 0
    summary = capsys.readouterr().out
    assert "ablated together" in summary and "ablated continuation:" in summary

    assert main([*arguments, "--heads", "0:7"]) == 1
    assert capsys.readouterr().err.startswith("error: INVALID_ARGUMENT: heads[0].head")
