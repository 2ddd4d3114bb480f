"""Integrated gradients on the input embeddings.

Sundararajan, Taly & Yan (2017), "Axiomatic Attribution for Deep Networks":

    attribution = (x - x') * integral over a in [0, 1] of d f(x' + a (x - x')) / d x

with x the input's features (word embeddings, or an image's processed pixels) and x'
the baseline's (for images: a black, blurred or noise image, attribution.py). The integral is a quadrature
rule over `steps` nodes; the nodes are evaluated in batches, each one forward and one
backward whose graph is freed before the next. Completeness says the attributions sum to
f(x) - f(x'); the convergence delta is how far they are from it.

Progressive mode (tolerance > 0) refines the rule at 8, 16, 32, ... nodes up to `steps`
(5, 9, 17, 33, ... for the trapezoid rule, whose nodes then nest), streams each
refinement with its delta, and stops at the first whose delta is within the tolerance. A
node evaluated by an earlier refinement is never evaluated again: its per-token gradient
products are kept (and its gradients, when per-dimension attributions are asked for), so
nested rules (trapezoid, left/right Riemann) cost no more than one run at the final step
count. Gauss-Legendre and midpoint nodes do not nest: every refinement evaluates new ones
(8 + 16 + 32 nodes to reach 32). Without a rule, progressive mode therefore uses the
trapezoid rule, and a fixed step count Gauss-Legendre. (Measured on MiniLM, the nested
trapezoid reached completeness deltas of 0.5-5% with fewer evaluated nodes than
progressive Gauss-Legendre or Clenshaw-Curtis; the integrand, along the path, has sharp
features that favour no rule of high order at these node counts.)

The Gauss-Legendre and Riemann rules match Captum's `approximation_methods`, except the
trapezoid rule, whose weights here are 1/(n-1) (halved at both ends) and sum to 1;
Captum's sum to (n-1)/n.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import require
from ..models import ModelDescription
from ..requests import BASELINES, DEFAULT, INTEGRATION_RULES, SaliencyQuery
from ..results import SaliencyResult
from ..budget import Footprint
from .attribution import DEFAULT_BLUR_SIGMA, AttributionProblem, Check, Technique, baseline_embeddings, batches
from .gauss_legendre import gauss_legendre

DEFAULT_STEPS = 50
DEFAULT_PROGRESSIVE_STEPS = 128  # the most steps a tolerance may take when none are given
MAX_STEPS = 4096  # the most steps (nodes) a request may ask for; stated in the proto and README
FIRST_REFINEMENT = 8
# the trapezoid rule is refined at 2^k + 1 nodes, which nest; it starts at 5, as a
# refinement that reuses every node costs nothing but its own new nodes
FIRST_TRAPEZOID_REFINEMENT = 5
_NODE_DIGITS = 12  # nodes equal to this many decimals are the same node


@dataclass(frozen=True)
class IntegratedGradientsOptions:
    """Validated integrated-gradients options."""

    baseline: str
    baseline_token_ids: tuple[int, ...]
    rule: str
    steps: int
    batch_size: int  # 0: automatic
    tolerance: float  # 0: one result at `steps`
    per_dimension: bool
    blur_sigma: float = DEFAULT_BLUR_SIGMA  # pixels; the blur baseline's Gaussian
    seed: int = 0  # the noise baseline's random pixels


def quadrature(rule: str, steps: int) -> tuple[np.ndarray, np.ndarray]:
    """(nodes, weights) of a rule on [0, 1], nodes ascending, weights summing to 1."""
    if rule == "gauss_legendre":
        nodes, weights = gauss_legendre(steps)  # milliseconds even at MAX_STEPS, cached
        return 0.5 * (nodes + 1.0), 0.5 * weights
    index = np.arange(steps, dtype=np.float64)
    if rule == "riemann_left":
        return index / steps, np.full(steps, 1.0 / steps)
    if rule == "riemann_right":
        return (index + 1.0) / steps, np.full(steps, 1.0 / steps)
    if rule == "riemann_middle" or steps == 1:  # a one-node trapezoid: the midpoint
        return (index + 0.5) / steps, np.full(steps, 1.0 / steps)
    weights = np.full(steps, 1.0 / (steps - 1))
    weights[[0, -1]] /= 2.0
    return index / (steps - 1), weights


def refinement_schedule(rule: str, steps: int, progressive: bool) -> list[int]:
    """Node counts to evaluate: [steps], or 8, 16, 32, ... (5, 9, 17, 33, ... for the
    trapezoid, whose doublings then nest) below `steps`, then `steps`."""
    if not progressive:
        return [steps]
    trapezoid = rule == "riemann_trapezoid"
    schedule = []
    count = FIRST_TRAPEZOID_REFINEMENT if trapezoid else FIRST_REFINEMENT
    while count < steps:
        schedule.append(count)
        count = 2 * count - 1 if trapezoid else 2 * count
    return [*schedule, steps]


def prepare(description: ModelDescription, query: SaliencyQuery) -> IntegratedGradientsOptions:
    """Resolves defaults (50 Gauss-Legendre steps; with a tolerance, the trapezoid rule up
    to 129 steps; blur sigma 5) and checks every option's range. Options of a baseline
    that is not chosen are refused, as baseline_token_ids is: blur_sigma belongs to the
    blur baseline and a non-zero seed to the noise baseline."""
    field = "integrated_gradients"
    settings = query.integrated_gradients
    require(settings.baseline in BASELINES, f"{field}.baseline", f"unknown baseline {settings.baseline!r}")
    rule = settings.rule
    if rule == DEFAULT:
        rule = "riemann_trapezoid" if settings.tolerance > 0 else "gauss_legendre"
    require(rule in INTEGRATION_RULES, f"{field}.rule", f"unknown rule {settings.rule!r}; use one of {INTEGRATION_RULES}")
    progressive = settings.tolerance > 0
    trapezoid = 1 if rule == "riemann_trapezoid" else 0
    steps = settings.steps or (DEFAULT_PROGRESSIVE_STEPS + trapezoid if progressive else DEFAULT_STEPS)
    require(0 < steps <= MAX_STEPS, f"{field}.steps",
            f"must be in [0, {MAX_STEPS}] (0 means {DEFAULT_STEPS}, or up to {DEFAULT_PROGRESSIVE_STEPS} "
            f"with a tolerance), got {settings.steps}")
    require(settings.batch_size >= 0, f"{field}.batch_size",
            f"must be >= 0 (0 picks automatically), got {settings.batch_size}")
    require(math.isfinite(settings.tolerance) and settings.tolerance >= 0, f"{field}.tolerance",
            f"must be a finite number >= 0, got {settings.tolerance}")
    ids = settings.baseline_token_ids
    if settings.baseline == "tokens":
        require(len(ids) > 0, f"{field}.baseline_token_ids", "BASELINE_TOKENS needs the baseline's token ids")
        bad = [token for token in ids if not 0 <= token < description.vocab_size]
        require(not bad, f"{field}.baseline_token_ids",
                f"ids {bad[:5]} are outside the vocabulary [0, {description.vocab_size})")
    else:
        require(not ids, f"{field}.baseline_token_ids", "given, but the baseline is not BASELINE_TOKENS")
    sigma = settings.blur_sigma
    require(math.isfinite(sigma) and sigma >= 0, f"{field}.blur_sigma", f"must be a finite number >= 0, got {sigma}")
    require(sigma == 0 or settings.baseline == "blur", f"{field}.blur_sigma",
            f"given ({sigma}), but the baseline is not BASELINE_BLUR")
    require(settings.seed == 0 or settings.baseline == "noise", f"{field}.seed",
            f"given ({settings.seed}), but the baseline is not BASELINE_NOISE")
    require(0 <= settings.seed < 2**64, f"{field}.seed", f"must be in [0, 2**64), got {settings.seed}")
    return IntegratedGradientsOptions(
        baseline=settings.baseline,
        baseline_token_ids=ids,
        rule=rule,
        steps=steps,
        batch_size=settings.batch_size,
        tolerance=settings.tolerance,
        per_dimension=query.per_dimension,
        blur_sigma=sigma or DEFAULT_BLUR_SIGMA,
        seed=settings.seed,
    )


def baseline_of(problem: AttributionProblem, options: IntegratedGradientsOptions) -> torch.Tensor:
    """The baseline's features [positions, dims] (INVALID_ARGUMENT for one the input's
    modality or the model lacks)."""
    return baseline_embeddings(problem, options.baseline, options.baseline_token_ids, "integrated_gradients.baseline",
                               blur_sigma=options.blur_sigma, seed=options.seed)


def validate(problem: AttributionProblem, options: IntegratedGradientsOptions) -> None:
    """The baseline must suit the input's modality, exist for the model and match the
    input's length."""
    baseline_of(problem, options)


