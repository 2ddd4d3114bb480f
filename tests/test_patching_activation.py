"""StreamPatching, method ACTIVATION, through a real server over raw gRPC, against the
obvious loop: the same weights in plain transformers (eager attention), one forward per
patch, with an independent forward hook replacing the activation by the other run's
(block input: forward pre-hook on the block; block output: forward hook on it; attention
output: forward hook on the attention output projection; MLP output: forward hook on the
MLP; one head's output: forward pre-hook on the output projection replacing that head's
slice of its input). The metric is recomputed from the reference logits / hidden states.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import torch
from architectures import CASES_BY_TYPE, build_tiny_model, minilm_tokenizer
from conftest import InProcessServer, patching_layers, reference_model
from introspect_client import targets
from introspect_contract import pb, pb_grpc
from introspect_contract.tensors import decode_tensor

# Server against the naive loop (absolute, on metrics of magnitude ~1-10).
TOLERANCE = 1e-4
POINTS = ("resid_pre", "resid_post", "attn_out", "mlp_out", "head", "head_position")
CLEAN = [101, 2023, 3185, 2003, 1037, 2204, 2154]
CORRUPTED = [101, 2023, 4937, 2003, 1037, 2919, 2154]  # positions 2 and 5 differ


# ---------------------------------------------------------------------------------------
# Calling the server


@dataclass
class Layer:
    """One PatchingLayer, decoded."""

    positions: list[int]
    heads: list[int]
    values: np.ndarray
    normalized: np.ndarray | None


@dataclass
class Answer:
    """A decoded StreamPatching stream."""

    baselines: dict[int, pb.PatchingBaseline]
    layers: dict[tuple[int, str, int], Layer]  # (pair_index, point, layer)
    order: list[tuple[int, str, int]]


def ids(values: list[int]) -> pb.Input:
    return pb.Input(token_ids=pb.TokenIds(ids=values))


def request(model: str, pairs: list[tuple[list[int], list[int] | None, list[int]]], target: pb.Target | None,
            points: tuple[str, ...] = POINTS, direction: str = "denoising", **options: Any) -> pb.StreamPatchingRequest:
    message = pb.StreamPatchingRequest(
        model=model, method=pb.PATCHING_METHOD_ACTIVATION,
        direction=getattr(pb, f"PATCH_DIRECTION_{direction.upper()}"),
        points=[getattr(pb, f"PATCH_POINT_{point.upper()}") for point in points],
        cache=pb.CACHE_POLICY_BYPASS, **options,
    )
    if target is not None:
        message.target.CopyFrom(target)
    for clean, corrupted, alignment in pairs:
        pair = message.pairs.add(clean=ids(clean), alignment=alignment)
        if corrupted is not None:
            pair.corrupted.CopyFrom(ids(corrupted))
    return message


def call(address: str, message: pb.StreamPatchingRequest) -> Answer:
    with grpc.insecure_channel(address) as channel:
        responses = list(pb_grpc.IntrospectionStub(channel).StreamPatching(message))
    answer = Answer({}, {}, [])
    for response in responses:
        if response.HasField("baseline"):
            answer.baselines[response.baseline.pair_index] = response.baseline
        elif response.HasField("layer"):
            layer = response.layer
            point = pb.PatchPoint.Name(layer.point).removeprefix("PATCH_POINT_").lower()
            key = (layer.pair_index, point, layer.layer)
            answer.layers[key] = Layer(list(layer.positions), list(layer.heads), decode_tensor(layer.values),
                                       decode_tensor(layer.normalized) if layer.HasField("normalized") else None)
            answer.order.append(key)
    return answer


def refused_field(address: str, message: pb.StreamPatchingRequest) -> str:
    from google.rpc import error_details_pb2
    from grpc_status import rpc_status

    with grpc.insecure_channel(address) as channel, pytest.raises(grpc.RpcError) as error:
        list(pb_grpc.IntrospectionStub(channel).StreamPatching(message))
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT, error.value
    status = rpc_status.from_call(error.value)
    assert status is not None
    violations = error_details_pb2.BadRequest()
    status.details[0].Unpack(violations)
    return violations.field_violations[0].field


# ---------------------------------------------------------------------------------------
# The naive loop


@dataclass(frozen=True)
class Modules:
    """Where a reference model's blocks, attention output projections and MLPs are."""

    blocks: Callable[[Any], Any]
    projection: Callable[[Any], torch.nn.Module]
    mlp: Callable[[Any], torch.nn.Module]


