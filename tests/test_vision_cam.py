"""CAMs (Grad-CAM, HiResCAM, XGrad-CAM, LayerCAM) through a real server, against the real
pytorch-grad-cam on the same weights and pixel values, and against the maps computed here
by hand from torch.autograd (pytorch-grad-cam's definitions written out again).

Requests are raw gRPC (the Python client's image support is another change). The
references load the tiny vision cases independently (conftest.reference_vision_model) and
process the image with the case's own image processor (conftest.reference_pixel_values).

pytorch-grad-cam returns each map ReLU'd, min-max scaled (+1e-7 in the denominator),
resized to the input (cv2.resize, bilinear) and min-max scaled again; the server returns
the raw map, as the grid and resized the same way (upsample). The comparison applies
grad-cam's scaling to the server's maps as grad-cam applies it: the first scaling with
the grid's minimum and range (a bilinear resize commutes with it), then the second.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import torch
from conftest import InProcessServer, reference_pixel_values, reference_vision_model
from gradcam_reference import import_grad_cam
from introspect_contract import pb, pb_grpc
from introspect_contract.tensors import decode_tensor
from vision import TINY_LAYERS, VISION_CASES_BY_NAME, draw_image, encode, logits_module, vit_reshape_transform

IMAGE = draw_image(3)
PNG = encode(IMAGE, "PNG")
CLASS = 1
PROMPT = "a dog"
TOLERANCE = 1e-5

METHODS = {
    "grad_cam": pb.SALIENCY_METHOD_GRAD_CAM,
    "hi_res_cam": pb.SALIENCY_METHOD_HI_RES_CAM,
    "xgrad_cam": pb.SALIENCY_METHOD_XGRAD_CAM,
    "layer_cam": pb.SALIENCY_METHOD_LAYER_CAM,
}
NAMES = {number: name for name, number in METHODS.items()}
GRAD_CAM_CLASSES = {"grad_cam": "GradCAM", "hi_res_cam": "HiResCAM", "xgrad_cam": "XGradCAM", "layer_cam": "LayerCAM"}
POINTS = {
    "attention_input": pb.CAM_POINT_ATTENTION_INPUT,
    "block_input": pb.CAM_POINT_BLOCK_INPUT,
    "block_output": pb.CAM_POINT_BLOCK_OUTPUT,
}


# ---- the server side ------------------------------------------------------------------------


@dataclass(frozen=True)
class Map:
    """One final CAM result as the server sent it."""

    method: str
    target_score: float
    grid: np.ndarray  # [rows, columns]
    upsampled: np.ndarray  # [height, width]
    scores: np.ndarray  # [tokens]: the grid on the patch tokens, 0 on special tokens


def request(model: str, target: pb.Target, method: str, *, layer: int | None = None, point: str | None = None,
            also: tuple[str, ...] = ()) -> pb.StreamSaliencyRequest:
    """A CAM request for PNG, with upsampled maps."""
    cam = pb.CamOptions(also=[METHODS[name] for name in also])
    if layer is not None:
        cam.layer = layer
    if point is not None:
        cam.point = POINTS[point]
    return pb.StreamSaliencyRequest(model=model, input=pb.Input(image=pb.ImageInput(encoded=PNG)), target=target,
                                    method=METHODS[method], cam=cam, upsample=True)


def stream(server: InProcessServer, message: pb.StreamSaliencyRequest) -> list[Map]:
    """Every final result of one StreamSaliency call, in order."""
    channel = grpc.insecure_channel(server.address)
    try:
        responses = list(pb_grpc.IntrospectionStub(channel).StreamSaliency(message))
    finally:
        channel.close()
    assert responses[0].WhichOneof("payload") == "header"
    chunks = [response.chunk for response in responses[1:]]
    assert all(chunk.final for chunk in chunks), "CAMs send final results only"
    return [Map(NAMES[chunk.method], chunk.target_score, decode_tensor(chunk.grid_scores),
                decode_tensor(chunk.upsampled_scores), decode_tensor(chunk.scores)) for chunk in chunks]


def violation(error: grpc.RpcError) -> str:
    """The field the google.rpc.BadRequest of an error names."""
    from google.rpc import error_details_pb2
    from grpc_status import rpc_status

    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None
    bad_request = error_details_pb2.BadRequest()
    assert status.details[0].Unpack(bad_request)
    return bad_request.field_violations[0].field


# ---- the reference side ---------------------------------------------------------------------


def _image_features(model: Any, pixel_values: torch.Tensor) -> torch.Tensor:
    """CLIP's joint-space image embeddings [batch, dim] (a tensor, or pooler_output)."""
    output = model.get_image_features(pixel_values=pixel_values)
    return output if isinstance(output, torch.Tensor) else output.pooler_output


