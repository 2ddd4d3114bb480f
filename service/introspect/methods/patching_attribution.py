"""Attribution patching: a first-order estimate of activation patching for every patch
at once, from one forward of each run and one backward, which give the pair's baseline
too (PatchingTechnique.baseline): the pair is forwarded for nothing else.

Nanda (2023), "Attribution Patching: Activation Patching At Industrial Scale"; Syed,
Rager & Conmy (2023), "Attribution Patching Outperforms Automated Circuit Discovery".
With R the patched run (the corrupted run when denoising, the clean run when noising),
S the source run (the other one), M R's metric and a an activation, patching a_R with
a_S changes M by about

    change = (a_S - a_R) . dM/da (at a_R),

the first term of M's Taylor series, summed over the spot's dimensions:

- resid_pre, resid_post, attn_out, mlp_out: per (layer, clean position), over d_model;
- head: per (layer, head), over every position and head_dim of attn.z (the head's
  output before the output projection), all positions patched together;
- head_position: per (layer, head, clean position), over head_dim of attn.z.

Positions are clean positions; the activation of clean position p is read at p in the
clean run and at alignment[p] in the corrupted run. A clean position without a
counterpart (alignment -1) is never patched: its per-position values are NaN and it adds
nothing to a head's sum.

Values are R's metric (the pair's baseline score of that run) plus the change, so they
read like exact patching's "metric with the patch", and are normalised the same way
(pair.normalized). The forwards and the backward run for the pair's baseline, just
before its results (patching.run); the estimates are reduced to one value per spot there and kept
with the pair (PatchingPair.prepared), not the activations and gradients, and streamed by
`run`. With `with_exact` the exact activation patching results of the same points and
layers follow (technique "activation", its own forwards), then per point the correlation
of the two methods' changes (patching_correlation).

The KL metric when noising: R is the clean run and M = KL(clean || R), which is 0 at
R = clean and never negative, a minimum, so dM/da = 0 at every activation and every
first-order estimate is 0 (the true change is second order). Attribution patching
cannot rank noising patches by KL; denoising (R corrupted, M > 0) has a gradient.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

import torch

from ..errors import require
from ..models import LoadedModel, ModelDescription
from ..requests import PatchingQuery
from ..results import PatchingLayerResult
from .heads import forward_footprint
from .patching import (
    HOOK_POINTS, TECHNIQUES, Check, EncodedPair, PatchingOptions, PatchingPair,
    PatchingTechnique, float_array, register,
)
from .patching_correlation import correlations
from .patching_gradients import Key, PairGradients, pair_gradients

HEAD_POINTS = ("head", "head_position")
# (patch point, layer) -> estimated changes [positions], [heads] or [heads, positions]
Estimates = dict[tuple[str, int], torch.Tensor]


@dataclass(frozen=True)
class AttributionOptions:
    """Attribution's own options: the activation technique's options with `with_exact`."""

    exact: Any


def prepare(description: ModelDescription, query: PatchingQuery) -> AttributionOptions:
    """Validates the exact technique's options too when `with_exact` asks for it."""
    if not query.with_exact:
        return AttributionOptions(None)
    exact = TECHNIQUES.get("activation")
    require(exact is not None, "with_exact", "exact activation patching is not served by this server")
    assert exact is not None
    return AttributionOptions(exact.prepare(description, query))


def patched_run(options: PatchingOptions) -> str:
    """The run whose activations are patched: "corrupted" when denoising, else "clean"."""
    return "corrupted" if options.direction == "denoising" else "clean"


def validate(model: LoadedModel, options: PatchingOptions, pair: EncodedPair) -> None:
    """Before any forward and the stream header: the model offers every point, and the
    patched run's forward with gradients (and its backward) fits the memory budget, the
    footprint's fixed part standing for the source run's activations read before it."""
    offered = model.hooks.available
    for point in options.points:
        require(HOOK_POINTS[point] in offered, "points",
                f"model {model.name!r} has no {point} patch point (its modules were not found at load)")
    tokens = max(pair.clean.width, pair.corrupted.width if pair.corrupted is not None else 0)
    model.budget.require(forward_footprint(model, tokens, 1, gradients=True), rows=1)
    if options.with_exact:
        TECHNIQUES["activation"].validate(model, replace(options, method="activation", with_exact=False,
                                                         technique=options.technique.exact), pair)