DECODER = Modules(lambda model: model.model.layers, lambda block: block.self_attn.o_proj, lambda block: block.mlp)
BERT = Modules(lambda model: model.encoder.layer, lambda block: block.attention.output.dense,
               lambda block: block.output.dense)
MODULES = {
    "gpt2": Modules(lambda model: model.transformer.h, lambda block: block.attn.c_proj, lambda block: block.mlp),
    "llama": DECODER,
    "qwen2": DECODER,
    "mistral": DECODER,
    "minilm": BERT,
    "classifier": Modules(lambda model: model.bert.encoder.layer, BERT.projection, BERT.mlp),
}


def _hidden(output: Any) -> torch.Tensor:
    return output if isinstance(output, torch.Tensor) else output[0]


def _with_hidden(output: Any, hidden: torch.Tensor) -> Any:
    return hidden if isinstance(output, torch.Tensor) else (hidden, *output[1:])


class Reference:
    """One plain transformers model: its activations and its forwards with one patch."""

    def __init__(self, model: Any, name: str) -> None:
        self.model = model
        self.modules = MODULES[name]
        self.blocks = list(self.modules.blocks(model))
        self.heads = model.config.num_attention_heads

    def _module(self, point: str, layer: int) -> torch.nn.Module:
        block = self.blocks[layer]
        if point in ("resid_pre", "resid_post"):
            return block
        return self.modules.mlp(block) if point == "mlp_out" else self.modules.projection(block)

    @staticmethod
    def _input_of(args: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.Tensor:
        return args[0] if args else kwargs["hidden_states"]

    def activations(self, token_ids: list[int]) -> dict[tuple[str, int], torch.Tensor]:
        """Every point's activation of one input: [tokens, hidden] ([tokens, heads * head_dim]
        for the head points: the output projection's input)."""
        stored: dict[tuple[str, int], torch.Tensor] = {}
        handles = []
        for layer, block in enumerate(self.blocks):
            def pre(_m: Any, args: tuple, kwargs: dict, layer: int = layer) -> None:
                stored[("resid_pre", layer)] = self._input_of(args, kwargs)[0].clone()

            def post(_m: Any, _a: tuple, output: Any, layer: int = layer) -> None:
                stored[("resid_post", layer)] = _hidden(output)[0].clone()

            def attn(_m: Any, args: tuple, output: Any, layer: int = layer) -> None:
                stored[("attn_out", layer)] = output[0].clone()
                stored[("head", layer)] = args[0][0].clone()

            def mlp(_m: Any, _a: tuple, output: Any, layer: int = layer) -> None:
                stored[("mlp_out", layer)] = _hidden(output)[0].clone()

            handles += [block.register_forward_pre_hook(pre, with_kwargs=True), block.register_forward_hook(post),
                        self.modules.projection(block).register_forward_hook(attn),
                        self.modules.mlp(block).register_forward_hook(mlp)]
        try:
            self.outputs(token_ids)
        finally:
            for handle in handles:
                handle.remove()
        stored.update({("head_position", layer): value for (point, layer), value in list(stored.items())
                       if point == "head"})
        return stored

    def outputs(self, token_ids: list[int]) -> torch.Tensor:
        """Logits [tokens, vocab], class logits [classes] or last hidden states [tokens, hidden]."""
        arguments = {"input_ids": torch.tensor([token_ids]), "attention_mask": torch.ones(1, len(token_ids),
                                                                                          dtype=torch.long)}
        with torch.no_grad():
            output = self.model(**arguments)
        return (output.logits if hasattr(output, "logits") else output.last_hidden_state)[0]

    def patched(self, token_ids: list[int], point: str, layer: int, head: int | None,
                moves: list[tuple[int, int]], source: dict[tuple[str, int], torch.Tensor]) -> torch.Tensor:
        """The outputs with `point` of `layer` replaced at the moves' (patched, source) positions."""
        targets, sources = [t for t, _ in moves], [s for _, s in moves]
        value = source[(point, layer)][sources]
        module = self._module(point, layer)

        def replaced(hidden: torch.Tensor) -> torch.Tensor:
            hidden = hidden.clone()
            if head is None:
                hidden[0, targets] = value
            else:
                width = hidden.shape[-1] // self.heads
                part = slice(head * width, (head + 1) * width)
                hidden[0, targets, part] = value[:, part]
            return hidden

        if point == "resid_pre":
            def pre(_m: Any, args: tuple, kwargs: dict) -> Any:
                if args:
                    return (replaced(args[0]), *args[1:]), kwargs
                return args, {**kwargs, "hidden_states": replaced(kwargs["hidden_states"])}

            handle = module.register_forward_pre_hook(pre, with_kwargs=True)
        elif head is not None:
            handle = module.register_forward_pre_hook(lambda _m, args: (replaced(args[0]), *args[1:]))
        else:
            handle = module.register_forward_hook(
                lambda _m, _a, output: _with_hidden(output, replaced(_hidden(output))))
        try:
            return self.outputs(token_ids)
        finally:
            handle.remove()


@dataclass(frozen=True)
class Metric:
    """The reference metric: kind "next_token", "logit_difference", "kl", "class" or "norm"."""

    kind: str
    position: int = -1  # clean position (causal)
    token: int = 0
    contrast: int = 0

    def score(self, outputs: torch.Tensor, position: int, clean_outputs: torch.Tensor, clean_position: int) -> float:
        """The metric of outputs whose target sits at `position`."""
        if self.kind == "class":
            return float(outputs[self.token])
        if self.kind == "norm":
            return float(outputs.mean(dim=0).norm())
        logits = outputs[position]
        if self.kind == "next_token":
            return float(torch.log_softmax(logits, -1)[self.token])
        if self.kind == "logit_difference":
            return float(logits[self.token] - logits[self.contrast])
        clean = torch.log_softmax(clean_outputs[clean_position], -1)
        return float((clean.exp() * (clean - torch.log_softmax(logits, -1))).sum())


def naive_loop(reference: Reference, clean: list[int], corrupted: list[int], alignment: list[int], metric: Metric,
               direction: str, point: str, layer: int, positions: list[int], heads: list[int]) -> np.ndarray:
    """The expected values of one (point, layer), one reference forward per patch."""
    denoising = direction == "denoising"
    patched, source = (corrupted, clean) if denoising else (clean, corrupted)
    activations = reference.activations(source)
    clean_outputs = reference.outputs(clean)
    clean_position = metric.position % len(clean)
    position = alignment[clean_position] if denoising else clean_position
    pairs = {p: ((q, p) if denoising else (p, q)) for p, q in enumerate(alignment) if q >= 0}

    def value(head: int | None, moves: list[tuple[int, int]]) -> float:
        outputs = reference.patched(patched, point, layer, head, moves, activations)
        return metric.score(outputs, position, clean_outputs, clean_position)

    if point == "head":
        return np.array([value(head, list(pairs.values())) for head in heads])
    if point == "head_position":
        return np.array([[value(head, [pairs[p]]) for p in positions] for head in heads])
    return np.array([value(None, [pairs[p]]) for p in positions])


def check_against_naive_loop(answer: Answer, reference: Reference,
                             pairs: list[tuple[list[int], list[int], list[int]]], metric: Metric, direction: str,
                             points: tuple[str, ...], layers: list[int]) -> None:
    """Every (point, layer) of every pair against the naive loop, the baselines against
    the unpatched reference runs and the normalized values against the baseline."""
    for index, (clean, corrupted, alignment) in enumerate(pairs):
        alignment = alignment or list(range(len(clean)))
        baseline = answer.baselines[index]
        clean_outputs = reference.outputs(clean)
        clean_position = metric.position % len(clean)
        assert baseline.clean_score == pytest.approx(metric.score(clean_outputs, clean_position, clean_outputs,
                                                                  clean_position), abs=TOLERANCE)
        assert baseline.corrupted_score == pytest.approx(metric.score(
            reference.outputs(corrupted), alignment[clean_position], clean_outputs, clean_position), abs=TOLERANCE)
        for point in points:
            for layer in layers:
                result = answer.layers[(index, point, layer)]
                positions = [] if point == "head" else [p for p in range(len(clean)) if alignment[p] >= 0]
                heads = list(range(reference.heads)) if point in ("head", "head_position") else []
                assert (result.positions, result.heads) == (positions, heads)
                expected = naive_loop(reference, clean, corrupted, alignment, metric, direction, point, layer,
                                      positions, heads)
                np.testing.assert_allclose(result.values, expected, rtol=0, atol=TOLERANCE,
                                           err_msg=f"{point} layer {layer} pair {index}")
                if metric.kind == "kl":
                    assert result.normalized is None
                else:
                    span = baseline.clean_score - baseline.corrupted_score
                    np.testing.assert_allclose(result.normalized, (result.values - baseline.corrupted_score) / span,
                                               rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------
# Fixtures


MODULE_MODELS = ("qwen2", "mistral")  # built here, served by this module's server


@pytest.fixture(scope="module")
def module_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("patching-models")
    return {name: build_tiny_model(CASES_BY_TYPE[name], root, minilm_tokenizer()) for name in MODULE_MODELS}


@pytest.fixture(scope="module")
def qwen2_address(module_dirs: dict[str, Path]) -> Iterator[str]:
    running = InProcessServer(*(f"--model={name}={path}" for name, path in module_dirs.items()))
    yield running.address
    assert running.stop() == 0


@pytest.fixture(scope="module")
def references(model_dirs: dict[str, Path], module_dirs: dict[str, Path]) -> dict[str, Reference]:
    from transformers import AutoModelForCausalLM

    models = {name: reference_model(model_dirs, name) for name in ("gpt2", "llama", "minilm", "classifier")}
    for name, path in module_dirs.items():
        models[name] = AutoModelForCausalLM.from_pretrained(path, attn_implementation="eager").eval()
    return {name: Reference(model, name) for name, model in models.items()}


def served(name: str, address: str, qwen2_address: str) -> str:
    return qwen2_address if name in MODULE_MODELS else address


# ---------------------------------------------------------------------------------------
# Every point, both directions, against the naive loop

CAUSAL_CASES = {
    "gpt2": (targets.next_token(token_id=2154), Metric("next_token", token=2154)),
    "llama": (targets.logit_difference(2154, 1037), Metric("logit_difference", token=2154, contrast=1037)),
    # a position before the end: the server cuts the patched run after it
    "qwen2": (targets.next_token(position=-3, token_id=1037), Metric("next_token", position=-3, token=1037)),
    # a sliding window of 4 tokens: the suffixes' masks come from the recorded prefix (prefix.py)
    "mistral": (targets.next_token(token_id=2154), Metric("next_token", token=2154)),
}


@pytest.mark.parametrize("direction", ["denoising", "noising"])
@pytest.mark.parametrize("name", sorted(CAUSAL_CASES))
def test_every_point_matches_the_naive_loop(address: str, qwen2_address: str, references: dict[str, Reference],
                                            name: str, direction: str) -> None:
    target, metric = CAUSAL_CASES[name]
    pairs = [(CLEAN, CORRUPTED, [])]
    answer = call(served(name, address, qwen2_address), request(name, pairs, target, direction=direction))
    layers = list(range(len(references[name].blocks)))
    check_against_naive_loop(answer, references[name], pairs, metric, direction, POINTS, layers)
    # one message per (point, layer), in layer order
    assert [layer for _, _, layer in answer.order] == sorted(layer for _, _, layer in answer.order)
    assert len(answer.order) == len(POINTS) * len(layers)


def test_kl_divergence_matches_the_naive_loop(address: str, references: dict[str, Reference]) -> None:
    pairs = [(CLEAN, CORRUPTED, [])]
    answer = call(address, request("gpt2", pairs, None, points=("resid_pre", "mlp_out", "head"),
                                   direction="noising", metric=pb.PATCHING_METRIC_KL_DIVERGENCE))
    assert answer.baselines[0].clean_score == 0 and answer.baselines[0].corrupted_score > 0
    check_against_naive_loop(answer, references["gpt2"], pairs, Metric("kl"), "noising",
                             ("resid_pre", "mlp_out", "head"), [0, 1, 2])


@pytest.mark.parametrize("direction", ["denoising", "noising"])
def test_aligned_pairs_of_different_lengths(address: str, references: dict[str, Reference], direction: str) -> None:
    corrupted = [101, 2023, 2000, 4937, 2003, 1037, 1037, 2919, 2154]
    alignment = [0, 1, 3, 4, 5, -1, 8]  # clean position 5 has no counterpart
    pairs = [(CLEAN, corrupted, alignment)]
    points = ("resid_pre", "attn_out", "head", "head_position")
    answer = call(address, request("gpt2", pairs, targets.next_token(token_id=2154), points=points,
                                   direction=direction, layers=[0, 2]))
    check_against_naive_loop(answer, references["gpt2"], pairs, Metric("next_token", token=2154), direction,
                             points, [0, 2])
    assert 5 not in answer.layers[(0, "resid_pre", 0)].positions


ENCODER_CASES = {
    "classifier": (targets.class_score(class_index=1), Metric("class", token=1), [0, 1]),
    "minilm": (targets.embedding_norm(), Metric("norm"), [0, 5]),
}


@pytest.mark.parametrize("name", sorted(ENCODER_CASES))
def test_encoders_match_the_naive_loop(address: str, references: dict[str, Reference], name: str) -> None:
    target, metric, layers = ENCODER_CASES[name]
    clean, corrupted = [101, 2023, 3185, 2003, 2204, 102], [101, 2023, 4937, 2003, 2919, 102]
    pairs = [(clean, corrupted, [])]
    answer = call(address, request(name, pairs, target, layers=layers))
    check_against_naive_loop(answer, references[name], pairs, metric, "denoising", POINTS, layers)


# ---------------------------------------------------------------------------------------
# Properties that hold whatever the weights


def test_the_last_residual_at_the_target_carries_the_whole_run(address: str) -> None:
    """resid_post of the last layer at the target position is all the logits there depend
    on: denoising it gives the clean score, noising it the corrupted one; and at layer 0,
    resid_pre where the two inputs have the same token changes nothing."""
    pairs = [(CLEAN, CORRUPTED, [])]
    target = targets.next_token(token_id=2154)
    for direction, expected in (("denoising", "clean_score"), ("noising", "corrupted_score")):
        answer = call(address, request("gpt2", pairs, target, points=("resid_post", "resid_pre"),
                                       direction=direction))
        baseline = answer.baselines[0]
        last = answer.layers[(0, "resid_post", 2)]
        assert last.values[-1] == pytest.approx(getattr(baseline, expected), abs=1e-5)
        unchanged = baseline.corrupted_score if direction == "denoising" else baseline.clean_score
        first = answer.layers[(0, "resid_pre", 0)]
        same = [index for index, (a, b) in enumerate(zip(CLEAN, CORRUPTED)) if a == b]
        np.testing.assert_allclose(first.values[same], unchanged, rtol=0, atol=1e-5)
        assert np.abs(first.values[[2, 5]] - unchanged).max() > 1e-3
        if direction == "denoising":
            assert last.normalized[-1] == pytest.approx(1.0, abs=1e-4)


def test_means_over_pairs_are_the_means_of_the_pairs(address: str) -> None:
    second = [101, 2000, 3185, 2003, 4937, 2204, 2154]
    answer = call(address, request("gpt2", [(CLEAN, CORRUPTED, []), (second, CORRUPTED, [])],
                                   targets.next_token(token_id=2154), points=("resid_pre", "head")))
    for point in ("resid_pre", "head"):
        for layer in range(3):
            pairs = [answer.layers[(index, point, layer)] for index in (0, 1)]
            mean = answer.layers[(-1, point, layer)]
            np.testing.assert_allclose(mean.values, np.mean([pair.values for pair in pairs], axis=0), rtol=1e-6)
            np.testing.assert_allclose(mean.normalized, np.mean([pair.normalized for pair in pairs], axis=0),
                                       rtol=1e-6)


def test_one_row_per_forward_and_automatic_batches_agree(address: str) -> None:
    pairs = [(CLEAN, CORRUPTED, [])]
    answers = [call(address, request("llama", pairs, targets.next_token(token_id=2154), batch_size=size))
               for size in (1, 0, 5)]
    for key, layer in answers[0].layers.items():
        for other in answers[1:]:
            np.testing.assert_allclose(other.layers[key].values, layer.values, rtol=0, atol=1e-6)


@pytest.mark.parametrize("growth", ["none", "layer_input"])
def test_every_way_of_growing_the_batch_gives_the_same_values(model_dirs: dict[str, Path], growth: str) -> None:
    """The same patches with the rows joining at resid.pre only, or running from the start."""
    from introspect.config import ModelSpec
    from introspect.models import load_model
    from introspect.requests import InputPairSpec, InputSpec, PatchingQuery, TargetSpec

    model = load_model(ModelSpec("gpt2", model_dirs["gpt2"]), torch.device("cpu"), "float32")
    assert model.hooks.growth == "projection"
    query = PatchingQuery(model="gpt2", pairs=(InputPairSpec(InputSpec(token_ids=tuple(CLEAN)),
                                                             InputSpec(token_ids=tuple(CORRUPTED))),),
                          target=TargetSpec("next_token", token_id=2154), points=POINTS)

    results = {}
    for mode in ("projection", growth):
        model.hooks.growth = mode
        results[mode] = patching_layers(model, query)
    for grown, other in zip(results["projection"], results[growth], strict=True):
        assert (grown.point, grown.layer) == (other.point, other.layer)
        np.testing.assert_allclose(other.values.values, grown.values.values, rtol=0, atol=1e-5)


# ---------------------------------------------------------------------------------------
# Refusals


@pytest.mark.parametrize(
    ("model", "pairs", "target", "options", "field"),
    [
        ("gpt2", [(CLEAN, CLEAN[:-1], [])], targets.next_token(), {}, "pairs[0].corrupted"),
        ("gpt2", [(CLEAN, CLEAN[:-1], [0, 1, 2])], targets.next_token(), {}, "pairs[0].alignment"),
        ("gpt2", [(CLEAN, CORRUPTED, [])], targets.next_token(), {"positions": [7]}, "positions"),
        ("gpt2", [(CLEAN, CORRUPTED, [])], targets.next_token(), {"layers": [3]}, "layers"),
        ("gpt2", [(CLEAN, None, [])], targets.next_token(), {}, "pairs[0].corrupted"),
        ("minilm", [(CLEAN, CORRUPTED, [])], targets.logit_difference(1, 2), {}, "target"),
        ("minilm", [(CLEAN, CORRUPTED, [])], None, {"metric": pb.PATCHING_METRIC_KL_DIVERGENCE}, "metric"),
    ],
)
def test_bad_requests_are_refused_naming_the_field(address: str, model: str, pairs: list, target: pb.Target | None,
                                                   options: dict[str, Any], field: str) -> None:
    assert refused_field(address, request(model, pairs, target, **options)) == field