class _LastHidden(torch.nn.Module):
    """pixel_values -> last_hidden_state [batch, tokens, hidden]."""

    def __init__(self, inner: Any) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.inner(pixel_values=pixel_values).last_hidden_state


class _TextSimilarity(torch.nn.Module):
    """pixel_values -> [batch] cosine similarity of CLIP's image embedding to a text's."""

    def __init__(self, inner: Any, text_features: torch.Tensor) -> None:
        super().__init__()
        self.inner = inner
        self.text_features = text_features  # [dim]

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        features = _image_features(self.inner, pixel_values)
        return torch.nn.functional.cosine_similarity(features, self.text_features[None], dim=-1)


def embedding_norm(output: torch.Tensor) -> torch.Tensor:
    """The server's embedding_norm of one row's last hidden states [tokens, hidden]: the
    L2 norm of their mean over tokens."""
    return output.mean(dim=0).norm()


def class_score(output: torch.Tensor) -> torch.Tensor:
    """The logit of CLASS of one row's logits [classes]."""
    return output[CLASS]


def identity(output: torch.Tensor) -> torch.Tensor:
    """One row's scalar output (the text similarity)."""
    return output


@dataclass(frozen=True)
class Case:
    """A served vision case, its target, and the same target written for pytorch-grad-cam."""

    model: str
    target: pb.Target
    # (reference model, vision_dirs) -> the module pytorch-grad-cam calls with pixel_values
    wrap: Callable[[Any, dict[str, Path]], torch.nn.Module]
    score: Callable[[torch.Tensor], torch.Tensor]  # one row of the wrapped output -> scalar
    blocks: Callable[[Any], Any]  # reference model -> its blocks
    first_norm: str  # attribute of a block: its first norm
    embeddings: Callable[[Any], torch.nn.Module]  # reference model -> what block 0 reads


def _text_similarity(model: Any, dirs: dict[str, Path]) -> torch.nn.Module:
    from transformers import AutoTokenizer

    tokens = AutoTokenizer.from_pretrained(dirs["clip-dual"])(PROMPT, return_tensors="pt")
    with torch.no_grad():
        output = model.get_text_features(**tokens)
    text = output if isinstance(output, torch.Tensor) else output.pooler_output
    return _TextSimilarity(model, text[0])


CASES = {
    "vit-classifier": Case("vit-classifier", pb.Target(class_score=pb.ClassTarget(class_index=CLASS)),
                           lambda model, _: logits_module(model), class_score, lambda model: model.vit.layers,
                           "layernorm_before", lambda model: model.vit.embeddings),
    "deit-classifier": Case("deit-classifier", pb.Target(class_score=pb.ClassTarget(class_index=CLASS)),
                            lambda model, _: logits_module(model), class_score, lambda model: model.deit.layers,
                            "layernorm_before", lambda model: model.deit.embeddings),
    "dinov2-registers-encoder": Case("dinov2-registers-encoder", pb.Target(embedding_norm=pb.EmbeddingNormTarget()),
                                     lambda model, _: _LastHidden(model).eval(), embedding_norm,
                                     lambda model: model.encoder.layer, "norm1", lambda model: model.embeddings),
    "clip-dual": Case("clip-dual", pb.Target(embedding_similarity=pb.EmbeddingSimilarityTarget(
                          reference=pb.Input(text=pb.TextInput(text=PROMPT)))),
                      _text_similarity, identity, lambda model: model.vision_model.encoder.layers, "layer_norm1",
                      lambda model: model.vision_model.pre_layrnorm),
}


