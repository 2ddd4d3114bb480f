"""Attribution patching (StreamPatching, method ATTRIBUTION) through a real server.

Every estimate is checked against the same first-order term computed independently:
the plain transformers model (eager attention, float32) with a hook that substitutes
the activation at one (point, layer), and torch.func.jvp of the metric as a function of
that activation at the patched run's own activation, in the direction of the source
run's activation minus the patched run's, restricted to the spot (one position, one
head or one head at every position). Estimated change = served value - the patched
run's baseline; both agree within 1e-5. with_exact is checked against a naive exact
loop (one plain forward per patch), the correlation recomputed with numpy.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch
from architectures import CASES, build_tiny_model, minilm_tokenizer
from conftest import InProcessServer, reference_model, session_models
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from introspect_contract import introspect_pb2 as pb
from introspect_contract import introspect_pb2_grpc as pb_grpc
from introspect_contract.enums import PATCH_DIRECTION, PATCH_POINT, PATCHING_METHOD, PATCHING_METRIC
from introspect_contract.tensors import decode_tensor

TOLERANCE = 1e-5
CLEAN = (101, 2023, 2003, 1037, 3231, 1997, 102)
CORRUPTED = (101, 2023, 2003, 1996, 3231, 2151, 102)
ALL_POINTS = ("resid_pre", "resid_post", "attn_out", "mlp_out", "head", "head_position")
TOKEN, CONTRAST = 2944, 1996
Spot = tuple[str, int, tuple[int, ...]]  # (point, layer, index into the result's values)


# ----------------------------------------------------------------------------------------
# The server and its stream


@pytest.fixture(scope="module")
def dirs(model_dirs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The session's models and a tiny Qwen2."""
    qwen2 = next(case for case in CASES if case.model_type == "qwen2")
    return {**model_dirs, "qwen2": build_tiny_model(qwen2, tmp_path_factory.mktemp("qwen2"), minilm_tokenizer())}


@pytest.fixture(scope="module")
def stub(dirs: dict[str, Path]) -> Iterator[pb_grpc.IntrospectionStub]:
    """A stub of an uncached server serving the session's models and Qwen2."""
    session = {name: path for name, path in dirs.items() if name != "qwen2"}
    running = InProcessServer("--cache-bytes=0", *session_models(session), f"--model=qwen2={dirs['qwen2']}")
    channel = grpc.insecure_channel(running.address)
    yield pb_grpc.IntrospectionStub(channel)
    channel.close()
    assert running.stop() == 0


@dataclass
class Stream:
    """One StreamPatching answer: the baseline and the results by (method, point, layer)."""

    clean_score: float
    corrupted_score: float
    layers: dict[tuple[str, str, int], pb.PatchingLayer]
    correlations: dict[str, pb.PatchingCorrelation]

    def values(self, method: str, point: str, layer: int) -> np.ndarray:
        """The values of one result."""
        return decode_tensor(self.layers[(method, point, layer)].values)


def patching(stub: pb_grpc.IntrospectionStub, model: str, target: pb.Target | None, *, metric: str = "target",
             direction: str = "denoising", points: tuple[str, ...] = ALL_POINTS, with_exact: bool = False,
             pairs: list[pb.InputPair] | None = None) -> Stream:
    """Runs attribution patching of (CLEAN, CORRUPTED) unless `pairs` is given."""
    request = pb.StreamPatchingRequest(
        model=model, method=PATCHING_METHOD.number("attribution"), metric=PATCHING_METRIC.number(metric),
        direction=PATCH_DIRECTION.number(direction), points=[PATCH_POINT.number(point) for point in points],
        with_exact=with_exact, pairs=pairs or [input_pair(CLEAN, CORRUPTED)],
    )
    if target is not None:
        request.target.CopyFrom(target)
    stream = Stream(0.0, 0.0, {}, {})
    for message in stub.StreamPatching(request):
        kind = message.WhichOneof("payload")
        if kind == "baseline":
            stream.clean_score, stream.corrupted_score = message.baseline.clean_score, message.baseline.corrupted_score
        elif kind == "layer":
            layer = message.layer
            key = (PATCHING_METHOD.name_of(layer.method), PATCH_POINT.name_of(layer.point), layer.layer)
            stream.layers[key] = layer
        elif kind == "correlation":
            stream.correlations[PATCH_POINT.name_of(message.correlation.point)] = message.correlation
    return stream


