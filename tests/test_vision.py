"""Vision transformers through a real server and raw gRPC stubs, against the same weights
loaded by plain transformers (eager attention, tests/conftest.py's reference_vision_model)
and the model's own image processor loaded independently (reference_pixel_values).

  * models: every served case is described (kind, modality, layers, heads, labels, tokens);
    every refused one is refused at load naming why, and a server given one exits 2.
  * header: the ImageLayout and token names of every served case.
  * attention: every layer and head against output_attentions=True within 1e-5; the
    reductions, rollout, top_k, patch_grid and mean_distance against numpy.
  * ablation: PER_HEAD / JOINT / IMPORTANCE against forward pre-hooks on the attention
    output projection (and autograd through hand-made head gates).
  * inputs: every accepted encoding and pixel layout against the reference decoding, and
    every bad input refused with INVALID_ARGUMENT naming the field and what is accepted.
"""

from __future__ import annotations

import io
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch
import vision
from conftest import InProcessServer, reference_pixel_values, reference_vision_model
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from introspect_contract import pb, pb_grpc
from introspect_contract.tensors import decode_tensor
from PIL import Image
from test_attention import numpy_rollout
from test_head_ablation import HeadEdit, gated, replaced, zeroed

TOLERANCE = 1e-5
SERVED = [case for case in vision.VISION_CASES if case.served]
REFUSED = {  # refused case -> what the load error must say
    "swin-classifier": "windowed attention",
    "resnet-classifier": "convolutional",
    "convnext-classifier": "convolutional",
}
KINDS = {
    vision.IMAGE_CLASSIFIER: pb.MODEL_KIND_IMAGE_CLASSIFIER,
    vision.IMAGE_ENCODER: pb.MODEL_KIND_IMAGE_ENCODER,
    vision.DUAL_ENCODER: pb.MODEL_KIND_IMAGE_TEXT_DUAL_ENCODER,
}
IMAGE = vision.draw_image(1)  # 64 x 48 (width x height)
OTHER = vision.draw_image(2, (40, 56))  # another image, another original size
ACCEPTED_FILES = "PNG, JPEG or WebP"


# ---- requests and responses ----------------------------------------------------------------


@pytest.fixture(scope="module")
def stub(vision_server: InProcessServer) -> Iterator[pb_grpc.IntrospectionStub]:
    """A raw stub of the vision server."""
    with grpc.insecure_channel(vision_server.address) as channel:
        yield pb_grpc.IntrospectionStub(channel)


def encoded_input(data: bytes) -> pb.Input:
    """An Input of encoded image bytes."""
    return pb.Input(image=pb.ImageInput(encoded=data))


def png_input(image: Image.Image) -> pb.Input:
    """An Input of `image` as PNG."""
    return encoded_input(vision.encode(image, "PNG"))


def pixels_input(pixels: np.ndarray, dtype: int, shape: Sequence[int] | None = None) -> pb.Input:
    """An Input of raw pixels [channels, height, width] (its shape unless `shape` is given)."""
    tensor = pb.Tensor(shape=list(pixels.shape if shape is None else shape), dtype=dtype, data=pixels.tobytes())
    return pb.Input(image=pb.ImageInput(pixels=tensor))


@dataclass
class Attention:
    """One StreamAttention answer: header, then per (input, layer) the assembled values
    [heads_or_1, query_rows, keys_or_k] (key_indices with top_k) and the chunks."""

    header: pb.StreamHeader
    values: dict[tuple[int, int], np.ndarray] = field(default_factory=dict)
    key_indices: dict[tuple[int, int], np.ndarray] = field(default_factory=dict)
    chunks: list[pb.AttentionChunk] = field(default_factory=list)

    def stacked(self, index: int = 0) -> np.ndarray:
        """[layers, heads_or_1, ...] of one input, layers in order."""
        layers = sorted(layer for row, layer in self.values if row == index)
        return np.stack([self.values[index, layer] for layer in layers])


def attention(stub: pb_grpc.IntrospectionStub, model: str, inputs: Sequence[pb.Input], **fields: object) -> Attention:
    """StreamAttention with the result cache bypassed, chunks assembled along query rows."""
    request = pb.StreamAttentionRequest(model=model, inputs=list(inputs), cache=pb.CACHE_POLICY_BYPASS, **fields)
    messages = list(stub.StreamAttention(request))
    assert messages[0].HasField("header")
    result = Attention(messages[0].header)
    result.chunks = [message.chunk for message in messages[1:]]
    for key in {(chunk.input_index, chunk.layer) for chunk in result.chunks}:
        parts = [c for c in result.chunks if (c.input_index, c.layer) == key]
        result.values[key] = _assemble(parts, "values")
        if parts[0].HasField("key_indices"):
            result.key_indices[key] = _assemble(parts, "key_indices")
    return result


def _assemble(parts: list[pb.AttentionChunk], name: str) -> np.ndarray:
    """One layer's tensor from its chunks: query rows joined within each group of heads,
    the groups joined along the heads axis in the order they came."""
    groups: dict[tuple[int, ...], list[pb.AttentionChunk]] = {}
    for chunk in parts:
        groups.setdefault(tuple(chunk.heads), []).append(chunk)
    return np.concatenate([
        np.concatenate([decode_tensor(getattr(c, name)) for c in sorted(group, key=lambda c: c.query_start)], axis=1)
        for group in groups.values()
    ], axis=0)


