"""Gradient saliency on the input features (word embeddings, or an image's processed
pixels with the colour channels as the dimension): the plain gradient, gradient x input,
and SmoothGrad.

- Gradient: Simonyan, Vedaldi & Zisserman (2014), "Deep Inside Convolutional Networks:
  Visualising Image Classification Models and Saliency Maps". Per token, the L2 norm of
  d target / d embedding over the hidden dimension.
- Gradient x input: Shrikumar et al. (2016), "Not Just a Black Box: Learning Important
  Features Through Propagating Activation Differences". Per token, the sum over the
  hidden dimension of gradient * embedding.
- SmoothGrad: Smilkov et al. (2017), "SmoothGrad: removing noise by adding noise". The
  gradient averaged over copies of the features with Gaussian noise (std = noise_level
  * (max - min) of the input's features: embedding values, or processed pixel values, as
  the paper scales noise by the image's range; on every position, from a seeded
  generator); per position, the L2 norm of that mean gradient (per-dimension: the mean
  gradient).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from ..errors import require
from ..models import ModelDescription
from ..requests import SaliencyQuery
from ..results import SaliencyResult
from ..budget import Footprint
from .attribution import AttributionProblem, Check, Technique, batches

DEFAULT_NOISE_LEVEL = 0.1
DEFAULT_SAMPLES = 20
MAX_SAMPLES = 4096


@dataclass(frozen=True)
class GradientOptions:
    """Options of the gradient and gradient x input techniques."""

    per_dimension: bool


@dataclass(frozen=True)
class SmoothGradOptions:
    """Validated SmoothGrad options."""

    per_dimension: bool
    noise_level: float
    samples: int
    seed: int
    batch_size: int  # 0: automatic


def prepare_gradient(description: ModelDescription, query: SaliencyQuery) -> GradientOptions:
    """Gradient methods take no options but per_dimension."""
    return GradientOptions(per_dimension=query.per_dimension)


def gradient(problem: AttributionProblem, options: GradientOptions, check: Check) -> Iterator[SaliencyResult]:
    """L2 norm over the hidden dimension of d target / d input embedding, per token."""
    scores, gradients = problem.scores_and_gradients(problem.embeddings[None])
    yield gradient_result(problem, options, scores[0], gradients[0])


def gradient_result(problem: AttributionProblem, options: GradientOptions, score: torch.Tensor,
                    gradients: torch.Tensor) -> SaliencyResult:
    """The gradient's result from the target `score` and its gradients [positions, dims]."""
    return problem.result(gradients.norm(dim=-1), gradients if options.per_dimension else None,
                          target_score=float(score))


def gradient_x_input(problem: AttributionProblem, options: GradientOptions, check: Check) -> Iterator[SaliencyResult]:
    """Sum over the hidden dimension of gradient * input embedding, per token."""
    scores, gradients = problem.scores_and_gradients(problem.embeddings[None])
    yield gradient_x_input_result(problem, options, scores[0], gradients[0])


def gradient_x_input_result(problem: AttributionProblem, options: GradientOptions, score: torch.Tensor,
                            gradients: torch.Tensor) -> SaliencyResult:
    """Gradient x input's result from the target `score` and its gradients [positions, dims]."""
    attributions = gradients * problem.embeddings  # [length, hidden]
    return problem.result(attributions.sum(dim=-1), attributions if options.per_dimension else None,
                          target_score=float(score))


def prepare_smoothgrad(description: ModelDescription, query: SaliencyQuery) -> SmoothGradOptions:
    """Resolves defaults (noise 0.1, 20 samples) and checks ranges."""
    settings = query.smoothgrad
    noise_level = settings.noise_level or DEFAULT_NOISE_LEVEL
    samples = settings.samples or DEFAULT_SAMPLES
    require(math.isfinite(noise_level) and noise_level >= 0, "smoothgrad.noise_level",
            f"must be a finite number >= 0, got {settings.noise_level}")
    require(0 < samples <= MAX_SAMPLES, "smoothgrad.samples", f"must be in [0, {MAX_SAMPLES}], got {settings.samples}")
    require(settings.batch_size >= 0, "smoothgrad.batch_size", f"must be >= 0, got {settings.batch_size}")
    require(0 <= settings.seed < 2**64, "smoothgrad.seed", f"must be in [0, 2**64), got {settings.seed}")
    return SmoothGradOptions(query.per_dimension, noise_level, samples, settings.seed, settings.batch_size)


def smoothgrad_footprint(problem: AttributionProblem, options: SmoothGradOptions) -> Footprint:
    """A batch of noisy samples is one forward and backward per sample, with its noise
    (float32, the features' size)."""
    noise = problem.embeddings.numel() * 4
    return problem.footprint(options.samples, gradients=True, per_row=noise)


def smoothgrad(problem: AttributionProblem, options: SmoothGradOptions, check: Check) -> Iterator[SaliencyResult]:
    """The mean gradient over noisy embeddings; a partial result after every batch of
    samples (`steps` = samples so far), the final one after all of them."""
    embeddings = problem.embeddings
    std = options.noise_level * float(embeddings.max() - embeddings.min())
    generator = torch.Generator().manual_seed(options.seed)  # on the CPU: the same noise on every device
    batch_size = options.batch_size
    with torch.no_grad():
        target_score = float(problem.scores(embeddings[None])[0])
    total = torch.zeros_like(embeddings)
    for rows in batches(options.samples, batch_size):
        check()
        # one draw per sample: the noise does not depend on the batch size
        noise = torch.stack([torch.randn(embeddings.shape, generator=generator) for _ in rows]).to(embeddings.device) * std
        _, gradients = problem.scores_and_gradients(embeddings[None] + noise)
        total += gradients.sum(dim=0)
        mean = total / rows.stop
        final = rows.stop == options.samples
        yield problem.result(
            mean.norm(dim=-1),
            mean if options.per_dimension and final else None,
            target_score=target_score,
            steps=rows.stop,
            final=final,
        )


GRADIENT = Technique("gradient", prepare_gradient, gradient, per_dimension=True, from_gradients=gradient_result)
GRADIENT_X_INPUT = Technique("gradient_x_input", prepare_gradient, gradient_x_input, per_dimension=True,
                             from_gradients=gradient_x_input_result)
SMOOTHGRAD = Technique(
    "smoothgrad", prepare_smoothgrad, smoothgrad, per_dimension=True, footprint=smoothgrad_footprint
)