def target_module(case: Case, model: Any, layer: int, point: str) -> torch.nn.Module:
    """The module whose output is `point` of `layer`."""
    blocks = case.blocks(model)
    if point == "attention_input":
        return getattr(blocks[layer], case.first_norm)
    if point == "block_output":
        return blocks[layer]
    return blocks[layer - 1] if layer > 0 else case.embeddings(model)


@dataclass(frozen=True)
class Reference:
    """One case's reference model, wrapped for pytorch-grad-cam, and its pixel values."""

    case: Case
    model: Any
    wrapped: torch.nn.Module
    pixel_values: torch.Tensor  # [1, 3, height, width]

    @property
    def layout(self) -> tuple[int, int, int]:
        """(special tokens, grid rows, grid columns)."""
        vision = VISION_CASES_BY_NAME[self.case.model]
        return len(vision.special_tokens), *vision.grid

    def grad_cam(self, method: str, layer: int, point: str) -> np.ndarray:
        """pytorch-grad-cam's map [height, width] (its scaling and resize)."""
        grad_cam = import_grad_cam()
        cam_class = getattr(grad_cam, GRAD_CAM_CLASSES[method])
        with cam_class(model=self.wrapped, target_layers=[target_module(self.case, self.model, layer, point)],
                       reshape_transform=vit_reshape_transform(*self.layout)) as cam:
            return cam(input_tensor=self.pixel_values, targets=[self.case.score])[0]

    def by_hand(self, method: str, layer: int, point: str) -> tuple[float, np.ndarray]:
        """(target score, raw map [rows, columns]) from torch.autograd on the same module."""
        kept: list[torch.Tensor] = []
        handle = target_module(self.case, self.model, layer, point).register_forward_hook(
            lambda module, inputs, output: kept.append(output))
        try:
            score = self.case.score(self.wrapped(self.pixel_values)[0])
        finally:
            handle.remove()
        (gradient,) = torch.autograd.grad(score, kept[0])
        special, rows, columns = self.layout
        activations, gradients = kept[0][0, special:].detach(), gradient[0, special:]  # [patches, channels]
        if method == "grad_cam":
            raw = activations @ gradients.mean(dim=0)
        elif method == "hi_res_cam":
            raw = (gradients * activations).sum(dim=1)
        elif method == "xgrad_cam":
            raw = activations @ ((gradients * activations).sum(dim=0) / (activations.sum(dim=0) + 1e-7))
        else:
            raw = (gradients.clamp(min=0) * activations).sum(dim=1)
        return float(score.detach()), raw.clamp(min=0).reshape(rows, columns).numpy()


_REFERENCES: dict[str, Reference] = {}


def reference(vision_dirs: dict[str, Path], name: str) -> Reference:
    """The reference of case `name` (loaded once)."""
    if name not in _REFERENCES:
        case = CASES[name]
        model = reference_vision_model(vision_dirs, name)
        _REFERENCES[name] = Reference(case, model, case.wrap(model, vision_dirs),
                                      reference_pixel_values(vision_dirs, name, IMAGE))
    return _REFERENCES[name]


def scale(maps: np.ndarray) -> np.ndarray:
    """pytorch-grad-cam's scale_cam_image of one map, without the resize."""
    maps = maps - np.min(maps)
    return maps / (1e-7 + np.max(maps))