def refusal(call: Callable[[], object]) -> tuple[grpc.StatusCode, str, str]:
    """(code, BadRequest field, message) of a call that must fail."""
    with pytest.raises(grpc.RpcError) as raised:
        call()
    error = raised.value
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    fields = []
    for detail in status.details if status else ():
        bad_request = error_details_pb2.BadRequest()
        if detail.Unpack(bad_request):
            fields += [violation.field for violation in bad_request.field_violations]
    return error.code(), fields[0] if fields else "", error.details()


def attention_refusal(stub: pb_grpc.IntrospectionStub, model: str, inputs: Sequence[pb.Input],
                      **fields: object) -> tuple[grpc.StatusCode, str, str]:
    """The refusal of a StreamAttention request."""
    return refusal(lambda: attention(stub, model, inputs, **fields))


# ---- the reference -----------------------------------------------------------------------------


def tower(model: torch.nn.Module, case: vision.VisionCase) -> torch.nn.Module:
    """The module that runs the image encoder: the vision tower of a dual encoder, else the model."""
    return model.vision_model if case.kind == vision.DUAL_ENCODER else model


def eager_maps(vision_dirs: dict[str, Path], name: str, pixel_values: torch.Tensor) -> np.ndarray:
    """[layers, batch, heads, tokens, tokens] of output_attentions=True on eager attention."""
    case = vision.VISION_CASES_BY_NAME[name]
    model = reference_vision_model(vision_dirs, name)
    with torch.no_grad():
        output = tower(model, case)(pixel_values=pixel_values, output_attentions=True)
    return torch.stack(output.attentions).numpy()


def reference_maps(vision_dirs: dict[str, Path], name: str, image: Image.Image | np.ndarray) -> np.ndarray:
    """[layers, heads, tokens, tokens] of one image through the reference processor and model."""
    return eager_maps(vision_dirs, name, reference_pixel_values(vision_dirs, name, image))[:, 0]


def token_names(case: vision.VisionCase) -> list[str]:
    """The tokens an image of `case` becomes, written out from the case."""
    rows, cols = case.grid
    return [*case.special_tokens, *(f"patch {r},{c}" for r in range(rows) for c in range(cols))]


# ---- 1. models -------------------------------------------------------------------------------


@pytest.mark.parametrize("case", SERVED, ids=lambda case: case.name)
def test_served_models_are_described(stub: pb_grpc.IntrospectionStub, vision_dirs: dict[str, Path],
                                     case: vision.VisionCase) -> None:
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(vision_dirs[case.name])
    tower_config = getattr(config, "vision_config", None) or config
    info = stub.GetModel(pb.GetModelRequest(name=case.name)).model
    assert info.name == case.name and info.architecture == case.architecture and info.model_type == case.model_type
    assert info.kind == KINDS[case.kind]
    assert list(info.modalities) == [pb.MODALITY_IMAGE]
    assert (info.num_layers, info.num_heads) == (tower_config.num_hidden_layers, tower_config.num_attention_heads)
    assert info.num_labels == (vision.NUM_LABELS if case.kind == vision.IMAGE_CLASSIFIER else 0)
    assert info.max_tokens == case.seq_len == len(case.special_tokens) + case.grid[0] * case.grid[1]
    listed = {model.name: model for model in stub.ListModels(pb.ListModelsRequest()).models}
    assert listed[case.name] == info


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_refused_models_are_refused_at_load_naming_why(vision_dirs: dict[str, Path], name: str) -> None:
    from introspect.config import ModelSpec
    from introspect.models import ModelLoadError, load_model

    with pytest.raises(ModelLoadError) as refused:
        load_model(ModelSpec(name, vision_dirs[name]), torch.device("cpu"), "float32")
    message = str(refused.value)
    assert REFUSED[name] in message and repr(name) in message, message


def test_a_server_given_a_refused_model_exits_2_with_one_line(vision_dirs: dict[str, Path]) -> None:
    path = vision_dirs["swin-classifier"]
    finished = subprocess.run(
        [sys.executable, "-m", "introspect", "--port", "0", f"--model=swin={path}"],
        capture_output=True, text=True, timeout=120,
    )
    assert finished.returncode == 2
    errors = [line for line in finished.stderr.splitlines() if "ERROR" in line]
    assert len(errors) == 1 and "'swin'" in errors[0] and str(path) in errors[0], finished.stderr
    assert "windowed attention" in errors[0] and "Traceback" not in finished.stderr


# ---- 2. header ---------------------------------------------------------------------------------


