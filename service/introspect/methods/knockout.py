"""Attention knockout (Geva et al. 2023, "Dissecting Recall of Factual Associations in
Auto-Regressive Language Models"): attention from the query positions to the key
positions blocked in a window of consecutive layers, for every window start, and the
metric of the clean input with those edges blocked.

Blocking is exact: at the `attn.mask` hook point (hooks.py) each blocked edge's score gets
-inf before the softmax, as a masked softmax would treat a masked key; layers no window
covers keep SDPA. Defined for a query row the knockout would leave with no key at all (its
every key is blocked, or masked by the model): it keeps its own position (the diagonal,
at the model's mask value), so it attends only to itself instead of producing NaN.

Each window is one batch row (rows share nothing), so one forward carries as many
windows as the memory budget allows.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

from .. import hooks
from ..errors import require
from ..models import LoadedModel, ModelDescription
from ..requests import PatchingQuery
from ..results import KnockoutResultData
from .heads import rows_per_forward
from .selection import absolute_positions
from .patching import Check, EncodedPair, PatchingOptions, PatchingPair, PatchingTechnique, float_array, register


@dataclass(frozen=True)
class KnockoutOptions:
    """Validated knockout options (positions are resolved per pair, against its length)."""

    query_positions: tuple[int, ...]  # as requested (negative from the end)
    key_positions: tuple[int, ...]
    window: int  # layers per window, 1..num_layers


def prepare(description: ModelDescription, query: PatchingQuery) -> KnockoutOptions:
    """Checks the knockout options against the model (positions need the input: `run`)."""
    settings = query.knockout
    require(bool(settings.query_positions), "knockout.query_positions",
            "attention knockout needs the query positions whose attention is blocked")
    require(bool(settings.key_positions), "knockout.key_positions",
            "attention knockout needs the key positions they may no longer attend to")
    window = settings.window or 1
    require(1 <= window <= description.num_layers, "knockout.window",
            f"must be 0 (meaning 1) to {description.num_layers} (the model's layers), got {settings.window}")
    return KnockoutOptions(settings.query_positions, settings.key_positions, window)


def blocked_edges(query_positions: tuple[int, ...], key_positions: tuple[int, ...], length: int,
                  device: torch.device) -> torch.Tensor:
    """blocked [query, key] bool: True for every (query position, key position) edge."""
    blocked = torch.zeros(length, length, dtype=torch.bool, device=device)
    blocked[torch.tensor(query_positions, device=device)[:, None], torch.tensor(key_positions, device=device)] = True
    return blocked


def knockout_mask(mask: torch.Tensor, blocked: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """`mask` [batch, 1 or heads, query, key] (additive) with the `blocked` [query, key]
    edges set to -inf in the rows where `rows` [batch] bool is True; a query row left with
    no key keeps its own position at its mask value (see the module docstring)."""
    mask = mask.expand(rows.shape[0], *mask.shape[1:])
    edges = rows[:, None, None, None] & blocked[None, None, :, : mask.shape[-1]]  # [batch, 1, query, key]
    edited = mask.masked_fill(edges, float("-inf"))
    emptied = torch.isneginf(edited).all(dim=-1) & ~torch.isneginf(mask).all(dim=-1)  # [batch, 1|heads, query]
    if bool(emptied.any()):
        queries = torch.arange(mask.shape[-2], device=mask.device)
        diagonal = torch.zeros_like(edges)
        diagonal[..., queries, queries] = True
        edited = torch.where(diagonal & emptied[..., None], mask, edited)
    return edited


def validate(model: LoadedModel, options: PatchingOptions, pair: EncodedPair) -> None:
    """The knockout positions must lie in the pair's clean input (before any result)."""
    settings: KnockoutOptions = options.technique
    length = pair.clean.inputs[0].length
    absolute_positions(settings.query_positions, length, "knockout.query_positions", "the clean input")
    absolute_positions(settings.key_positions, length, "knockout.key_positions", "the clean input")


def run(model: LoadedModel, options: PatchingOptions, pair: PatchingPair, check: Check) -> Iterator[object]:
    """One KnockoutResultData for the pair: the clean metric with each window's edges
    blocked, and its change from the unblocked clean metric."""
    settings: KnockoutOptions = options.technique
    batch = pair.clean
    length = batch.inputs[0].length
    queries = absolute_positions(settings.query_positions, length, "knockout.query_positions", "the clean input")
    keys = absolute_positions(settings.key_positions, length, "knockout.key_positions", "the clean input")
    blocked = blocked_edges(queries, keys, length, model.device)
    starts = options.layers  # the first layer of every window: the request's layers, all when none given
    num_layers = model.description.num_layers
    values = []
    per_forward = rows_per_forward(model, length, len(starts), options.batch_size)
    for first in range(0, len(starts), per_forward):
        check()
        chunk = torch.tensor(starts[first: first + per_forward], device=model.device)  # [rows]
        values.append(_blocked_scores(model, pair, chunk, settings.window, num_layers, blocked))
    scores = torch.cat(values)  # [windows]
    yield KnockoutResultData(pair.index, starts, settings.window, float_array(scores),
                             float_array(scores - pair.clean_score))


def _blocked_scores(model: LoadedModel, pair: PatchingPair, starts: torch.Tensor, window: int, num_layers: int,
                    blocked: torch.Tensor) -> torch.Tensor:
    """The metric [rows] of one forward whose row r blocks `blocked` in layers
    [starts[r], starts[r] + window)."""
    rows = starts.shape[0]
    covered = {layer for start in starts.tolist() for layer in range(start, min(start + window, num_layers))}

    def edit(layer: int, mask: torch.Tensor) -> torch.Tensor:
        in_window = (starts <= layer) & (layer < starts + window)  # [rows]
        return knockout_mask(mask, blocked, in_window)

    arguments = {name: value.expand(rows, *value.shape[1:]) for name, value in pair.clean.model_inputs().items()}
    hookset = hooks.HookSet({hooks.ATTN_MASK: edit}, {hooks.ATTN_MASK: frozenset(covered)})
    with model.hooks.active(hookset), torch.no_grad():
        outputs = model.outputs(arguments)
    return pair.metric.scores(outputs, pair.clean.attention_mask.expand(rows, -1), "clean").float()


TECHNIQUE = register(PatchingTechnique("attention_knockout", prepare, run, needs_corrupted=False,
                                       validate=validate))