def as_grad_cam(result: Map) -> np.ndarray:
    """The server's map scaled as pytorch-grad-cam scales its own: the grid's min-max
    scaling applied to the upsampled map, then min-max scaling again."""
    low, span = result.grid.min(), (result.grid - result.grid.min()).max()
    first = (result.upsampled - low) / (1e-7 + span)
    return scale(np.maximum(first, 0))


# ---- tests ----------------------------------------------------------------------------------


REFERENCE_SETTINGS = [(name, "attention_input", None) for name in CASES] + [
    ("vit-classifier", "block_input", 1), ("vit-classifier", "block_input", 0), ("vit-classifier", "block_output", 0),
]
SCALE_FREE = {("hi_res_cam", "block_input", 1), ("hi_res_cam", "block_output", 0)}
"""HiResCAM on the residual stream entering the last block: a patch token there reaches
the [CLS]-reading head only through that block's first norm, and a LayerNorm is
invariant to scaling its input (up to its epsilon), so sum_c G_c A_c = 0 for every patch
(Euler's theorem for a degree-0 homogeneous function): both maps are rounding noise,
which min-max scaling would blow up; only their raw size is compared."""
ROUNDING = 1e-6


@pytest.mark.parametrize("method", list(METHODS))
@pytest.mark.parametrize(("name", "point", "layer"), REFERENCE_SETTINGS,
                         ids=[f"{name}-{point}-{layer}" for name, point, layer in REFERENCE_SETTINGS])
def test_cams_match_pytorch_grad_cam_and_autograd(vision_server: InProcessServer, vision_dirs: dict[str, Path],
                                                   name: str, point: str, layer: int | None, method: str) -> None:
    ours = stream(vision_server, request(name, CASES[name].target, method, layer=layer, point=point))
    assert [item.method for item in ours] == [method]
    result = ours[0]
    ref = reference(vision_dirs, name)
    at = TINY_LAYERS - 1 if layer is None else layer  # unset: the last block
    score, raw = ref.by_hand(method, at, point)
    assert result.target_score == pytest.approx(score, abs=TOLERANCE)
    np.testing.assert_allclose(result.grid, raw, rtol=0, atol=TOLERANCE)
    special = len(VISION_CASES_BY_NAME[name].special_tokens)
    np.testing.assert_array_equal(result.scores[:special], 0)
    np.testing.assert_array_equal(result.scores[special:], result.grid.flatten())
    if (method, point, at) in SCALE_FREE:
        assert raw.max() < ROUNDING and result.grid.max() < ROUNDING
        return
    expected = ref.grad_cam(method, at, point)
    assert result.upsampled.shape == expected.shape == tuple(ref.pixel_values.shape[2:])
    np.testing.assert_allclose(as_grad_cam(result), expected, rtol=0, atol=TOLERANCE)


def test_also_computes_every_cam_from_one_pass_as_separate_requests_do(vision_server: InProcessServer) -> None:
    target = CASES["deit-classifier"].target
    together = stream(vision_server, request("deit-classifier", target, "hi_res_cam",
                                             also=("layer_cam", "grad_cam", "xgrad_cam")))
    assert [item.method for item in together] == ["hi_res_cam", "layer_cam", "grad_cam", "xgrad_cam"]
    assert len({item.target_score for item in together}) == 1
    for item in together:
        (alone,) = stream(vision_server, request("deit-classifier", target, item.method))
        assert alone.method == item.method and alone.target_score == item.target_score
        np.testing.assert_array_equal(alone.grid, item.grid)
        np.testing.assert_array_equal(alone.upsampled, item.upsampled)