@pytest.mark.parametrize("case", SERVED, ids=lambda case: case.name)
def test_header_lays_out_the_tokens(stub: pb_grpc.IntrospectionStub, vision_dirs: dict[str, Path],
                                    case: vision.VisionCase) -> None:
    rotated = encoded_input(vision.jpeg_with_exif_orientation(IMAGE, 6))  # stored 64x48, upright 48 wide x 64 high
    header = attention(stub, case.name, [png_input(IMAGE), rotated], layers=[0]).header
    height, width = reference_pixel_values(vision_dirs, case.name, IMAGE).shape[-2:]
    assert (height, width) == case.image_size
    for item, (original_height, original_width) in zip(header.inputs, [(48, 64), (64, 48)], strict=True):
        layout = item.image
        assert (layout.height, layout.width) == (height, width)
        assert (layout.patch_height, layout.patch_width) == (case.patch_size, case.patch_size)
        assert (layout.grid_rows, layout.grid_columns) == case.grid
        assert list(layout.special_tokens) == list(case.special_tokens)
        assert layout.first_patch == len(case.special_tokens)
        assert (layout.original_height, layout.original_width) == (original_height, original_width)
        assert list(item.tokens) == token_names(case)
        assert list(item.token_ids) == [] and item.original_length == case.seq_len


# ---- 3. attention ------------------------------------------------------------------------------


@pytest.mark.parametrize("case", SERVED, ids=lambda case: case.name)
def test_every_head_of_a_batch_of_two_equals_eager_attention_of_each_alone(
    stub: pb_grpc.IntrospectionStub, vision_dirs: dict[str, Path], case: vision.VisionCase
) -> None:
    result = attention(stub, case.name, [png_input(IMAGE), png_input(OTHER)])
    for index, image in enumerate([IMAGE, OTHER]):
        reference = reference_maps(vision_dirs, case.name, image)
        assert reference.shape == (vision.TINY_LAYERS, vision.TINY_HEADS, case.seq_len, case.seq_len)
        served = result.stacked(index)
        assert served.shape == reference.shape
        np.testing.assert_allclose(served, reference, atol=TOLERANCE, rtol=0)
    assert np.abs(result.stacked(0) - result.stacked(1)).max() > 100 * TOLERANCE  # two images, two answers


@pytest.mark.parametrize("name", ["vit-classifier", "deit-classifier"])
def test_reductions_rollout_and_top_k_equal_numpy(stub: pb_grpc.IntrospectionStub, vision_dirs: dict[str, Path],
                                                  name: str) -> None:
    reference = reference_maps(vision_dirs, name, IMAGE)  # [layers, heads, T, T]
    heads = [0, 2, 3]
    inputs = [png_input(IMAGE)]
    mean = attention(stub, name, inputs, view=pb.ATTENTION_VIEW_HEAD_MEAN, heads=heads).stacked()[:, 0]
    np.testing.assert_allclose(mean, reference[:, heads].mean(axis=1), atol=TOLERANCE, rtol=0)
    maximum = attention(stub, name, inputs, view=pb.ATTENTION_VIEW_HEAD_MAX, heads=heads).stacked()[:, 0]
    np.testing.assert_allclose(maximum, reference[:, heads].max(axis=1), atol=TOLERANCE, rtol=0)
    rollout = attention(stub, name, inputs, view=pb.ATTENTION_VIEW_ROLLOUT).stacked()[:, 0]
    np.testing.assert_allclose(rollout, np.stack(numpy_rollout(reference, 0.5)), atol=TOLERANCE, rtol=0)
    k = 5
    top = attention(stub, name, inputs, layers=[1], top_k=k)
    values, indices = top.values[0, 1], top.key_indices[0, 1].astype(np.int64)
    np.testing.assert_allclose(values, -np.sort(-reference[1], axis=-1)[..., :k], atol=TOLERANCE, rtol=0)
    np.testing.assert_allclose(np.take_along_axis(reference[1], indices, axis=-1), values, atol=TOLERANCE, rtol=0)


def expected_view(reference: np.ndarray, view: int) -> np.ndarray:
    """[layers, heads_or_1, T, T] of a view computed from eager maps [layers, heads, T, T]."""
    if view == pb.ATTENTION_VIEW_HEADS:
        return reference
    if view == pb.ATTENTION_VIEW_HEAD_MEAN:
        return reference.mean(axis=1, keepdims=True)
    return np.stack(numpy_rollout(reference, 0.5))[:, None]


@pytest.mark.parametrize("name", ["vit-classifier", "deit-classifier", "dinov2-registers-encoder"])
@pytest.mark.parametrize("view", [pb.ATTENTION_VIEW_HEADS, pb.ATTENTION_VIEW_HEAD_MEAN, pb.ATTENTION_VIEW_ROLLOUT],
                         ids=["heads", "head_mean", "rollout"])
def test_patch_grid_is_the_cls_row_over_the_patches_row_major(
    stub: pb_grpc.IntrospectionStub, vision_dirs: dict[str, Path], name: str, view: int
) -> None:
    case = vision.VISION_CASES_BY_NAME[name]
    rows, cols = case.grid
    first = len(case.special_tokens)
    full = expected_view(reference_maps(vision_dirs, name, IMAGE), view)  # [layers, heads_or_1, T, T]
    result = attention(stub, name, [png_input(IMAGE)], view=view, patch_grid=True)
    grids = result.stacked()  # [layers, heads_or_1, rows, cols]
    assert grids.shape == (*full.shape[:2], rows, cols)
    assert all((c.grid_rows, c.grid_columns, c.query_start, c.query_end) == (rows, cols, 0, 1) for c in result.chunks)
    for r in range(rows):
        for c in range(cols):  # patch (r, c) is key token first_patch + r * cols + c
            np.testing.assert_allclose(grids[..., r, c], full[:, :, 0, first + r * cols + c], atol=TOLERANCE, rtol=0)


