"""Attention rollout and attention flow as attributions of the target position to the
input tokens.

Abnar & Zuidema (2020), "Quantifying Attention Flow in Transformers". Each layer's
attention is the mean over heads mixed with the residual connection,
A' = 0.5 A + 0.5 I with rows renormalised (section 3), all layers captured by the probe
in one forward pass that also scores the target.

- Rollout: the row of the explained position in A'_{L-1} ... A'_0.
- Flow: the layered graph with a node per (layer, position) and an edge from (l + 1, j)
  down to (l, i) of capacity A'_l[j, i]; a token's score is the maximum flow from the
  explained position at the top to that token at the bottom, normalised over the tokens
  to sum to 1. One max-flow per token on O(layers * tokens^2) edges, so inputs are
  limited to MAX_FLOW_TOKENS tokens.

The explained position is a causal LM's target position; for encoders and classifiers
it is the first token ([CLS], which classifier heads read).
"""

from __future__ import annotations

from collections.abc import Iterator

import networkx as nx
import numpy as np
import torch
from networkx.algorithms.flow import build_residual_network, shortest_augmenting_path

from .. import hooks
from ..errors import require
from ..models import ModelDescription
from ..requests import SaliencyQuery
from ..results import SaliencyResult
from ..budget import Footprint
from .attribution import AttributionProblem, Check, Technique
from .reductions import head_mean, residual_attention, rollout_step

RESIDUAL_WEIGHT = 0.5
MAX_FLOW_TOKENS = 64


def prepare(description: ModelDescription, query: SaliencyQuery) -> None:
    """Rollout and flow take no options."""


def validate_rollout(problem: AttributionProblem, options: None) -> None:
    """An image model's explained token is its [CLS] token: one without (SigLIP) is refused."""
    require(problem.image is None or problem.image.first_patch > 0, "method",
            f"model {problem.model.name!r} has no [CLS] token whose attention explains its output (its pooling "
            "head reads every patch); use a gradient method or a CAM")


def validate_flow(problem: AttributionProblem, options: None) -> None:
    """Max-flow is computed for inputs of at most MAX_FLOW_TOKENS tokens."""
    validate_rollout(problem, options)
    require(
        problem.length <= MAX_FLOW_TOKENS,
        "input",
        f"attention flow is limited to {MAX_FLOW_TOKENS} tokens (that can affect the target); "
        f"this input has {problem.length}: shorten it or use attention rollout",
    )


def footprint(problem: AttributionProblem, options: None) -> Footprint:
    """One forward without gradients, keeping every layer's map [tokens, tokens] float64."""
    maps = 2 * problem.model.description.num_layers * problem.length * problem.length * 8
    return problem.footprint(1, gradients=False, fixed=maps)


def layer_attention(problem: AttributionProblem) -> tuple[float, list[torch.Tensor]]:
    """(target score, every layer's A' [tokens, tokens] float64) from one forward pass."""
    layers: dict[int, torch.Tensor] = {}

    def on_probabilities(layer: int, probabilities: torch.Tensor) -> None:
        # probabilities: [1, heads, query, key]
        layers[layer] = residual_attention(head_mean(probabilities[0].double())[0], RESIDUAL_WEIGHT)

    with problem.model.hooks.active(hooks.HookSet({hooks.ATTN_PROBS: on_probabilities})), torch.no_grad():
        score = float(problem.scores(problem.embeddings[None])[0])
    return score, [layers[layer] for layer in sorted(layers)]


def attention_rollout(problem: AttributionProblem, options: None, check: Check) -> Iterator[SaliencyResult]:
    """The explained position's row of the rollout through all layers."""
    target_score, layers = layer_attention(problem)
    rollout = None
    for attention in layers:
        rollout = rollout_step(rollout, attention)
    yield problem.token_result(rollout[problem.attention_row], target_score=target_score)  # type: ignore[index]


def max_flows(layers: list[np.ndarray], row: int, check: Check) -> np.ndarray:
    """Maximum flow [tokens] from position `row` above the last layer to each input token
    through the layered attention graph (capacities A'_l[j, i] from (l + 1, j) to (l, i))."""
    count, tokens = len(layers), layers[0].shape[0]
    graph = nx.DiGraph()
    graph.add_nodes_from(range(tokens))  # the input tokens: layer 0
    for layer, attention in enumerate(layers):
        # only the explained position matters above the last layer: nothing else feeds it
        queries = [row] if layer == count - 1 else range(tokens)
        graph.add_edges_from(
            ((layer + 1) * tokens + j, layer * tokens + int(i), {"capacity": float(attention[j, i])})
            for j in queries
            for i in np.flatnonzero(attention[j] > 0)
        )
    residual = build_residual_network(graph, "capacity")
    source = count * tokens + row
    flows = np.zeros(tokens)
    for token in range(tokens):
        check()
        solved = shortest_augmenting_path(graph, source, token, residual=residual, value_only=True)
        flows[token] = solved.graph["flow_value"]
    return flows


def attention_flow(problem: AttributionProblem, options: None, check: Check) -> Iterator[SaliencyResult]:
    """Max-flow of every token to the explained position, normalised to sum to 1."""
    target_score, layers = layer_attention(problem)
    flows = max_flows([attention.cpu().numpy() for attention in layers], problem.attention_row, check)
    total = flows.sum()
    scores = torch.from_numpy(flows / total if total > 0 else flows)
    yield problem.token_result(scores, target_score=target_score)


ATTENTION_ROLLOUT = Technique("attention_rollout", prepare, attention_rollout, validate=validate_rollout,
                              footprint=footprint)
ATTENTION_FLOW = Technique("attention_flow", prepare, attention_flow, validate=validate_flow, footprint=footprint)
