"""The logit lens: what the model would predict next if it stopped after each layer.

nostalgebraist (2020), "interpreting GPT: the logit lens". Per layer and position, the
residual stream after the block (`resid.post`) goes through the model's own final norm
and output embeddings (the model wrapper's unembedding, checked at load to turn the last
block's output into exactly the model's logits, so the last layer is the model's own
prediction and nothing is normed twice); the result is the top-k next tokens with their
probabilities and the probability of one chosen token: the request's, or the model's own
final prediction at each position. Streamed layer by layer.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .. import hooks
from ..budget import Footprint, activation_bytes, output_bytes
from ..engine import Sink
from ..errors import InvalidInput, require
from ..kinds import KINDS
from ..models import LoadedModel, ModelDescription
from ..requests import InputSpec
from ..results import StreamStart, WireArray
from ..wire import to_wire
from .registry import Method
from .selection import absolute_positions

DEFAULT_TOP_K = 5
MAX_TOP_K = 100


@dataclass(frozen=True)
class LogitLensQuery:
    """What StreamLogitLens was asked for (fields as in StreamLogitLensRequest)."""

    model: str
    input: InputSpec | None
    truncate: bool = False
    layers: tuple[int, ...] = ()
    positions: tuple[int, ...] = ()
    top_k: int = 0
    token_id: int | None = None


@dataclass(frozen=True)
class LogitLensOptions:
    """A validated logit lens query."""

    layers: tuple[int, ...]  # sorted, unique
    top_k: int
    token_id: int | None


@dataclass(frozen=True)
class LogitLensLayerResult:
    """One layer's lens at the chosen positions (fields as in LogitLensLayer)."""

    layer: int
    positions: tuple[int, ...]
    top_token_ids: WireArray  # int32 [positions, k]
    top_probabilities: WireArray  # float32 [positions, k]
    top_tokens: tuple[str, ...]  # positions * k, row-major
    chosen_token_ids: tuple[int, ...]  # [positions]
    chosen_probabilities: WireArray  # float32 [positions]


def prepare(description: ModelDescription, query: LogitLensQuery) -> LogitLensOptions:
    """Validates the query against the model: it needs an LM head."""
    require(KINDS[description.kind].has_lm_head, "model",
            f"model {description.name!r} ({description.kind}) has no LM head (output embeddings over a "
            "vocabulary): the logit lens needs next-token logits")
    require(query.input is not None, "input", "an input is required")
    bad = [layer for layer in query.layers if not 0 <= layer < description.num_layers]
    require(not bad, "layers", f"layers {bad} out of range: the model has {description.num_layers} layers "
                               f"(0..{description.num_layers - 1})")
    top_k = query.top_k or DEFAULT_TOP_K
    require(0 < top_k <= min(MAX_TOP_K, description.vocab_size), "top_k",
            f"must be in [0, {min(MAX_TOP_K, description.vocab_size)}] (0 means {DEFAULT_TOP_K}), got {query.top_k}")
    if query.token_id is not None:
        require(0 <= query.token_id < description.vocab_size, "token_id",
                f"{query.token_id} is outside the vocabulary [0, {description.vocab_size})")
    layers = tuple(sorted(set(query.layers))) or tuple(range(description.num_layers))
    return LogitLensOptions(layers=layers, top_k=top_k, token_id=query.token_id)


def run(model: LoadedModel, query: LogitLensQuery, options: LogitLensOptions, sink: Sink) -> None:
    """Encodes the input, then streams one result per chosen layer."""
    unembedding = model.unembedding
    if unembedding is None:
        raise InvalidInput("model", f"model {model.name!r}: its logits are not its output embeddings of its final "
                                    "norm (extra terms the lens cannot reproduce exactly)")
    assert query.input is not None
    batch = model.encode_batch([query.input], query.truncate, field="input")
    positions = absolute_positions(query.positions, batch.inputs[0].length, "positions")
    model.budget.require(footprint(model.description, batch.inputs[0].length, len(positions), options))
    sink.emit(StreamStart(model.description.name, model.description.fingerprint, batch.inputs))
    index = torch.tensor(positions, device=model.device)
    chosen = None if options.token_id is None else torch.full((len(positions),), options.token_id, device=model.device)
    collected: dict[int, torch.Tensor] = {}

    def at_layer(layer: int, residual: torch.Tensor) -> None:
        sink.check()
        states = residual[0].index_select(0, index)  # [positions, d_model]
        if chosen is None:
            collected[layer] = states.clone()  # emitted once the final prediction is known
            return
        sink.emit(_layer_result(model, layer, positions, unembedding(states), chosen, options.top_k))
        if layer == options.layers[-1]:
            raise hooks.StopForward()

    lens = hooks.HookSet({hooks.RESID_POST: at_layer}, {hooks.RESID_POST: frozenset(options.layers)})
    with model.hooks.active(lens), torch.inference_mode():
        logits = model.outputs(batch.model_inputs())  # [1, tokens, vocab]
        if chosen is None:
            chosen = logits[0].index_select(0, index).argmax(dim=-1)
            for layer in options.layers:
                sink.check()
                sink.emit(_layer_result(model, layer, positions, unembedding(collected[layer]), chosen, options.top_k))


def footprint(description: ModelDescription, tokens: int, positions: int, options: LogitLensOptions) -> Footprint:
    """One forward with logits at every position, the residual states kept per layer and
    position, and one layer's [positions, vocab] probabilities at a time."""
    kept = len(options.layers) * positions * description.hidden_size * 4
    return Footprint(
        fixed=kept + 3 * positions * description.vocab_size * 4,
        per_row=activation_bytes(description, tokens, gradients=False) + output_bytes(description, tokens, tokens),
        rows=1,
        field="input",
        advice=f"shorten the input ({tokens} tokens), or ask for fewer positions or layers",
    )


def _layer_result(model: LoadedModel, layer: int, positions: tuple[int, ...], logits: torch.Tensor,
                  chosen: torch.Tensor, top_k: int) -> LogitLensLayerResult:
    probabilities = torch.softmax(logits.float(), dim=-1)  # [positions, vocab]
    top_probabilities, top_ids = torch.topk(probabilities, top_k, dim=-1)
    chosen_probabilities = probabilities.gather(1, chosen[:, None])[:, 0]
    return LogitLensLayerResult(
        layer=layer,
        positions=positions,
        top_token_ids=to_wire(top_ids, "int32"),
        top_probabilities=to_wire(top_probabilities, "float32"),
        top_tokens=model.text.tokens(top_ids.flatten().tolist()),
        chosen_token_ids=tuple(int(token) for token in chosen.tolist()),
        chosen_probabilities=to_wire(chosen_probabilities, "float32"),
    )


METHOD = Method(
    name="logit_lens",
    rpc="StreamLogitLens",
    query_type=LogitLensQuery,
    prepare=prepare,
    run=run,
    payloads={LogitLensLayerResult: "layer"},
)