def test_patch_grid_is_refused_without_a_class_token(stub: pb_grpc.IntrospectionStub) -> None:
    code, where, message = attention_refusal(stub, "siglip-dual", [png_input(IMAGE)], patch_grid=True)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and where == "patch_grid", message
    assert "patch_grid" in message and "[CLS]" in message


def naive_mean_distance(maps: np.ndarray, case: vision.VisionCase) -> np.ndarray:
    """Per head of maps [heads, T, T]: the mean over patch queries of sum over patch keys of
    a(q, k) * the distance between the two patches' pixel centres, by loops."""
    rows, cols = case.grid
    size = case.patch_size
    first = len(case.special_tokens)
    centres = [((r + 0.5) * size, (c + 0.5) * size) for r in range(rows) for c in range(cols)]
    distances = np.zeros(maps.shape[0])
    for head in range(maps.shape[0]):
        total = 0.0
        for q, (qy, qx) in enumerate(centres):
            for k, (ky, kx) in enumerate(centres):
                total += float(maps[head, first + q, first + k]) * float(np.hypot(qy - ky, qx - kx))
        distances[head] = total / len(centres)
    return distances


@pytest.mark.parametrize("name", ["vit-classifier", "deit-classifier"])
def test_mean_distance_equals_a_naive_loop(stub: pb_grpc.IntrospectionStub, vision_dirs: dict[str, Path],
                                           name: str) -> None:
    case = vision.VISION_CASES_BY_NAME[name]
    reference = reference_maps(vision_dirs, name, IMAGE)
    result = attention(stub, name, [png_input(IMAGE)], view=pb.ATTENTION_VIEW_MEAN_DISTANCE, heads=[3, 1])
    for layer in range(vision.TINY_LAYERS):
        values = result.values[0, layer]
        assert values.shape == (2, 1, 1)
        expected = naive_mean_distance(reference[layer], case)[[3, 1]]
        assert expected.min() > case.patch_size / 2  # a real distance, not zero
        np.testing.assert_allclose(values[:, 0, 0], expected, atol=TOLERANCE * case.image_size[1], rtol=0)


@pytest.mark.parametrize(("model", "fields", "named"), [
    ("gpt2", {"view": pb.ATTENTION_VIEW_MEAN_DISTANCE}, "view"),
    ("minilm", {"patch_grid": True}, "patch_grid"),
])
def test_image_views_on_a_text_model_are_invalid(address: str, model: str, fields: dict[str, object],
                                                 named: str) -> None:
    with grpc.insecure_channel(address) as channel:
        text_stub = pb_grpc.IntrospectionStub(channel)
        code, where, message = attention_refusal(text_stub, model, [pb.Input(text=pb.TextInput(text="a cat"))],
                                                 **fields)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and where == named, message
    assert "image" in message and "text" in message


# ---- 4. head ablation and importance -------------------------------------------------------

CLASS = 2
PROJECTIONS = {  # case -> attribute path of layer i's attention output projection ({i})
    "vit-classifier": "vit.layers.{i}.attention.o_proj",
    "dinov2-encoder": "encoder.layer.{i}.attention.o_proj",
    "clip-dual": "vision_model.encoder.layers.{i}.self_attn.out_proj",
}


