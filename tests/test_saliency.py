"""StreamSaliency through a real server and the real client, against references computed
here, independently of the server's code: the same weights loaded by plain transformers
(eager attention), the targets written out again, torch.autograd, Captum's
LayerIntegratedGradients, numpy (rollout) and networkx (flow)."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
import networkx as nx
import numpy as np
import pytest
import torch
from conftest import SMALL_MESSAGE_BYTES, InProcessServer, reference_model, reference_tokenizer
from introspect_client import AsyncClient, Client, IntrospectError, targets
from introspect_contract import pb
from introspect_contract import pb_grpc

TEXT = "The quick brown fox jumps over"
REFERENCE_TEXT = "A dog sleeps in the sun."
TOKEN, CONTRAST = 2000, 1000


@dataclass(frozen=True)
class Case:
    """A model, a client-side target, and the same target written for the reference."""

    model: str
    target: pb.Target
    # (reference model output, attention mask) -> [batch] scores
    score: Callable[[object, torch.Tensor], torch.Tensor]
    explained_row: int  # rollout / flow row: 0 ([CLS]) or the last position


def _pooled(output: object, mask: torch.Tensor) -> torch.Tensor:
    hidden = output.last_hidden_state  # type: ignore[attr-defined]
    weights = mask[..., None].to(hidden.dtype)
    return (hidden * weights).sum(dim=1) / weights.sum(dim=1)


def _similarity(output: object, mask: torch.Tensor) -> torch.Tensor:
    reference = REFERENCES["similarity"]
    return torch.nn.functional.cosine_similarity(_pooled(output, mask), reference[None], dim=-1)


CASES = {
    "minilm-norm": Case("minilm", targets.embedding_norm(), lambda o, m: _pooled(o, m).norm(dim=-1), 0),
    "minilm-similarity": Case("minilm", targets.embedding_similarity(REFERENCE_TEXT), _similarity, 0),
    "gpt2": Case(
        "gpt2", targets.next_token(token_id=TOKEN),
        lambda o, m: torch.log_softmax(o.logits[:, -1], dim=-1)[:, TOKEN], -1,  # type: ignore[attr-defined]
    ),
    "llama": Case(
        "llama", targets.logit_difference(TOKEN, CONTRAST),
        lambda o, m: o.logits[:, -1, TOKEN] - o.logits[:, -1, CONTRAST], -1,  # type: ignore[attr-defined]
    ),
    "classifier": Case("classifier", targets.class_score(1), lambda o, m: o.logits[:, 1], 0),  # type: ignore[attr-defined]
}
REFERENCES: dict[str, torch.Tensor] = {}


@dataclass
class Reference:
    """The reference side of one case on TEXT."""

    model: torch.nn.Module
    tokenizer: object
    input_ids: torch.Tensor  # [1, tokens]
    embeddings: torch.Tensor  # [tokens, hidden]
    special: torch.Tensor  # [tokens] bool
    case: Case

    def of_embeddings(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Target scores [batch] of embeddings [batch, tokens, hidden]."""
        mask = torch.ones(embeddings.shape[:2], dtype=torch.long)
        return self.case.score(self.model(inputs_embeds=embeddings, attention_mask=mask), mask)

    def of_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Target scores [batch] of token ids [batch, tokens]."""
        mask = torch.ones_like(input_ids)
        return self.case.score(self.model(input_ids=input_ids, attention_mask=mask), mask)

    def gradient(self) -> torch.Tensor:
        """d target / d embeddings [tokens, hidden] by torch.autograd."""
        embeddings = self.embeddings[None].clone().requires_grad_(True)
        (gradient,) = torch.autograd.grad(self.of_embeddings(embeddings).sum(), embeddings)
        return gradient[0]

    def baseline_ids(self, token: int) -> torch.Tensor:
        """The input with every non-special token replaced by `token` [1, tokens]."""
        return torch.where(self.special[None], self.input_ids, torch.full_like(self.input_ids, token))


def reference_of(model_dirs: dict[str, Path], name: str, text: str = TEXT) -> Reference:
    case = CASES[name]
    model = reference_model(model_dirs, case.model)
    tokenizer = reference_tokenizer(model_dirs, case.model)
    if name == "minilm-similarity" and "similarity" not in REFERENCES:
        encoded = tokenizer(REFERENCE_TEXT, return_tensors="pt")
        with torch.no_grad():
            REFERENCES["similarity"] = _pooled(model(**encoded), encoded["attention_mask"])[0]
    input_ids = tokenizer(text, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        embeddings = model.get_input_embeddings()(input_ids)[0]
    special = torch.tensor([token in tokenizer.all_special_ids for token in input_ids[0].tolist()])
    return Reference(model, tokenizer, input_ids, embeddings, special, case)


def assert_close(
    actual: np.ndarray, expected: torch.Tensor | np.ndarray, rtol: float = 1e-4, floor: float = 1e-5
) -> None:
    """Equal up to float32 noise: relative per value, plus a floor far below the largest
    expected value (small values from sums that cancel). Measured agreement against the
    references: at most 5.4e-5 relative on values above 1% of the largest, 2.7e-6 of the
    largest value in absolute terms, so a 0.1% error in any method fails."""
    expected = np.asarray(expected, dtype=np.float64)
    scale = float(np.abs(expected).max()) or 1.0
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=floor * scale)


# --- gradients ---------------------------------------------------------------------


@pytest.mark.parametrize("name", list(CASES))
def test_gradient_and_gradient_x_input_equal_autograd(client: Client, model_dirs: dict[str, Path], name: str) -> None:
    reference = reference_of(model_dirs, name)
    gradient = reference.gradient()
    case = CASES[name]
    plain = client.saliency(TEXT, model=case.model, target=case.target, method="gradient", per_dimension=True)
    assert plain.tokens == reference.tokenizer.convert_ids_to_tokens(reference.input_ids[0])  # type: ignore[attr-defined]
    with torch.no_grad():
        expected_target = float(reference.of_ids(reference.input_ids)[0])
    assert plain.target_score == pytest.approx(expected_target, rel=1e-4, abs=1e-5)
    assert_close(plain.scores, gradient.norm(dim=-1))
    assert_close(plain.per_dimension, gradient)  # type: ignore[arg-type]
    times_input = client.saliency(
        TEXT, model=case.model, target=case.target, method="gradient_x_input", per_dimension=True
    )
    assert_close(times_input.scores, (gradient * reference.embeddings).sum(dim=-1))
    assert_close(times_input.per_dimension, gradient * reference.embeddings)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("model", "target", "score"),
    [
        # the predicted next token after position 2: its log-probability
        ("gpt2", targets.next_token(position=2),
         lambda o: torch.log_softmax(o.logits[:, 2], dim=-1).max(dim=-1).values),
        # the predicted class's softmax probability
        ("classifier", targets.class_score(probability=True), lambda o: torch.softmax(o.logits, dim=-1).max(dim=-1).values),
    ],
    ids=["predicted-next-token", "predicted-class-probability"],
)
def test_default_targets_follow_the_prediction(
    client: Client, model_dirs: dict[str, Path], model: str, target: pb.Target, score: Callable[[object], torch.Tensor]
) -> None:
    reference_net = reference_model(model_dirs, model)
    input_ids = reference_tokenizer(model_dirs, model)(TEXT, return_tensors="pt")["input_ids"]
    embeddings = reference_net.get_input_embeddings()(input_ids).detach().requires_grad_(True)
    expected = score(reference_net(inputs_embeds=embeddings, attention_mask=torch.ones_like(input_ids)))
    (gradient,) = torch.autograd.grad(expected.sum(), embeddings)
    result = client.saliency(TEXT, model=model, target=target, method="gradient")
    assert result.target_score == pytest.approx(float(expected[0].detach()), rel=1e-4, abs=1e-5)
    assert_close(result.scores, gradient[0].norm(dim=-1))


def test_tokens_after_a_causal_target_position_score_zero(client: Client, model_dirs: dict[str, Path]) -> None:
    reference = reference_of(model_dirs, "gpt2")
    position = 3
    embeddings = reference.embeddings[None].clone().requires_grad_(True)
    logits = reference.model(inputs_embeds=embeddings).logits
    (gradient,) = torch.autograd.grad(torch.log_softmax(logits[0, position], dim=-1)[TOKEN], embeddings)
    result = client.saliency(TEXT, model="gpt2", target=targets.next_token(position, TOKEN), method="gradient")
    assert_close(result.scores, gradient[0].norm(dim=-1))
    assert np.all(result.scores[position + 1 :] == 0)


def test_smoothgrad_equals_autograd_on_the_same_noise(client: Client, model_dirs: dict[str, Path]) -> None:
    for name in ("minilm-norm", "llama"):
        reference = reference_of(model_dirs, name)
        samples, noise_level, seed = 4, 0.2, 7
        embeddings = reference.embeddings
        std = noise_level * float(embeddings.max() - embeddings.min())
        generator = torch.Generator().manual_seed(seed)
        noise = torch.stack([torch.randn(embeddings.shape, generator=generator) for _ in range(samples)]) * std
        noisy = (embeddings[None] + noise).requires_grad_(True)
        (gradients,) = torch.autograd.grad(reference.of_embeddings(noisy).sum(), noisy)
        mean = gradients.mean(dim=0)
        case = CASES[name]
        result = client.saliency(
            TEXT, model=case.model, target=case.target, method="smoothgrad", samples=samples,
            noise_level=noise_level, seed=seed, batch_size=3, per_dimension=True,
        )
        assert [item.steps for item in result.refinements] == [3, samples]  # streamed after each batch
        assert_close(result.scores, mean.norm(dim=-1))
        assert_close(result.per_dimension, mean)  # type: ignore[arg-type]


# --- integrated gradients ----------------------------------------------------------


@pytest.mark.parametrize("name", list(CASES))
def test_integrated_gradients_completeness_within_the_reported_delta(
    client: Client, model_dirs: dict[str, Path], name: str
) -> None:
    reference = reference_of(model_dirs, name)
    case = CASES[name]
    result = client.saliency(TEXT, model=case.model, target=case.target, method="ig", baseline="pad", steps=32)
    pad = reference.tokenizer.pad_token_id  # type: ignore[attr-defined]
    with torch.no_grad():
        expected_target = float(reference.of_ids(reference.input_ids)[0])
        expected_baseline = float(reference.of_ids(reference.baseline_ids(pad))[0])
    scale = max(abs(expected_target), abs(expected_baseline), 1e-3)
    assert result.target_score == pytest.approx(expected_target, abs=1e-5 * scale)
    assert result.baseline_score == pytest.approx(expected_baseline, abs=1e-5 * scale)
    total = float(result.scores.sum())
    assert result.convergence_delta == pytest.approx(abs(total - (result.target_score - result.baseline_score)), abs=1e-5 * scale)
    assert abs(total - (expected_target - expected_baseline)) <= result.convergence_delta + 1e-5 * scale
    assert np.all(result.scores[reference.special.numpy()] == 0)  # special tokens keep their embedding
    assert result.steps == 32


@pytest.mark.parametrize("baseline", ["zero", "mask", "tokens"])
def test_integrated_gradients_baselines(client: Client, model_dirs: dict[str, Path], baseline: str) -> None:
    reference = reference_of(model_dirs, "gpt2")
    embed = reference.model.get_input_embeddings()
    with torch.no_grad():
        if baseline == "zero":
            start = torch.where(reference.special[:, None], reference.embeddings, 0.0)
        elif baseline == "mask":
            start = embed(reference.baseline_ids(reference.tokenizer.mask_token_id))[0]  # type: ignore[attr-defined]
        else:
            start = embed(torch.full_like(reference.input_ids, 1234))[0]
        expected = float(reference.of_embeddings(reference.embeddings[None])[0] - reference.of_embeddings(start[None])[0])
    given = [1234] * reference.input_ids.shape[1] if baseline == "tokens" else baseline
    result = client.saliency(TEXT, model="gpt2", target=CASES["gpt2"].target, method="ig", baseline=given, steps=16)
    assert result.target_score - result.baseline_score == pytest.approx(expected, abs=1e-5)
    assert abs(float(result.scores.sum()) - expected) <= result.convergence_delta + 1e-6


def captum_attributions(reference: Reference, rule: str, steps: int) -> torch.Tensor:
    """Captum's LayerIntegratedGradients on the word embeddings, pad baseline: [tokens, hidden]."""
    from captum.attr import LayerIntegratedGradients

    method = {"gauss_legendre": "gausslegendre"}.get(rule, rule)
    integrated = LayerIntegratedGradients(reference.of_ids, reference.model.get_input_embeddings())
    baseline = reference.baseline_ids(reference.tokenizer.pad_token_id)  # type: ignore[attr-defined]
    attributions = integrated.attribute(reference.input_ids, baselines=baseline, n_steps=steps, method=method)
    return attributions[0].detach()