def baseline(model: LoadedModel, options: PatchingOptions, pair: EncodedPair, check: Check) -> PatchingPair:
    """The pair's baseline from attribution's own forwards (pair_gradients), and every
    spot's estimated change from its backward, kept with the pair (Estimates)."""
    patched = patched_run(options)
    hook_points = tuple(dict.fromkeys(HOOK_POINTS[point] for point in options.points))
    gradients = pair_gradients(model, options, pair, patched, hook_points, options.layers, check)
    spots = AlignedSpots.of(pair, patched, model.device)
    terms = {key: spots.terms(gradients, key) for key in gradients.gradients}  # head and head_position share attn.z's
    estimates: Estimates = {
        (point, layer): spots.changes(point, terms[(HOOK_POINTS[point], layer)])
        for point in options.points for layer in options.layers
    }
    return replace(gradients.pair, prepared=estimates)


def run(model: LoadedModel, options: PatchingOptions, pair: PatchingPair, check: Check) -> Iterator[object]:
    """Streams one PatchingLayerResult per (point, layer) in request order (the
    estimates `baseline` kept); with `with_exact` then the exact results and one
    correlation per point."""
    patched = patched_run(options)
    estimates: Estimates = pair.prepared
    unpatched = pair.corrupted_score if patched == "corrupted" else pair.clean_score  # R's metric
    estimated = []
    for point in options.points:
        for layer in options.layers:
            result = layer_result(pair, "attribution", point, layer, unpatched + estimates[(point, layer)])
            estimated.append(result)
            yield result
    if options.with_exact:
        exact_options = replace(options, method="activation", with_exact=False, technique=options.technique.exact)
        exact = []
        for item in TECHNIQUES["activation"].run(model, exact_options, pair, check):
            if isinstance(item, PatchingLayerResult):
                exact.append(item)
            yield item
        yield from correlations(pair.index, estimated, exact, unpatched, options.points)


def layer_result(pair: PatchingPair, method: str, point: str, layer: int, values: torch.Tensor) -> PatchingLayerResult:
    """A PatchingLayerResult of `values` [positions], [heads] or [heads, positions]."""
    positions = () if point == "head" else pair.positions
    heads = tuple(range(values.shape[0])) if point in HEAD_POINTS else ()
    normalized = pair.normalized(values)
    return PatchingLayerResult(pair.index, method, point, layer, positions, heads, float_array(values),
                               None if normalized is None else float_array(normalized))


@dataclass(frozen=True)
class AlignedSpots:
    """Per clean position: where its activation sits in the source run and in the
    patched run, and whether it has a counterpart at all; and the clean positions
    patched. On the model's device; gathers are index_select (on CPU several times
    faster than advanced indexing)."""

    source: torch.Tensor  # [clean positions] int64
    patched: torch.Tensor  # [clean positions] int64
    valid: torch.Tensor  # [clean positions] bool
    chosen: torch.Tensor  # [positions] int64: the pair's positions to patch

    @classmethod
    def of(cls, pair: EncodedPair, patched_run: str, device: torch.device) -> AlignedSpots:
        """The positions of `pair` for patching `patched_run` with the other run."""
        clean = torch.arange(len(pair.alignment), device=device)
        corrupted = torch.tensor(pair.alignment, dtype=torch.int64, device=device)
        valid = corrupted >= 0
        corrupted = corrupted.clamp(min=0)
        chosen = torch.tensor(pair.positions, dtype=torch.int64, device=device)
        if patched_run == "corrupted":
            return cls(clean, corrupted, valid, chosen)
        return cls(corrupted, clean, valid, chosen)

    def terms(self, gradients: PairGradients, key: Key) -> torch.Tensor:
        """(a_S - a_R) . dM/da_R per clean position [clean positions], or per clean
        position and head [clean positions, heads] at attn.z; NaN without counterpart."""
        source, patched, gradient = gradients.source[key], gradients.patched[key], gradients.gradients[key]
        # [clean positions, d_model | heads, head_dim]
        difference = source.index_select(0, self.source) - patched.index_select(0, self.patched)
        term = (difference * gradient.index_select(0, self.patched)).sum(dim=-1)  # [clean positions (, heads)]
        valid = self.valid.reshape(-1, *([1] * (term.dim() - 1)))
        return term.masked_fill(~valid, float("nan"))

    def changes(self, point: str, terms: torch.Tensor) -> torch.Tensor:
        """The estimated change of every spot of `point` at one layer from the terms of
        its hook point there: [positions], [heads] (head) or [heads, positions]
        (head_position)."""
        if point == "head":
            return terms.nan_to_num(0.0).sum(dim=0)  # [heads]
        chosen = terms.index_select(0, self.chosen)  # [positions (, heads)]
        return chosen.T if point == "head_position" else chosen


TECHNIQUE = register(PatchingTechnique("attribution", prepare, run, validate=validate, baseline=baseline))