@contextmanager
def edited(model: torch.nn.Module, name: str, edits: dict[int, HeadEdit]) -> Iterator[None]:
    """Forward pre-hooks on the output projections of the layers in `edits`, whose input
    [batch, tokens, heads * head_dim] each edit sees as [batch, tokens, heads, head_dim]."""
    heads = vision.TINY_HEADS

    def hook_for(edit: HeadEdit) -> Callable[..., tuple[torch.Tensor, ...]]:
        def hook(module: torch.nn.Module, args: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
            batch, tokens, width = args[0].shape
            per_head = edit(args[0].reshape(batch, tokens, heads, width // heads))
            return (per_head.reshape(batch, tokens, width), *args[1:])

        return hook

    modules = {layer: model.get_submodule(PROJECTIONS[name].format(i=layer)) for layer in edits}
    assert all(module.in_features == vision.TINY_HIDDEN for module in modules.values())
    handles = [modules[layer].register_forward_pre_hook(hook_for(edit)) for layer, edit in edits.items()]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def features(output: object) -> torch.Tensor:
    """get_image_features / get_text_features: a tensor, or an output with pooler_output."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output  # type: ignore[attr-defined]


class ImageReference:
    """One case's reference model on one image: what its target measures, under head edits.

    outputs: class logits [classes] (classifier), the mean over tokens of the last hidden
    states [hidden] (encoder), or the projected image embedding [projection] (dual encoder).
    """

    def __init__(self, vision_dirs: dict[str, Path], name: str, image: Image.Image,
                 reference: torch.Tensor | None = None) -> None:
        self.name = name
        self.kind = vision.VISION_CASES_BY_NAME[name].kind
        self.model = reference_vision_model(vision_dirs, name)
        self.pixel_values = reference_pixel_values(vision_dirs, name, image)
        self.reference = reference  # the embedding a dual encoder's similarity compares with
        with torch.no_grad():
            self.base = self.outputs({})

    def outputs(self, edits: dict[int, HeadEdit]) -> torch.Tensor:
        with edited(self.model, self.name, edits):
            if self.kind == vision.DUAL_ENCODER:
                return features(self.model.get_image_features(pixel_values=self.pixel_values))[0]
            output = self.model(pixel_values=self.pixel_values)
        return output.logits[0] if self.kind == vision.IMAGE_CLASSIFIER else output.last_hidden_state[0].mean(0)

    def score(self, outputs: torch.Tensor) -> torch.Tensor:
        if self.kind == vision.IMAGE_CLASSIFIER:
            return outputs[CLASS]
        if self.reference is not None:
            return torch.nn.functional.cosine_similarity(outputs, self.reference, dim=0)
        return outputs.norm()

    def change(self, outputs: torch.Tensor) -> float:
        """KL(unablated || ablated) of the class distribution, or the embedding's cosine distance."""
        if self.kind == vision.IMAGE_CLASSIFIER:
            base, changed = torch.log_softmax(self.base, -1), torch.log_softmax(outputs, -1)
            return float((base.exp() * (base - changed)).sum())
        return float(1 - torch.nn.functional.cosine_similarity(outputs, self.base, dim=0))

    def delta_and_change(self, edits: dict[int, HeadEdit]) -> tuple[float, float]:
        with torch.no_grad():
            outputs = self.outputs(edits)
        return float(self.score(outputs) - self.score(self.base)), self.change(outputs)

    def head_means(self) -> dict[int, torch.Tensor]:
        """Per layer, each head's output [heads, head_dim] averaged over the image's tokens."""
        captured: dict[int, torch.Tensor] = {}

        def capture(layer: int) -> HeadEdit:
            def edit(values: torch.Tensor) -> torch.Tensor:
                captured[layer] = values[0].mean(dim=0)
                return values

            return edit

        with torch.no_grad():
            self.outputs({layer: capture(layer) for layer in range(vision.TINY_LAYERS)})
        return captured

    def importance(self) -> np.ndarray:
        """d score / d gate [layers, heads] by autograd, a gate multiplying each head's slice."""
        gates = torch.ones(vision.TINY_LAYERS, vision.TINY_HEADS, requires_grad=True)

        def gate(layer: int) -> HeadEdit:
            return lambda values: values * gates[layer][None, None, :, None]

        score = self.score(self.outputs({layer: gate(layer) for layer in range(vision.TINY_LAYERS)}))
        (gradient,) = torch.autograd.grad(score, gates)
        return gradient.numpy()


def ablation(stub: pb_grpc.IntrospectionStub, model: str, target: pb.Target, **fields: object,
             ) -> list[pb.StreamHeadAblationResponse]:
    """Every message of a StreamHeadAblation on IMAGE."""
    request = pb.StreamHeadAblationRequest(model=model, input=png_input(IMAGE), target=target,
                                           cache=pb.CACHE_POLICY_BYPASS, **fields)
    return list(stub.StreamHeadAblation(request))


def text_embedding(vision_dirs: dict[str, Path], text: str) -> torch.Tensor:
    """CLIP's projected text embedding of `text`, by the reference tokenizer and model."""
    from transformers import AutoTokenizer

    tokens = AutoTokenizer.from_pretrained(vision_dirs["clip-dual"])(text, return_tensors="pt")
    model = reference_vision_model(vision_dirs, "clip-dual")
    with torch.no_grad():
        return features(model.get_text_features(input_ids=tokens["input_ids"],
                                                attention_mask=tokens["attention_mask"]))[0]


def image_embedding(vision_dirs: dict[str, Path], image: Image.Image) -> torch.Tensor:
    """CLIP's projected image embedding of `image`, by the reference processor and model."""
    return ImageReference(vision_dirs, "clip-dual", image).base


@dataclass(frozen=True)
class AblationCase:
    """A model, its target on the wire and the reference embedding of that target (if any)."""

    name: str
    target: pb.Target
    reference: Callable[[dict[str, Path]], torch.Tensor | None] = lambda dirs: None


ABLATION_CASES = [
    AblationCase("vit-classifier", pb.Target(class_score=pb.ClassTarget(class_index=CLASS))),
    AblationCase("dinov2-encoder", pb.Target(embedding_norm=pb.EmbeddingNormTarget())),
    AblationCase("clip-dual", pb.Target(embedding_similarity=pb.EmbeddingSimilarityTarget(
        reference=pb.Input(text=pb.TextInput(text="a dog")))), lambda dirs: text_embedding(dirs, "a dog")),
]


@pytest.mark.parametrize("case", ABLATION_CASES, ids=lambda case: case.name)
@pytest.mark.parametrize("value", [pb.ABLATION_VALUE_ZERO, pb.ABLATION_VALUE_MEAN], ids=["zero", "mean"])
def test_per_head_ablation_equals_a_naive_loop(stub: pb_grpc.IntrospectionStub, vision_dirs: dict[str, Path],
                                               case: AblationCase, value: int) -> None:
    reference = ImageReference(vision_dirs, case.name, IMAGE, case.reference(vision_dirs))
    messages = ablation(stub, case.name, case.target, mode=pb.ABLATION_MODE_PER_HEAD, value=value)
    baseline = messages[1].baseline
    assert abs(baseline.target_score - float(reference.score(reference.base))) <= TOLERANCE
    assert (baseline.num_layers, baseline.num_heads) == (vision.TINY_LAYERS, vision.TINY_HEADS)
    means = reference.head_means() if value == pb.ABLATION_VALUE_MEAN else {}
    layers = [message.layer for message in messages[2:]]
    assert [layer.layer for layer in layers] == list(range(vision.TINY_LAYERS))
    deltas = []
    for layer in layers:
        assert list(layer.heads) == list(range(vision.TINY_HEADS))
        for head, delta, change in zip(layer.heads, decode_tensor(layer.target_delta),
                                       decode_tensor(layer.output_change), strict=True):
            edit = replaced([head], means[layer.layer]) if means else zeroed([head])
            expected_delta, expected_change = reference.delta_and_change({layer.layer: edit})
            assert abs(delta - expected_delta) <= TOLERANCE, (layer.layer, head)
            assert abs(change - expected_change) <= TOLERANCE, (layer.layer, head)
            deltas.append(expected_delta)
    assert max(abs(delta) for delta in deltas) > 100 * TOLERANCE  # the heads matter


@pytest.mark.parametrize("case", ABLATION_CASES, ids=lambda case: case.name)
def test_joint_ablation_and_importance_equal_the_reference(stub: pb_grpc.IntrospectionStub,
                                                           vision_dirs: dict[str, Path], case: AblationCase) -> None:
    reference = ImageReference(vision_dirs, case.name, IMAGE, case.reference(vision_dirs))
    heads = [pb.HeadRef(layer=0, head=1), pb.HeadRef(layer=1, head=3), pb.HeadRef(layer=1, head=0)]
    joint = ablation(stub, case.name, case.target, mode=pb.ABLATION_MODE_JOINT, heads=heads)[-1].joint
    expected_delta, expected_change = reference.delta_and_change({0: zeroed([1]), 1: zeroed([3, 0])})
    base = float(reference.score(reference.base))
    assert abs(joint.ablated_score - (base + expected_delta)) <= TOLERANCE
    assert abs(joint.output_change - expected_change) <= TOLERANCE
    assert abs(expected_delta) > 100 * TOLERANCE

    importance = ablation(stub, case.name, case.target, mode=pb.ABLATION_MODE_IMPORTANCE)[-1].importance.importance
    expected = reference.importance()
    assert np.abs(expected).max() > 100 * TOLERANCE
    np.testing.assert_allclose(decode_tensor(importance), expected, atol=TOLERANCE, rtol=0)


def test_similarity_targets_of_a_dual_encoder_equal_the_reference_cosine(
    stub: pb_grpc.IntrospectionStub, vision_dirs: dict[str, Path]
) -> None:
    embedding = image_embedding(vision_dirs, IMAGE)
    to_text = ABLATION_CASES[2].target
    to_image = pb.Target(embedding_similarity=pb.EmbeddingSimilarityTarget(reference=png_input(OTHER)))
    others = [(to_text, text_embedding(vision_dirs, "a dog")), (to_image, image_embedding(vision_dirs, OTHER))]
    for target, other in others:
        baseline = ablation(stub, "clip-dual", target, mode=pb.ABLATION_MODE_JOINT,
                            heads=[pb.HeadRef(layer=0, head=0)])[1].baseline
        expected = float(torch.nn.functional.cosine_similarity(embedding, other, dim=0))
        assert abs(baseline.target_score - expected) <= TOLERANCE
    assert abs(expected) < 1 - 100 * TOLERANCE  # not the image itself


# ---- 5. inputs and bad inputs --------------------------------------------------------------

NAME = "vit-classifier"


def pillow_rgb(data: bytes) -> Image.Image:
    """The reference decoding of an image file: Pillow, converted to RGB."""
    return Image.open(io.BytesIO(data)).convert("RGB")


def assert_maps(stub: pb_grpc.IntrospectionStub, vision_dirs: dict[str, Path], sent: pb.Input,
                expected_image: Image.Image | np.ndarray) -> Attention:
    """The maps of `sent` equal the reference on the reference processor's pixel values of
    `expected_image`; returns the answer."""
    result = attention(stub, NAME, [sent])
    assert list(result.header.inputs[0].tokens) == token_names(vision.VISION_CASES_BY_NAME[NAME])
    np.testing.assert_allclose(result.stacked(), reference_maps(vision_dirs, NAME, expected_image),
                               atol=TOLERANCE, rtol=0)
    return result


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_encoded_files_equal_the_reference_decoding(stub: pb_grpc.IntrospectionStub, vision_dirs: dict[str, Path],
                                                    fmt: str) -> None:
    data = vision.encode(IMAGE, fmt)
    assert_maps(stub, vision_dirs, encoded_input(data), pillow_rgb(data))


def test_raw_pixels_equal_the_reference_processor(stub: pb_grpc.IntrospectionStub,
                                                  vision_dirs: dict[str, Path]) -> None:
    assert_maps(stub, vision_dirs, pixels_input(vision.pixels_uint8(IMAGE), pb.DTYPE_UINT8), IMAGE)
    assert_maps(stub, vision_dirs, pixels_input(vision.pixels_float(IMAGE), pb.DTYPE_FLOAT32), IMAGE)
    grey = np.asarray(IMAGE.convert("L"))[None]  # [1, H, W]
    assert_maps(stub, vision_dirs, pixels_input(grey, pb.DTYPE_UINT8), IMAGE.convert("L").convert("RGB"))


def test_exif_orientation_is_applied(stub: pb_grpc.IntrospectionStub, vision_dirs: dict[str, Path]) -> None:
    data = vision.jpeg_with_exif_orientation(IMAGE, 6)
    stored = pillow_rgb(data)
    assert stored.size == (64, 48)
    upright = vision.exif_upright(stored, 6)  # 48 wide, 64 high
    result = assert_maps(stub, vision_dirs, encoded_input(data), upright)
    layout = result.header.inputs[0].image
    assert (layout.original_height, layout.original_width) == (64, 48)
    sent_upright = attention(stub, NAME, [png_input(upright)])
    np.testing.assert_allclose(result.stacked(), sent_upright.stacked(), atol=TOLERANCE, rtol=0)
    unrotated = reference_maps(vision_dirs, NAME, stored)
    assert np.abs(result.stacked() - unrotated).max() > 100 * TOLERANCE  # the rotation changed the answer


def on_white(data: bytes) -> Image.Image:
    """An RGBA file composited onto white."""
    rgba = Image.open(io.BytesIO(data)).convert("RGBA")
    return Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")


def sixteen_bit_to_rgb(data: bytes) -> np.ndarray:
    """A 16-bit grey file as 8-bit RGB [H, W, 3]: values * 255 / 65535, rounded."""
    values = np.asarray(Image.open(io.BytesIO(data)), dtype=np.float64)
    grey = np.rint(values * 255.0 / 65535.0).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=-1)


ODD_FILES: dict[str, tuple[Callable[[Image.Image], bytes], Callable[[bytes], Image.Image | np.ndarray]]] = {
    "rgba": (vision.rgba_png, on_white),
    "palette": (vision.palette_png, pillow_rgb),
    "cmyk": (vision.cmyk_jpeg, pillow_rgb),
    "grey": (vision.grayscale_png, pillow_rgb),
    "16-bit": (vision.sixteen_bit_png, sixteen_bit_to_rgb),
}


@pytest.mark.parametrize("kind", ODD_FILES)
def test_other_modes_are_converted_to_rgb(stub: pb_grpc.IntrospectionStub, vision_dirs: dict[str, Path],
                                          kind: str) -> None:
    build, convert = ODD_FILES[kind]
    data = build(IMAGE)
    expected = convert(data)
    result = assert_maps(stub, vision_dirs, encoded_input(data), expected)
    as_rgb = attention(stub, NAME, [png_input(Image.fromarray(np.asarray(expected)))])
    np.testing.assert_allclose(result.stacked(), as_rgb.stacked(), atol=TOLERANCE, rtol=0)
    if kind == "rgba":  # white where transparent, not the colour under it
        assert np.abs(np.asarray(expected, np.int16) - np.asarray(IMAGE, np.int16)).max() > 100


def _float_pixels(value: float) -> pb.Input:
    pixels = vision.pixels_float(IMAGE)
    pixels[0, 0, 0] = value
    return pixels_input(pixels, pb.DTYPE_FLOAT32)


RNG_BYTES = np.random.default_rng(0).integers(0, 256, 2000, dtype=np.uint8).tobytes()
FIELD = "inputs[0].image"
BAD_INPUTS: dict[str, tuple[Callable[[], pb.Input], str, str]] = {
    # name: (input, field, what the message must say)
    "truncated png": (lambda: encoded_input(vision.truncated(vision.encode(IMAGE, "PNG"))), "encoded", ACCEPTED_FILES),
    "gif": (lambda: encoded_input(vision.gif_bytes(IMAGE)), "encoded", ACCEPTED_FILES),
    "random bytes": (lambda: encoded_input(RNG_BYTES), "encoded", ACCEPTED_FILES),
    "empty bytes": (lambda: encoded_input(b""), "encoded", ACCEPTED_FILES),
    "bomb over pillow's limit": (lambda: encoded_input(vision.decompression_bomb_png()), "encoded",
                                 "at most 40000000"),
    "bomb under pillow's limit": (lambda: encoded_input(vision.decompression_bomb_png(8000, 8000)), "encoded",
                                  "8000x8000 = 64000000 pixels; at most 40000000"),
    "2 channels": (lambda: pixels_input(vision.pixels_uint8(IMAGE)[:2], pb.DTYPE_UINT8), "pixels.shape",
                   "1 (grey) or 3 (RGB)"),
    "4 channels": (lambda: pixels_input(np.concatenate([vision.pixels_uint8(IMAGE)] * 2)[:4], pb.DTYPE_UINT8),
                   "pixels.shape", "1 (grey) or 3 (RGB)"),
    "2 dimensions": (lambda: pixels_input(vision.pixels_uint8(IMAGE)[0], pb.DTYPE_UINT8), "pixels.shape",
                     "[channels, height, width]"),
    "float16": (lambda: pixels_input(vision.pixels_float(IMAGE).astype(np.float16), pb.DTYPE_FLOAT16),
                "pixels.dtype", "uint8 or float32"),
    "int32": (lambda: pixels_input(vision.pixels_uint8(IMAGE).astype(np.int32), pb.DTYPE_INT32), "pixels.dtype",
              "uint8 or float32"),
    "short data": (lambda: pixels_input(vision.pixels_uint8(IMAGE)[:, :-1], pb.DTYPE_UINT8, (3, 48, 64)),
                   "pixels.data", "expected 9216"),
    "float data not a multiple of 4 bytes": (
        lambda: pb.Input(image=pb.ImageInput(pixels=pb.Tensor(shape=[1, 1, 1], dtype=pb.DTYPE_FLOAT32, data=b"abc"))),
        "pixels.data", "3 bytes for float32 pixels of shape [1, 1, 1]: expected 4"),
    "float above 1": (lambda: _float_pixels(1.5), "pixels.data", "[0, 1]"),
    "float below 0": (lambda: _float_pixels(-0.1), "pixels.data", "[0, 1]"),
    "float nan": (lambda: _float_pixels(float("nan")), "pixels.data", "finite"),
    "neither file nor pixels": (lambda: pb.Input(image=pb.ImageInput()), "", "PNG, JPEG or WebP"),
}


@pytest.mark.parametrize("name", BAD_INPUTS)
def test_bad_images_are_invalid_naming_the_field_and_what_is_accepted(stub: pb_grpc.IntrospectionStub,
                                                                      name: str) -> None:
    build, where, says = BAD_INPUTS[name]
    inputs = [png_input(IMAGE), build()] if name == "gif" else [build()]  # the gif second: its index is named
    code, violation, message = attention_refusal(stub, NAME, inputs)
    expected_field = ".".join(part for part in (FIELD, where) if part)
    if name == "gif":
        expected_field = expected_field.replace("inputs[0]", "inputs[1]")
    assert code == grpc.StatusCode.INVALID_ARGUMENT, message
    assert violation == expected_field, message
    assert says in message, message


@pytest.fixture(scope="module")
def limited(vision_dirs: dict[str, Path]) -> Iterator[pb_grpc.IntrospectionStub]:
    """A server of vit-classifier that takes images of at most 1000 pixels."""
    running = InProcessServer("--max-image-pixels=1000", f"--model={NAME}={vision_dirs[NAME]}")
    with grpc.insecure_channel(running.address) as channel:
        yield pb_grpc.IntrospectionStub(channel)
    assert running.stop() == 0


def test_the_pixel_limit_is_checked_before_decoding(limited: pb_grpc.IntrospectionStub,
                                                    vision_dirs: dict[str, Path]) -> None:
    at_limit = vision.draw_image(3, (40, 25))
    assert_maps(limited, vision_dirs, png_input(at_limit), at_limit)
    over = vision.draw_image(3, (41, 25))
    for sent, where in [(png_input(over), "encoded"), (pixels_input(vision.pixels_uint8(over), pb.DTYPE_UINT8),
                                                       "pixels.shape")]:
        code, violation, message = attention_refusal(limited, NAME, [sent])
        assert code == grpc.StatusCode.INVALID_ARGUMENT and violation == f"{FIELD}.{where}", message
        assert "41x25 = 1025 pixels; at most 1000" in message
    for bomb in (vision.decompression_bomb_png(), vision.decompression_bomb_png(8000, 8000)):
        code, violation, message = attention_refusal(limited, NAME, [encoded_input(bomb)])
        assert code == grpc.StatusCode.INVALID_ARGUMENT and violation == f"{FIELD}.encoded", message
        assert "at most 1000" in message


def test_an_image_to_a_text_model_and_text_to_an_image_model_are_invalid(
    stub: pb_grpc.IntrospectionStub, address: str
) -> None:
    code, violation, message = attention_refusal(stub, NAME, [png_input(IMAGE), pb.Input(text=pb.TextInput(text="a"))])
    assert code == grpc.StatusCode.INVALID_ARGUMENT and violation == "inputs[1]", message
    assert "takes images" in message
    with grpc.insecure_channel(address) as channel:
        code, violation, message = attention_refusal(pb_grpc.IntrospectionStub(channel), "gpt2", [png_input(IMAGE)])
    assert code == grpc.StatusCode.INVALID_ARGUMENT and violation == "inputs[0]", message
    assert "takes text or token ids" in message and "not images" in message