@pytest.mark.parametrize(
    ("name", "rule"),
    [("minilm-similarity", "gauss_legendre"), ("gpt2", "riemann_middle"), ("llama", "gauss_legendre"),
     ("classifier", "riemann_right"), ("gpt2", "riemann_left")],
)
def test_integrated_gradients_equal_captum(client: Client, model_dirs: dict[str, Path], name: str, rule: str) -> None:
    reference = reference_of(model_dirs, name)
    steps = 12
    expected = captum_attributions(reference, rule, steps)
    case = CASES[name]
    result = client.saliency(
        TEXT, model=case.model, target=case.target, method="ig", baseline="pad", rule=rule, steps=steps,
        batch_size=5, per_dimension=True,
    )
    assert_close(result.per_dimension, expected)  # type: ignore[arg-type]
    assert_close(result.scores, expected.sum(dim=-1))


@pytest.mark.parametrize(
    ("rule", "steps", "schedule", "one_shot_rule"),
    [("gauss_legendre", 64, [8, 16, 32, 64], "gauss_legendre"), ("default", 65, [5, 9, 17, 33, 65], "riemann_trapezoid")],
)
def test_progressive_integrated_gradients_stream_refinements_and_stop_early(
    client: Client, rule: str, steps: int, schedule: list[int], one_shot_rule: str
) -> None:
    case = CASES["minilm-norm"]
    options = {"model": "minilm", "target": case.target, "method": "ig", "rule": rule, "steps": steps}
    everything = client.saliency(TEXT, tolerance=1e-12, **options)  # type: ignore[arg-type]
    assert [item.steps for item in everything.refinements] == schedule
    deltas = [item.convergence_delta for item in everything.refinements]
    # a tolerance the first refinement misses and a later one meets
    stop = next(index for index, delta in enumerate(deltas) if delta < deltas[0])
    tolerance = deltas[stop]
    messages = list(client.stream_saliency(TEXT, tolerance=tolerance, cache="bypass", **options))  # type: ignore[arg-type]
    chunks = [message.chunk for message in messages[1:]]
    assert messages[0].HasField("header")
    assert [chunk.steps for chunk in chunks] == schedule[: stop + 1]
    assert [chunk.final for chunk in chunks] == [False] * stop + [True]
    assert chunks[-1].convergence_delta <= tolerance < min(chunk.convergence_delta for chunk in chunks[:-1])
    one_shot = client.saliency(
        TEXT, model="minilm", target=case.target, method="ig", rule=one_shot_rule, steps=chunks[-1].steps
    )
    streamed = np.frombuffer(chunks[-1].scores.data, dtype="<f4")
    assert_close(streamed, one_shot.scores, rtol=1e-5)