def footprint(problem: AttributionProblem, options: IntegratedGradientsOptions) -> Footprint:
    """A batch of nodes is one forward and backward per node; what is kept across
    batches is each node's per-position products (float64: per token, or per pixel) and,
    for per-dimension attributions with a tolerance, each node's gradients too."""
    kept = 2 * options.steps * problem.positions * 8  # non-nested refinements: 8 + 16 + ... < 2 x steps nodes
    if options.per_dimension and options.tolerance > 0:
        kept += options.steps * problem.embeddings.numel() * 4
    return problem.footprint(
        options.steps, gradients=True, fixed=kept,
        advice=", or lower integrated_gradients.steps (or drop per_dimension)",
    )


class _EvaluatedNodes:
    """What the nodes evaluated so far contributed: per node, the per-token products of
    the gradient with (x - x') [positions], so that a later rule can weight them anew. With
    per-dimension attributions also the gradients [positions, dims]: per node when later
    rules may reuse them (progressive mode), else only their weighted sum."""

    def __init__(self, per_dimension: bool, progressive: bool) -> None:
        self.per_node = per_dimension and progressive
        self.summed = per_dimension and not progressive
        self.products: dict[float, torch.Tensor] = {}
        self.gradients: dict[float, torch.Tensor] = {}
        self.gradient_sum: torch.Tensor | None = None

    @staticmethod
    def key(node: float) -> float:
        """The node's identity (equal nodes of different rules are one node)."""
        return round(float(node), _NODE_DIGITS)

    def missing(self, nodes: np.ndarray) -> np.ndarray:
        """Indices of the nodes not evaluated yet."""
        return np.array([index for index, node in enumerate(nodes) if self.key(node) not in self.products], dtype=int)

    def add(self, nodes: np.ndarray, weights: np.ndarray, gradients: torch.Tensor, difference: torch.Tensor) -> None:
        """Keeps what the gradients [batch, positions, dims] at `nodes` (of rule weights
        `weights`) contribute."""
        products = (gradients.double() * difference.double()).sum(dim=-1)  # [batch, positions]
        for node, product, gradient in zip(nodes, products, gradients):
            self.products[self.key(node)] = product
            if self.per_node:
                self.gradients[self.key(node)] = gradient
        if self.summed:
            rule = torch.tensor(weights, dtype=torch.float64, device=gradients.device)
            weighted = torch.einsum("n,nth->th", rule, gradients.double())
            self.gradient_sum = weighted if self.gradient_sum is None else self.gradient_sum + weighted

    def keep_only(self, nodes: np.ndarray) -> None:
        """Forgets the nodes not in `nodes`: a later, finer rule of a nested family
        contains every node of this one, and no other rule reuses any."""
        wanted = {self.key(node) for node in nodes}
        for store in (self.products, self.gradients):
            for node in [node for node in store if node not in wanted]:
                del store[node]

    def integrate(self, nodes: np.ndarray, weights: np.ndarray) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(per-position attributions [positions] float64, the weighted gradient sum
        [positions, dims] float64 with per-dimension attributions) under the rule."""
        keys = [self.key(node) for node in nodes]
        products = torch.stack([self.products[key] for key in keys])  # [nodes, positions]
        rule = torch.tensor(weights, dtype=torch.float64, device=products.device)
        scores = rule @ products
        if self.per_node:
            return scores, torch.einsum("n,nth->th", rule, torch.stack([self.gradients[key] for key in keys]).double())
        return scores, self.gradient_sum


def integrated_gradients(
    problem: AttributionProblem, options: IntegratedGradientsOptions, check: Check
) -> Iterator[SaliencyResult]:
    """Attributions after each refinement (just one without a tolerance), each with its
    convergence delta; the last is final."""
    inputs = problem.embeddings  # [positions, dims]
    baseline = baseline_of(problem, options)  # [positions, dims]
    difference = inputs - baseline
    with torch.no_grad():
        target_score, baseline_score = problem.scores(torch.stack([inputs, baseline])).tolist()
    batch_size = options.batch_size
    schedule = refinement_schedule(options.rule, options.steps, progressive=options.tolerance > 0)
    progressive = len(schedule) > 1
    evaluated = _EvaluatedNodes(options.per_dimension, progressive)
    for refinement, steps in enumerate(schedule):
        nodes, weights = quadrature(options.rule, steps)
        pending = evaluated.missing(nodes)
        for rows in batches(len(pending), batch_size):
            check()
            chosen = pending[rows.start : rows.stop]
            alphas = torch.tensor(nodes[chosen], dtype=torch.float32, device=inputs.device)
            _, gradients = problem.scores_and_gradients(baseline + alphas[:, None, None] * difference)
            evaluated.add(nodes[chosen], weights[chosen], gradients, difference)
        evaluated.keep_only(nodes)
        scores, gradient_sum = evaluated.integrate(nodes, weights)
        delta = abs(float(scores.sum()) - (target_score - baseline_score))
        converged = options.tolerance == 0 or delta <= options.tolerance
        final = refinement == len(schedule) - 1 or converged
        yield problem.result(
            scores,
            difference.double() * gradient_sum if final and gradient_sum is not None else None,
            target_score=target_score,
            baseline_score=baseline_score,
            steps=steps,
            convergence_delta=delta,
            final=final,
            converged=converged,
        )
        if final:
            return


INTEGRATED_GRADIENTS = Technique(
    "integrated_gradients", prepare, integrated_gradients, validate=validate, per_dimension=True, footprint=footprint
)