def test_also_runs_one_forward_and_one_backward_from_the_cam_layer(vision_dirs: dict[str, Path],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    from introspect.config import ModelSpec
    from introspect.methods import method_for
    from introspect.models import load_model
    from introspect.requests import CamSettings, ImageSpec, InputSpec, SaliencyQuery, TargetSpec

    loaded = load_model(ModelSpec("vit", vision_dirs["vit-classifier"]), torch.device("cpu"), "float32")
    forwards: list[bool] = []  # per forward through block 0: whether its output is in a graph
    loaded.hooks.modules.blocks[0].register_forward_hook(lambda module, inputs, output: forwards.append(
        (output if isinstance(output, torch.Tensor) else output[0]).requires_grad))
    backwards: list[int] = []
    grad = torch.autograd.grad
    monkeypatch.setattr(torch.autograd, "grad", lambda *args, **kwargs: (backwards.append(1), grad(*args, **kwargs))[1])
    query = SaliencyQuery(model="vit", input=InputSpec(image=ImageSpec(encoded=PNG)),
                          target=TargetSpec("class_score", class_index=CLASS), method="grad_cam",
                          cam=CamSettings(also=("hi_res_cam", "xgrad_cam", "layer_cam")))
    method = method_for(query)
    emitted: list[Any] = []

    class Sink:
        def check(self) -> None:
            """Never cancelled."""

        def emit(self, item: Any) -> None:
            emitted.append(item)

    method.run(loaded, query, method.prepare(loaded.description, query), Sink())  # type: ignore[arg-type]
    assert [item.method for item in emitted[1:]] == ["grad_cam", "hi_res_cam", "xgrad_cam", "layer_cam"]
    assert forwards == [False], "one forward, building no graph before the CAM layer (the last)"
    assert len(backwards) == 1


def test_the_default_point_gives_a_map_and_the_last_block_output_gives_zeros(vision_server: InProcessServer) -> None:
    target = CASES["vit-classifier"].target
    (default,) = stream(vision_server, request("vit-classifier", target, "grad_cam"))
    assert default.grid.max() > 0
    # the head reads [CLS] after a per-token norm: no patch token of the last block's
    # output reaches the logits
    zero = stream(vision_server, request("vit-classifier", target, "grad_cam", point="block_output",
                                         also=("hi_res_cam", "xgrad_cam", "layer_cam")))
    assert len(zero) == 4
    for item in zero:
        np.testing.assert_array_equal(item.grid, 0)
        np.testing.assert_array_equal(item.upsampled, 0)


BAD = {
    "layer past the last": (dict(layer=2), "cam.layer"),
    "negative layer": (dict(layer=-1), "cam.layer"),
    "also repeats the method": (dict(also=("grad_cam",)), "cam.also"),
    "also repeats itself": (dict(also=("layer_cam", "layer_cam")), "cam.also"),
}


@pytest.mark.parametrize(("options", "field"), list(BAD.values()), ids=list(BAD))
def test_bad_cam_options_name_their_field(vision_server: InProcessServer, options: dict[str, Any], field: str) -> None:
    with pytest.raises(grpc.RpcError) as error:
        stream(vision_server, request("vit-classifier", CASES["vit-classifier"].target, "grad_cam", **options))
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violation(error.value) == field


def test_also_takes_cams_only(vision_server: InProcessServer) -> None:
    message = request("vit-classifier", CASES["vit-classifier"].target, "grad_cam")
    message.cam.also.append(pb.SALIENCY_METHOD_GRADIENT)
    with pytest.raises(grpc.RpcError) as error:
        stream(vision_server, message)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violation(error.value) == "cam.also" and "not a CAM" in error.value.details()


def test_cams_need_an_image_model(server: InProcessServer) -> None:
    message = pb.StreamSaliencyRequest(model="classifier", input=pb.Input(text=pb.TextInput(text="a short text")),
                                       target=pb.Target(class_score=pb.ClassTarget(class_index=0)),
                                       method=pb.SALIENCY_METHOD_LAYER_CAM)
    with pytest.raises(grpc.RpcError) as error:
        stream(server, message)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "CAM methods need an image input" in error.value.details()
    assert violation(error.value) == "method"