def test_quadrature_rules_integrate_polynomials_exactly() -> None:
    from introspect.methods.integrated_gradients import quadrature

    for rule, exact_degree in [("gauss_legendre", 2 * 12 - 1), ("riemann_trapezoid", 1),
                               ("riemann_middle", 1), ("riemann_left", 0), ("riemann_right", 0)]:
        nodes, weights = quadrature(rule, 12)
        assert np.all(np.diff(nodes) > 0) and 0 <= nodes[0] and nodes[-1] <= 1
        for degree in range(exact_degree + 1):
            assert (weights * nodes**degree).sum() == pytest.approx(1 / (degree + 1), abs=1e-12), (rule, degree)


@pytest.mark.parametrize(
    ("rule", "steps", "schedule"),
    [("riemann_left", 32, [8, 16, 32]), ("riemann_trapezoid", 33, [5, 9, 17, 33]),
     ("default", 0, [5, 9, 17, 33, 65, 129])],
)
def test_nested_refinements_reuse_points_and_equal_one_shot_results(
    client: Client, rule: str, steps: int, schedule: list[int]
) -> None:
    case = CASES["gpt2"]
    progressive = client.saliency(
        TEXT, model="gpt2", target=case.target, method="ig", rule=rule, steps=steps, tolerance=1e-15, batch_size=3,
        per_dimension=True,
    )
    assert [item.steps for item in progressive.refinements] == schedule
    one_shot_rule = "riemann_trapezoid" if rule == "default" else rule
    for refinement in progressive.refinements[:4] + progressive.refinements[-1:]:
        one_shot = client.saliency(
            TEXT, model="gpt2", target=case.target, method="ig", rule=one_shot_rule, steps=refinement.steps,
            per_dimension=True,
        )
        assert_close(refinement.scores, one_shot.scores, rtol=1e-4)
        assert refinement.convergence_delta == pytest.approx(one_shot.convergence_delta, abs=1e-6)
    assert_close(progressive.per_dimension, one_shot.per_dimension, rtol=1e-4)  # type: ignore[arg-type]