def input_pair(clean: tuple[int, ...], corrupted: tuple[int, ...] | None,
               alignment: tuple[int, ...] = ()) -> pb.InputPair:
    """An InputPair of token ids."""
    pair = pb.InputPair(clean=pb.Input(token_ids=pb.TokenIds(ids=clean)), alignment=alignment)
    if corrupted is not None:
        pair.corrupted.CopyFrom(pb.Input(token_ids=pb.TokenIds(ids=corrupted)))
    return pair


def next_token(token: int = TOKEN) -> pb.Target:
    return pb.Target(next_token=pb.NextTokenTarget(token_id=token))


def logit_difference() -> pb.Target:
    return pb.Target(logit_difference=pb.LogitDifferenceTarget(token_id=TOKEN, contrast_token_id=CONTRAST))


# ----------------------------------------------------------------------------------------
# The independent reference: plain transformers with one substituting hook


def blocks(model: torch.nn.Module) -> torch.nn.ModuleList:
    """The transformer blocks of the reference models."""
    for path in ("transformer.h", "model.layers", "encoder.layer", "bert.encoder.layer"):
        found: object = model
        for name in path.split("."):
            found = getattr(found, name, None)
        if isinstance(found, torch.nn.ModuleList):
            return found
    raise AssertionError(f"no blocks in {type(model).__name__}")


def projection(block: torch.nn.Module) -> torch.nn.Module:
    """The attention output projection of a block."""
    if hasattr(block, "attn"):
        return block.attn.c_proj
    if hasattr(block, "self_attn"):
        return block.self_attn.o_proj
    return block.attention.output.dense


