"""Class activation maps (CAMs) for vision transformers, from one forward and one backward.

The activations A [patches, channels] at one block's hook point and their gradient
G = d target / d A are read for the patch tokens only (special tokens dropped, as
pytorch-grad-cam's reshape transform for ViTs does), then each CAM is a map [patches]:

- Grad-CAM: Selvaraju et al. (2017), "Grad-CAM: Visual Explanations from Deep Networks
  via Gradient-based Localization". w_c = mean_p G_pc; map = ReLU(sum_c w_c A_pc).
- HiResCAM: Draelos & Carin (2020), "Use HiResCAM instead of Grad-CAM for faithful
  explanations of convolutional neural networks". map = ReLU(sum_c G_pc A_pc).
- XGrad-CAM: Fu et al. (2020), "Axiom-based Grad-CAM: Towards Accurate Visualization and
  Explanation of CNNs". w_c = sum_p(G_pc A_pc) / (sum_p A_pc + 1e-7);
  map = ReLU(sum_c w_c A_pc).
- LayerCAM: Jiang et al. (2021), "LayerCAM: Exploring Hierarchical Class Activation Maps
  for Localization". map = ReLU(sum_c ReLU(G_pc) A_pc).

These are pytorch-grad-cam's definitions (grad_cam.py, hirescam.py, xgrad_cam.py,
layer_cam.py). Maps are returned raw, not min-max normalised, laid out as the patch grid
[rows, columns] (and with `upsample` resized to the processed image).

Points: "attention_input" (default) is the hidden states entering the block's attention
(the first norm's output: HF ViT's layernorm_before, timm's blocks[-1].norm1, the layer
pytorch-grad-cam documents for ViTs); "block_input" and "block_output" the residual
stream before and after the block. At the last block's output of a model whose head
reads only [CLS] after a per-token norm, no patch token reaches the target: G is 0 on
every patch and so is every map (expected, not an error). HiResCAM on the residual
stream entering the last block of such a model (block_input of the last layer,
block_output of the one before) is rounding noise around 0: a patch token there reaches
the target only through the block's first norm, which is invariant to scaling its input,
so sum_c G_c A_c = 0 for every patch (Euler's theorem for homogeneous functions).

The hooked activation is made a fresh leaf that requires grad: the parameters do not,
nor do the pixels, so no graph is built before the CAM layer and the backward stops at
it. `cam.also` names further CAMs computed from the same A and G; each is sent as its own
final result after the requested one, with `method` set.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from functools import partial

import torch

from .. import hooks
from ..errors import require
from ..models import ModelDescription
from ..requests import SaliencyQuery
from ..results import SaliencyResult
from .attribution import AttributionProblem, Check, Technique

XGRAD_EPSILON = 1e-7  # pytorch-grad-cam's XGradCAM eps

CamMap = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""(A [patches, channels], G [patches, channels]) float32 -> map [patches]."""


def grad_cam(activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
    """ReLU(sum_c w_c A_c), w_c the mean over patches of G_c."""
    return torch.relu(activations @ gradients.mean(dim=0))


def hi_res_cam(activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
    """ReLU(sum_c G_c A_c), element-wise."""
    return torch.relu((gradients * activations).sum(dim=1))


def xgrad_cam(activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
    """ReLU(sum_c w_c A_c), w_c = sum_p(G A) / (sum_p A + 1e-7)."""
    weights = (gradients * activations).sum(dim=0) / (activations.sum(dim=0) + XGRAD_EPSILON)  # [channels]
    return torch.relu(activations @ weights)


def layer_cam(activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
    """ReLU(sum_c ReLU(G_c) A_c)."""
    return torch.relu((torch.relu(gradients) * activations).sum(dim=1))


CAMS: dict[str, CamMap] = {
    "grad_cam": grad_cam,
    "hi_res_cam": hi_res_cam,
    "xgrad_cam": xgrad_cam,
    "layer_cam": layer_cam,
}
POINTS = {"attention_input": hooks.ATTN_IN, "block_input": hooks.RESID_PRE, "block_output": hooks.RESID_POST}


@dataclass(frozen=True)
class CamOptions:
    """Validated CAM options."""

    layer: int
    point: str  # the hook point (hooks.ATTN_IN, RESID_PRE or RESID_POST)
    methods: tuple[str, ...]  # the requested CAM first, then cam.also in request order


def prepare(method: str, description: ModelDescription, query: SaliencyQuery) -> CamOptions:
    """Checks the model takes images, the layer (default: the last) and `also` (other
    CAMs, each once, not the requested one)."""
    require("image" in description.modalities, "method",
            f"CAM methods need an image input; model {description.name!r} takes text")
    settings = query.cam
    layers = description.num_layers
    layer = layers - 1 if settings.layer is None else settings.layer
    require(0 <= layer < layers, "cam.layer", f"{settings.layer} is outside the model's layers [0, {layers})")
    for name in settings.also:
        require(name in CAMS, "cam.also", f"{name!r} is not a CAM method; use {list(CAMS)}")
    methods = (method, *settings.also)
    require(len(set(methods)) == len(methods), "cam.also",
            f"{list(settings.also)} repeats a method (the requested {method!r} is always computed)")
    require(settings.point in POINTS, "cam.point", f"{settings.point!r} is not one of {list(POINTS)}")
    return CamOptions(layer, POINTS[settings.point], methods)


def activations_and_gradients(problem: AttributionProblem, layer: int, point: str) -> tuple[float, torch.Tensor, torch.Tensor]:
    """(target score, A, G): the patch tokens' activations A [patches, channels] at
    `point` of `layer` and G = d target / d A, float32, from one forward and backward."""
    image = problem.image
    assert image is not None
    kept: list[torch.Tensor] = []

    def keep(_: int, value: torch.Tensor) -> torch.Tensor:
        # value: [1, tokens, hidden]; a leaf: the graph starts here and the backward ends here
        leaf = value.detach().requires_grad_(True)
        kept.append(leaf)
        return leaf

    hookset = hooks.HookSet({point: keep}, {point: frozenset({layer})})
    with problem.model.hooks.active(hookset), torch.enable_grad():
        score = problem.scores(problem.embeddings[None])[0]
    assert len(kept) == 1, f"the {point} hook of layer {layer} ran {len(kept)} times"
    (gradient,) = torch.autograd.grad(score, kept[0], allow_unused=True)
    if gradient is None:  # the target does not depend on this point at all
        gradient = torch.zeros_like(kept[0])
    patches = slice(image.first_patch, image.first_patch + image.patches)
    return float(score.detach()), kept[0].detach()[0, patches].float(), gradient[0, patches].float()


def attribute(problem: AttributionProblem, options: CamOptions, check: Check) -> Iterator[SaliencyResult]:
    """One final result per CAM in `options.methods`, each with its `method` set."""
    assert problem.image is not None
    rows, columns = problem.image.grid_rows, problem.image.grid_columns
    target_score, activations, gradients = activations_and_gradients(problem, options.layer, options.point)
    for method in options.methods:
        grid = CAMS[method](activations, gradients).reshape(rows, columns)
        yield replace(problem.grid_result(grid, target_score=target_score), method=method)


def _technique(name: str) -> Technique:
    """The Technique of one CAM (its `also` may add the others)."""
    return Technique(name, partial(prepare, name), attribute)


GRAD_CAM, HI_RES_CAM, XGRAD_CAM, LAYER_CAM = (_technique(name) for name in CAMS)