# --- occlusion ---------------------------------------------------------------------


def occlusion_reference(reference: Reference, span: int, replacement: int) -> np.ndarray:
    """Mean over the windows covering each token of f(input) - f(window replaced by the
    replacement token), special tokens never replaced, computed on token ids."""
    ids = reference.input_ids
    length = ids.shape[1]
    with torch.no_grad():
        base = float(reference.of_ids(ids)[0])
        totals, counts = np.zeros(length), np.zeros(length)
        for start in range(length - span + 1):
            window = [p for p in range(start, start + span) if not reference.special[p]]
            if not window:
                continue
            occluded = ids.clone()
            occluded[0, window] = replacement
            drop = base - float(reference.of_ids(occluded)[0])
            totals[window] += drop
            counts[window] += 1
    return totals / np.maximum(counts, 1)


@pytest.mark.parametrize("name", list(CASES))
def test_occlusion_equals_rerunning_without_the_token(client: Client, model_dirs: dict[str, Path], name: str) -> None:
    reference = reference_of(model_dirs, name)
    case = CASES[name]
    result = client.saliency(TEXT, model=case.model, target=case.target, method="occlusion", replacement="pad")
    # drops are differences of nearly equal float32 scores: up to 6.8e-5 of the largest
    # drop measured (classifier), so a floor of 1e-4 of it
    expected = occlusion_reference(reference, 1, reference.tokenizer.pad_token_id)  # type: ignore[attr-defined]
    assert_close(result.scores, expected, floor=1e-4)