@dataclass(frozen=True)
class Reference:
    """A plain transformers model whose activation at one (point, layer) can be replaced.
    Activations: [1, positions, d_model], or [1, positions, heads, head_dim] for heads."""

    model: torch.nn.Module
    heads: int

    def outputs(self, ids: tuple[int, ...], point: str, layer: int,
                replace: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """The model's outputs [1, positions, vocab | hidden] or [1, classes] with the
        activation at (point, layer) replaced by replace(activation)."""
        block = blocks(self.model)[layer]
        if point == "resid_pre":
            def pre(_: torch.nn.Module, args: tuple, kwargs: dict) -> tuple:
                if args:
                    return (replace(args[0]), *args[1:]), kwargs
                return args, {**kwargs, "hidden_states": replace(kwargs["hidden_states"])}
            handle = block.register_forward_pre_hook(pre, with_kwargs=True)
        elif point in ("head", "head_position"):
            def per_head(_: torch.nn.Module, args: tuple) -> tuple:
                merged = args[0]  # [1, positions, heads * head_dim]
                split = merged.reshape(*merged.shape[:2], self.heads, -1)
                return (replace(split).reshape(merged.shape), *args[1:])
            handle = projection(block).register_forward_pre_hook(per_head)
        else:
            module = {"resid_post": block, "attn_out": projection(block), "mlp_out": getattr(block, "mlp", None)}[point]

            def post(_: torch.nn.Module, args: tuple, output: object) -> object:
                if isinstance(output, torch.Tensor):
                    return replace(output)
                return (replace(output[0]), *output[1:])
            handle = module.register_forward_hook(post)
        try:
            output = self.model(input_ids=torch.tensor([ids]), **({"use_cache": False} if self.causal else {}))
        finally:
            handle.remove()
        return output.logits if hasattr(output, "logits") else output.last_hidden_state

    @property
    def causal(self) -> bool:
        """Whether the model is a causal LM (given use_cache=False)."""
        return type(self.model).__name__.endswith(("ForCausalLM", "LMHeadModel"))

    def activation(self, ids: tuple[int, ...], point: str, layer: int) -> torch.Tensor:
        """The unpatched activation at (point, layer)."""
        seen: list[torch.Tensor] = []

        def keep(value: torch.Tensor) -> torch.Tensor:
            seen.append(value.detach().clone())
            return value

        with torch.no_grad():
            self.outputs(ids, point, layer, keep)
        return seen[0]


def metric_of(reference: Reference, kind: str, clean: tuple[int, ...]) -> Callable[[torch.Tensor], torch.Tensor]:
    """The metric of outputs, written out: log p(TOKEN), logit(TOKEN) - logit(CONTRAST),
    KL(clean || patched) at the last position, the pooled embedding's norm, class 1's logit."""
    if kind == "next_token":
        return lambda outputs: torch.log_softmax(outputs[0, -1], dim=-1)[TOKEN]
    if kind == "logit_difference":
        return lambda outputs: outputs[0, -1, TOKEN] - outputs[0, -1, CONTRAST]
    if kind == "kl_divergence":
        with torch.no_grad():
            clean_log = torch.log_softmax(reference.outputs(clean, "resid_pre", 0, lambda value: value)[0, -1], dim=-1)
        return lambda outputs: (clean_log.exp() * (clean_log - torch.log_softmax(outputs[0, -1], dim=-1))).sum()
    if kind == "embedding_norm":
        return lambda outputs: outputs[0].mean(dim=0).norm()
    assert kind == "class_score"
    return lambda outputs: outputs[0, 1]


@dataclass(frozen=True)
class PatchCase:
    """One pair, one direction: the runs and the alignment of clean positions."""

    clean: tuple[int, ...]
    corrupted: tuple[int, ...]
    alignment: tuple[int, ...]  # per clean position, the corrupted one (-1: none)
    direction: str

    @property
    def patched(self) -> tuple[int, ...]:
        return self.corrupted if self.direction == "denoising" else self.clean

    @property
    def source(self) -> tuple[int, ...]:
        return self.clean if self.direction == "denoising" else self.corrupted

    def sides(self, position: int) -> tuple[int, int] | None:
        """(source position, patched position) of a clean position; None without counterpart."""
        other = self.alignment[position]
        if other < 0:
            return None
        return (position, other) if self.direction == "denoising" else (other, position)


def spot_direction(case: PatchCase, point: str, spot: tuple[int, ...], source: torch.Tensor,
                   patched: torch.Tensor) -> torch.Tensor:
    """The patch of one spot as a direction: source - patched on the spot, 0 elsewhere."""
    direction = torch.zeros_like(patched)
    if point == "head":
        (head,) = spot
        clean_positions = range(len(case.alignment))
    elif point == "head_position":
        head, position = spot
        clean_positions = [position]
    else:
        clean_positions = [spot[0]]
    for position in clean_positions:
        sides = case.sides(position)
        if sides is None:
            continue
        at_source, at_patched = sides
        if point in ("head", "head_position"):
            direction[0, at_patched, head] = source[0, at_source, head] - patched[0, at_patched, head]
        else:
            direction[0, at_patched] = source[0, at_source] - patched[0, at_patched]
    return direction


def spots(point: str, layers: int, heads: int, positions: int) -> Iterator[tuple[int, tuple[int, ...]]]:
    """(layer, index) of every spot of a point, index into the result's values."""
    for layer in range(layers):
        if point == "head":
            yield from ((layer, (head,)) for head in range(heads))
        elif point == "head_position":
            yield from ((layer, (head, position)) for head in range(heads) for position in range(positions))
        else:
            yield from ((layer, (position,)) for position in range(positions))


def first_order(reference: Reference, case: PatchCase, metric: Callable[[torch.Tensor], torch.Tensor],
                point: str, layer: int, spot: tuple[int, ...]) -> float:
    """d metric(patched run with activation x) / dx at x = its own activation, applied to
    the spot's patch: a forward-mode Jacobian-vector product."""
    source = reference.activation(case.source, point, layer)
    patched = reference.activation(case.patched, point, layer)
    direction = spot_direction(case, point, spot, source, patched)

    def patched_metric(activation: torch.Tensor) -> torch.Tensor:
        return metric(reference.outputs(case.patched, point, layer, lambda _: activation))

    _, tangent = torch.func.jvp(patched_metric, (patched,), (direction,))
    return float(tangent.detach())


def exact(reference: Reference, case: PatchCase, metric: Callable[[torch.Tensor], torch.Tensor],
          point: str, layer: int, spot: tuple[int, ...]) -> float:
    """The metric of the patched run with the spot patched, by one plain forward."""
    source = reference.activation(case.source, point, layer)
    patched = reference.activation(case.patched, point, layer)
    replacement = patched + spot_direction(case, point, spot, source, patched)
    with torch.no_grad():
        return float(metric(reference.outputs(case.patched, point, layer, lambda _: replacement)))


def reference_of(dirs: dict[str, Path], name: str) -> Reference:
    model = reference_model(dirs, name)
    return Reference(model, model.config.num_attention_heads)


def check_against_first_order(stream: Stream, reference: Reference, case: PatchCase, kind: str,
                              points: tuple[str, ...]) -> float:
    """Every served estimate minus the patched run's baseline equals the JVP within
    1e-5, or within 1e-3 of the largest JVP when that is smaller (the KL of tiny random
    models is itself ~1e-4), but not below 1e-7 (float32 rounding); positions without a counterpart are NaN. Returns the
    largest |JVP|."""
    metric = metric_of(reference, kind, case.clean)
    baseline = stream.corrupted_score if case.direction == "denoising" else stream.clean_score
    config = reference.model.config
    compared = []
    for point in points:
        for layer, spot in spots(point, config.num_hidden_layers, reference.heads, len(case.clean)):
            served = float(stream.values("attribution", point, layer)[spot]) - baseline
            if point != "head" and case.sides(spot[-1]) is None:
                assert np.isnan(served), (point, layer, spot)
                continue
            compared.append((point, layer, spot, served, first_order(reference, case, metric, point, layer, spot)))
    largest = max(abs(expected) for *_, expected in compared)
    tolerance = min(TOLERANCE, max(1e-3 * largest, 1e-7))
    for point, layer, spot, served, expected in compared:
        assert abs(served - expected) <= tolerance, (point, layer, spot, served, expected, tolerance)
    return largest


# ----------------------------------------------------------------------------------------
# Tests


@pytest.mark.parametrize(("name", "kind", "direction"), [
    # each model with both targets and both directions, each target and direction on every model
    ("gpt2", "next_token", "denoising"), ("gpt2", "logit_difference", "noising"),
    ("llama", "logit_difference", "denoising"), ("llama", "next_token", "noising"),
    ("qwen2", "next_token", "denoising"), ("qwen2", "logit_difference", "noising"),
])
def test_target_estimates_are_the_first_order_term_at_every_point(
    stub: pb_grpc.IntrospectionStub, dirs: dict[str, Path], name: str, kind: str, direction: str
) -> None:
    target = next_token() if kind == "next_token" else logit_difference()
    stream = patching(stub, name, target, direction=direction)
    case = PatchCase(CLEAN, CORRUPTED, tuple(range(len(CLEAN))), direction)
    reference = reference_of(dirs, name)
    check_against_first_order(stream, reference, case, kind, ALL_POINTS)
    span = stream.clean_score - stream.corrupted_score
    for (method, point, layer), result in stream.layers.items():
        values = decode_tensor(result.values)
        np.testing.assert_allclose(decode_tensor(result.normalized), (values - stream.corrupted_score) / span,
                                   rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        metric = metric_of(reference, kind, CLEAN)
        scores = [float(metric(reference.outputs(ids, "resid_pre", 0, lambda value: value))) for ids in (CLEAN, CORRUPTED)]
    assert abs(stream.clean_score - scores[0]) <= TOLERANCE and abs(stream.corrupted_score - scores[1]) <= TOLERANCE


@pytest.mark.parametrize("name", ["gpt2", "llama", "qwen2"])
def test_kl_denoising_follows_the_gradient_and_kl_noising_estimates_nothing(
    stub: pb_grpc.IntrospectionStub, dirs: dict[str, Path], name: str
) -> None:
    reference = reference_of(dirs, name)
    points = ("resid_pre", "head")
    denoising = patching(stub, name, None, metric="kl_divergence", direction="denoising", points=points)
    largest = check_against_first_order(denoising, reference, PatchCase(CLEAN, CORRUPTED, tuple(range(7)),
                                                                        "denoising"), "kl_divergence", points)
    # a gradient worth the name: KL(clean || corrupted) is not at a minimum
    assert largest > 0.05 * denoising.corrupted_score > 0
    noising = patching(stub, name, None, metric="kl_divergence", direction="noising", points=points)
    check_against_first_order(noising, reference, PatchCase(CLEAN, CORRUPTED, tuple(range(7)), "noising"),
                              "kl_divergence", points)
    for (_, point, layer), result in noising.layers.items():
        np.testing.assert_allclose(decode_tensor(result.values), noising.clean_score, atol=TOLERANCE, rtol=0)
        assert not result.HasField("normalized")


@pytest.mark.parametrize("direction", ["denoising", "noising"])
def test_aligned_pairs_of_different_lengths(stub: pb_grpc.IntrospectionStub, dirs: dict[str, Path],
                                            direction: str) -> None:
    corrupted = (101, 2023, 2003, 2200, 1996, 3231, 2151, 102)  # one token more
    alignment = (0, 1, 2, -1, 5, 6, 7)  # clean position 3 has no counterpart
    stream = patching(stub, "gpt2", next_token(), direction=direction, pairs=[input_pair(CLEAN, corrupted, alignment)])
    case = PatchCase(CLEAN, corrupted, alignment, direction)
    check_against_first_order(stream, reference_of(dirs, "gpt2"), case, "next_token", ALL_POINTS)


@pytest.mark.parametrize(("name", "target", "kind"), [
    ("minilm", pb.Target(embedding_norm=pb.EmbeddingNormTarget()), "embedding_norm"),
    ("classifier", pb.Target(class_score=pb.ClassTarget(class_index=1)), "class_score"),
])
def test_encoders_and_classifiers(stub: pb_grpc.IntrospectionStub, dirs: dict[str, Path], name: str,
                                  target: pb.Target, kind: str) -> None:
    points = ("resid_pre", "head")
    for direction in ("denoising", "noising"):
        stream = patching(stub, name, target, direction=direction, points=points)
        check_against_first_order(stream, reference_of(dirs, name), PatchCase(CLEAN, CORRUPTED, tuple(range(7)),
                                                                                direction), kind, points)


def naive_exact_technique(dirs: dict[str, Path]):  # type: ignore[no-untyped-def]
    """A stand-in "activation" technique: the naive exact loop, one plain forward per patch."""
    from introspect.methods.patching import PatchingTechnique, float_array
    from introspect.results import PatchingLayerResult

    def run(model, options, pair, check):  # type: ignore[no-untyped-def]
        reference = reference_of(dirs, model.name)
        clean = tuple(pair.clean.inputs[0].token_ids)
        case = PatchCase(clean, tuple(pair.corrupted.inputs[0].token_ids), pair.alignment, options.direction)
        metric = metric_of(reference, "next_token", clean)
        layers = reference.model.config.num_hidden_layers
        for point in options.points:
            for layer in options.layers:
                indices = [spot for spot_layer, spot in spots(point, layers, reference.heads, len(clean))
                           if spot_layer == layer]
                values = torch.tensor([exact(reference, case, metric, point, layer, spot) for spot in indices])
                shape = (reference.heads, len(clean)) if point == "head_position" else (-1,)
                yield PatchingLayerResult(pair.index, "activation", point, layer, () if point == "head" else
                                          pair.positions, tuple(range(reference.heads)) if "head" in point else (),
                                          float_array(values.reshape(shape)), None)

    return PatchingTechnique("activation", lambda description, query: None, run)


def check_exact_and_correlations(stream: Stream, dirs: dict[str, Path], name: str, direction: str,
                                 points: tuple[str, ...]) -> None:
    """The exact values equal the naive loop's; each correlation is numpy's over the two."""
    reference = reference_of(dirs, name)
    case = PatchCase(CLEAN, CORRUPTED, tuple(range(len(CLEAN))), direction)
    metric = metric_of(reference, "next_token", CLEAN)
    baseline = stream.corrupted_score if direction == "denoising" else stream.clean_score
    for point in points:
        ours, theirs = [], []
        for layer, spot in spots(point, reference.model.config.num_hidden_layers, reference.heads, len(CLEAN)):
            expected = exact(reference, case, metric, point, layer, spot)
            assert abs(float(stream.values("activation", point, layer)[spot]) - expected) <= TOLERANCE
            ours.append(float(stream.values("attribution", point, layer)[spot]) - baseline)
            theirs.append(expected - baseline)
        correlation = stream.correlations[point]
        assert correlation.pearson == pytest.approx(np.corrcoef(ours, theirs)[0, 1], abs=1e-4)
        assert correlation.max_abs_difference == pytest.approx(np.max(np.abs(np.subtract(ours, theirs))), abs=1e-5)


@pytest.mark.parametrize("direction", ["denoising", "noising"])
def test_with_exact_pairs_each_estimate_with_the_exact_patch(
    stub: pb_grpc.IntrospectionStub, dirs: dict[str, Path], monkeypatch: pytest.MonkeyPatch, direction: str
) -> None:
    from introspect.methods.patching import TECHNIQUES

    monkeypatch.setitem(TECHNIQUES, "activation", naive_exact_technique(dirs))
    points = ("resid_pre", "attn_out", "head")
    stream = patching(stub, "gpt2", next_token(), direction=direction, points=points, with_exact=True)
    assert set(stream.correlations) == set(points)
    check_exact_and_correlations(stream, dirs, "gpt2", direction, points)


def test_with_exact_uses_the_served_activation_patching(stub: pb_grpc.IntrospectionStub,
                                                        dirs: dict[str, Path]) -> None:
    points = ("resid_pre", "mlp_out", "head", "head_position")
    try:
        stream = patching(stub, "llama", next_token(), points=points, with_exact=True)
    except grpc.RpcError as error:
        if error.code() == grpc.StatusCode.UNIMPLEMENTED:
            pytest.skip("exact activation patching is not served yet (methods/patching_activation.py)")
        raise
    check_exact_and_correlations(stream, dirs, "llama", "denoising", points)


def field_of(error: grpc.RpcError) -> str:
    """The field a google.rpc.BadRequest names."""
    status = rpc_status.from_call(error)
    assert status is not None
    for detail in status.details:
        violations = error_details_pb2.BadRequest()
        if detail.Unpack(violations):
            return violations.field_violations[0].field
    raise AssertionError(f"no BadRequest in {status}")


@pytest.mark.parametrize(("model", "metric", "target", "pairs", "field"), [
    ("gpt2", "target", next_token(), [input_pair(CLEAN, None)], "pairs[0].corrupted"),
    ("minilm", "kl_divergence", None, [input_pair(CLEAN, CORRUPTED)], "metric"),
    ("gpt2", "target", next_token(), [input_pair(CLEAN, CORRUPTED[:-1])], "pairs[0].corrupted"),
    ("gpt2", "target", next_token(10**6), [input_pair(CLEAN, CORRUPTED)], "target.token_id"),
])
def test_bad_requests_are_refused_naming_the_field(stub: pb_grpc.IntrospectionStub, model: str, metric: str,
                                                   target: pb.Target | None, pairs: list[pb.InputPair],
                                                   field: str) -> None:
    with pytest.raises(grpc.RpcError) as raised:
        patching(stub, model, target, metric=metric, pairs=pairs)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field_of(raised.value) == field, raised.value.details()


def test_every_pair_is_checked_before_the_stream_starts(stub: pb_grpc.IntrospectionStub) -> None:
    """A bad second pair (the metric's position without a corrupted counterpart) is
    refused before any message: every pair is encoded and checked before the header and
    before the first is forwarded."""
    request = pb.StreamPatchingRequest(
        model="gpt2", method=PATCHING_METHOD.number("attribution"), target=next_token(),
        pairs=[input_pair(CLEAN, CORRUPTED), input_pair(CLEAN, CORRUPTED + (102,), (0, 1, 2, 3, 4, 5, -1))],
    )
    received = []
    with pytest.raises(grpc.RpcError) as raised:
        for message in stub.StreamPatching(request):
            received.append(message)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field_of(raised.value) == "pairs[1].alignment", raised.value.details()
    assert received == []