def test_occlusion_spans_with_the_mask_token(client: Client, model_dirs: dict[str, Path]) -> None:
    reference = reference_of(model_dirs, "minilm-norm")
    result = client.saliency(
        TEXT, model="minilm", target=CASES["minilm-norm"].target, method="occlusion", span=2, replacement="mask"
    )
    assert_close(result.scores, occlusion_reference(reference, 2, reference.tokenizer.mask_token_id))  # type: ignore[attr-defined]


def test_occlusion_streams_tokens_as_they_finish(client: Client) -> None:
    text = "one two three four five six seven eight nine ten"
    messages = list(client.stream_saliency(
        text, model="gpt2", target=CASES["gpt2"].target, method="occlusion", batch_size=3, cache="bypass"
    ))
    chunks = [message.chunk for message in messages[1:]]
    final = chunks[-1]
    partial = chunks[:-1]
    assert final.final and not any(chunk.final for chunk in partial)
    assert len(partial) >= 2
    tokens = len(messages[0].header.inputs[0].token_ids)
    assert (final.token_start, final.token_end) == (0, tokens)
    assert partial[0].token_start == 0
    assert all(a.token_end == b.token_start for a, b in zip(partial, partial[1:]))
    final_scores = np.frombuffer(final.scores.data, dtype="<f4")
    for chunk in partial:
        values = np.frombuffer(chunk.scores.data, dtype="<f4")
        np.testing.assert_array_equal(values, final_scores[chunk.token_start : chunk.token_end])


# --- attention rollout and flow ----------------------------------------------------


def mixed_attention(reference: Reference) -> np.ndarray:
    """[layers, tokens, tokens]: eager attention, mean over heads, 0.5 A + 0.5 I, rows
    renormalised."""
    with torch.no_grad():
        attentions = reference.model(input_ids=reference.input_ids, output_attentions=True).attentions
    maps = torch.stack(attentions)[:, 0].double().mean(dim=1).numpy()
    mixed = 0.5 * maps + 0.5 * np.eye(maps.shape[-1])
    return mixed / mixed.sum(axis=-1, keepdims=True)


@pytest.mark.parametrize("name", ["minilm-norm", "gpt2", "llama", "classifier"])
def test_rollout_equals_numpy(client: Client, model_dirs: dict[str, Path], name: str) -> None:
    reference = reference_of(model_dirs, name)
    layers = mixed_attention(reference)
    rollout = np.eye(layers.shape[-1])
    for layer in layers:
        rollout = layer @ rollout
    case = CASES[name]
    result = client.saliency(TEXT, model=case.model, target=case.target, method="rollout")
    assert_close(result.scores, rollout[case.explained_row], rtol=1e-4)


@pytest.mark.parametrize("name", ["minilm-norm", "gpt2", "llama", "classifier"])
def test_flow_equals_networkx_max_flow(client: Client, model_dirs: dict[str, Path], name: str) -> None:
    reference = reference_of(model_dirs, name)
    layers = mixed_attention(reference)
    count, tokens = layers.shape[0], layers.shape[1]
    # the paper's construction: the full layered graph, Edmonds-Karp from output to input
    graph = nx.DiGraph()
    for layer in range(count):
        for query in range(tokens):
            for key in range(tokens):
                if layers[layer, query, key] > 0:
                    graph.add_edge(("h", layer + 1, query), ("h", layer, key), capacity=layers[layer, query, key])
    case = CASES[name]
    source = ("h", count, case.explained_row % tokens)
    flows = np.array([
        nx.maximum_flow_value(graph, source, ("h", 0, token), flow_func=nx.algorithms.flow.edmonds_karp)
        for token in range(tokens)
    ])
    result = client.saliency(TEXT, model=case.model, target=case.target, method="flow")
    assert_close(result.scores, flows / flows.sum(), rtol=1e-4)
    assert result.scores.sum() == pytest.approx(1.0, abs=1e-5)


def test_large_per_dimension_results_are_split_under_the_message_size(
    client: Client, small_message_server: InProcessServer
) -> None:
    limit = SMALL_MESSAGE_BYTES
    text = "saliency maps explain which words matter " * 12  # ~75 tokens x 384 floats: 115 KB
    options = {"model": "minilm", "target": CASES["minilm-norm"].target, "method": "gradient", "per_dimension": True}
    with Client(small_message_server.address) as split_client:
        messages = list(split_client.stream_saliency(text, **options))  # type: ignore[arg-type]
        split = split_client.saliency(text, **options)  # type: ignore[arg-type]
    chunks = [message.chunk for message in messages[1:]]
    assert len(chunks) >= 2 and max(message.ByteSize() for message in messages) <= limit
    assert [chunk.final for chunk in chunks] == [False] * (len(chunks) - 1) + [True]
    assert all(a.token_end == b.token_start for a, b in zip(chunks, chunks[1:]))
    whole = client.saliency(text, **options)  # type: ignore[arg-type]
    assert_close(split.per_dimension, whole.per_dimension, rtol=1e-5)  # type: ignore[arg-type]
    assert_close(split.scores, whole.scores, rtol=1e-5)


# --- errors ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("arguments", "field", "fragment"),
    [
        ({"model": "minilm", "target": targets.next_token()}, "target", "['embedding_similarity', 'embedding_norm']"),
        ({"model": "gpt2", "target": targets.class_score()}, "target", "['next_token', 'logit_difference']"),
        ({"model": "classifier", "target": None}, "target", "['class_score']"),
        ({"method": "ig", "steps": -1}, "integrated_gradients.steps", "-1"),
        ({"method": "ig", "tolerance": -0.1}, "integrated_gradients.tolerance", ">= 0"),
        ({"method": "ig", "batch_size": -2}, "integrated_gradients.batch_size", ">= 0"),
        ({"method": "ig", "baseline": [1, 2, 3]}, "integrated_gradients.baseline_token_ids", "has 8 tokens"),
        ({"method": "smoothgrad", "noise_level": -0.5}, "smoothgrad.noise_level", ">= 0"),
        ({"method": "smoothgrad", "samples": -3}, "smoothgrad.samples", "-3"),
        ({"method": "occlusion", "span": -1}, "occlusion.span", ">= 1"),
        ({"method": "occlusion", "span": 99}, "occlusion.span", "exceeds"),
        ({"method": "occlusion", "stride": -1}, "occlusion.stride", ">= 1"),
        ({"method": "occlusion", "per_dimension": True}, "per_dimension", "occlusion"),
        ({"method": "flow", "per_dimension": True}, "per_dimension", "attention_flow"),
        ({"model": "gpt2", "target": targets.logit_difference(5, 5)}, "target.logit_difference.contrast_token_id", "differ"),
        ({"model": "gpt2", "target": targets.next_token(position=40)}, "target.position", "outside the input"),
    ],
)
def test_bad_options_name_the_field(client: Client, arguments: dict[str, object], field: str, fragment: str) -> None:
    options = {"model": "minilm", "target": CASES["minilm-norm"].target, "method": "gradient", **arguments}
    with pytest.raises(IntrospectError) as error:
        client.saliency(TEXT, **options)  # type: ignore[arg-type]
    assert error.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert fragment in error.value.message
    assert error.value.field_violations[0][0] == field


def test_unset_method_lists_the_methods_and_long_flow_inputs_are_refused(address: str, client: Client) -> None:
    channel = grpc.insecure_channel(address)
    request = pb.StreamSaliencyRequest(model="minilm", input=pb.Input(text=pb.TextInput(text=TEXT)), target=targets.embedding_norm())
    with pytest.raises(grpc.RpcError) as error:
        list(pb_grpc.IntrospectionStub(channel).StreamSaliency(request))
    channel.close()
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "method" in error.value.details() and "integrated_gradients" in error.value.details()
    with pytest.raises(IntrospectError) as refused:
        client.saliency("word " * 70, model="minilm", target=targets.embedding_norm(), method="flow")
    assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT and "64 tokens" in refused.value.message
    assert client.saliency("still serving", model="minilm", target=targets.embedding_norm(), method="gradient").scores.size


def test_leaving_a_stream_stops_the_work(client: Client) -> None:
    import time

    # 8 + 16 + ... + 512 steps: ~10 s uncancelled on a busy 2-core machine; the first
    # refinement (one batch), then cancel
    stream = client.stream_saliency(
        TEXT, model="minilm", target=CASES["minilm-norm"].target, method="ig", rule="gauss_legendre",
        steps=512, tolerance=1e-30, batch_size=8, cache="bypass",
    )
    for message in stream:
        if message.HasField("chunk"):
            assert message.chunk.steps == 8 and not message.chunk.final
            break
    stream.close()  # type: ignore[attr-defined]
    started = time.perf_counter()
    client.saliency(TEXT, model="minilm", target=CASES["minilm-norm"].target, method="gradient", cache="bypass")
    assert time.perf_counter() - started < 3  # one worker per device: it was free again


async def test_async_client_gets_the_same_result(address: str, client: Client) -> None:
    options = {"model": "llama", "target": CASES["llama"].target, "method": "ig", "steps": 8}
    async with AsyncClient(address) as asynchronous:
        result = await asynchronous.saliency(TEXT, **options)  # type: ignore[arg-type]
    np.testing.assert_array_equal(result.scores, client.saliency(TEXT, **options).scores)  # type: ignore[arg-type]


# --- CLI ---------------------------------------------------------------------------


def test_cli_writes_a_png_and_json_equal_to_the_client(
    address: str, client: Client, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from introspect_client.cli import main

    image = tmp_path / "saliency.png"
    arguments = ["saliency", "--server", address, "--model", "gpt2", "--method", "ig", "--text", TEXT,
                 "--target", "next_token", "--token-id", str(TOKEN), "--steps", "8"]
    assert main([*arguments, "--png", str(image)]) == 0
    from matplotlib.image import imread

    pixels = imread(image)
    assert pixels.shape[0] > 100 and pixels.shape[1] > 400
    assert len(np.unique(pixels.reshape(-1, pixels.shape[-1]), axis=0)) > 20
    capsys.readouterr()
    assert main([*arguments, "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    expected = client.saliency(TEXT, model="gpt2", target=CASES["gpt2"].target, method="ig", steps=8)
    assert document["tokens"] == expected.tokens
    np.testing.assert_allclose(document["scores"], expected.scores, rtol=1e-6)
    assert document["steps"] == 8 and document["target_score"] == pytest.approx(expected.target_score)
