"""The logit lens: what the model would predict next if it stopped after each layer.

nostalgebraist (2020), "interpreting GPT: the logit lens". Per layer and position, the
residual stream after the block (`resid.post`) goes through the model's own final norm
and output embeddings (the model wrapper's unembedding, checked at load to turn the last
block's output into exactly the model's logits, so the last layer is the model's own
prediction and nothing is normed twice); the result is the top-k next tokens with their
probabilities and the probability of one chosen token: the request's, or the model's own
final prediction at each position. Streamed layer by layer.

Concurrent calls share a forward (dynamic batching, batching.py): each call is a `_Part`
(its input encoded and checked alone), `run_parts` runs one padded forward of several
parts (a row each) and each part reads its own row; `run` is `run_parts` of one part.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from .. import hooks
from ..batching import Outlet, run_alone
from ..budget import Footprint, activation_bytes, output_bytes
from ..engine import Sink
from ..errors import Cancelled, InvalidInput, require
from ..kinds import KINDS
from ..models import LoadedModel, ModelDescription
from ..requests import InputSpec
from ..results import EncodedInput, StreamStart, WireArray
from ..wire import to_wire
from .registry import Method, Sharing
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


@dataclass
class _Part:
    """One call's share of a logit-lens forward: its input, positions and chosen token,
    where its results go, and the states it keeps until the final prediction is known."""

    model: LoadedModel
    options: LogitLensOptions
    input: EncodedInput
    positions: tuple[int, ...]
    outlet: Outlet
    index: torch.Tensor = field(init=False)  # [positions]
    chosen: torch.Tensor | None = field(init=False)  # [positions]; None: the model's own prediction
    collected: dict[int, torch.Tensor] = field(init=False, default_factory=dict)  # layer -> [positions, d_model]

    def __post_init__(self) -> None:
        device = self.model.device
        self.index = torch.tensor(self.positions, device=device)
        token_id = self.options.token_id
        self.chosen = None if token_id is None else torch.full((len(self.positions),), token_id, device=device)

    def start(self) -> None:
        """Emits the stream's header."""
        description = self.model.description
        self.outlet.emit(StreamStart(description.name, description.fingerprint, (self.input,)))

    def take(self, layer: int, residual: torch.Tensor) -> None:
        """This call's lens of `layer` from its row of the residual stream [width, d_model]
        (padded to the batch's width): emitted now when the chosen token is known, else kept."""
        if layer not in self.options.layers or not self.outlet.open:
            return
        states = residual.index_select(0, self.index)  # [positions, d_model]
        if self.chosen is None:
            self.collected[layer] = states.clone()  # emitted once the final prediction is known
            return
        self.outlet.emit(_layer_result(self.model, layer, self.positions, _unembed(self.model, states),
                                       self.chosen, self.options.top_k))

    def finish(self, logits: torch.Tensor) -> None:
        """Emits the kept layers against the model's own prediction, from this call's row of
        the logits [width, vocab]."""
        if self.chosen is not None:
            return
        chosen = logits.index_select(0, self.index).argmax(dim=-1)
        for layer in self.options.layers:
            if not self.outlet.open:
                return
            self.outlet.emit(_layer_result(self.model, layer, self.positions,
                                           _unembed(self.model, self.collected.pop(layer)), chosen, self.options.top_k))


def _unembed(model: LoadedModel, states: torch.Tensor) -> torch.Tensor:
    assert model.unembedding is not None  # prepare_part checked it
    return model.unembedding(states)


def sharing_key(query: LogitLensQuery, options: LogitLensOptions) -> int | str:
    """Calls share a forward when they need the same depth: the model's logits (the chosen
    token is its own prediction), or the residual stream up to the same deepest layer (no
    call waits for layers it would not compute alone)."""
    return "logits" if options.token_id is None else options.layers[-1]


def prepare_part(model: LoadedModel, query: LogitLensQuery, options: LogitLensOptions, outlet: Outlet) -> _Part:
    """Encodes one call's input and checks it against its positions and limits."""
    if model.unembedding is None:
        raise InvalidInput("model", f"model {model.name!r}: its logits are not its output embeddings of its final "
                                    "norm (extra terms the lens cannot reproduce exactly)")
    assert query.input is not None
    encoded = model.encode_all([query.input], query.truncate, field="input")[0]
    positions = absolute_positions(query.positions, encoded.length, "positions")
    model.budget.require(footprint(model.description, encoded.length, len(positions), options))
    return _Part(model, options, encoded, positions, outlet)


def parts_fit(model: LoadedModel, parts: Sequence[_Part]) -> bool:
    """Whether one padded forward of every part's input fits --max-batch-tokens and the
    memory budget (each part's kept states plus the merged batch's activations and logits)."""
    width = max(part.input.length for part in parts)
    fixed = sum(footprint(model.description, part.input.length, len(part.positions), part.options).fixed
                for part in parts)
    merged = footprint(model.description, width, 0, parts[0].options)
    needed = fixed + len(parts) * merged.per_row
    return len(parts) * width <= model.budget.batch_tokens and needed <= model.budget.bytes


def run_parts(model: LoadedModel, parts: Sequence[_Part]) -> None:
    """One padded forward of every part's input (a row each), each part's layers streamed
    to its own outlet: as the forward reaches them when its chosen token is given (the
    forward then stops after the deepest layer any part asks for), else once the logits
    give the model's own prediction. It stops once every outlet is closed."""
    batch = model.batch([part.input for part in parts])  # [parts, width]
    for part in parts:
        part.start()
    layers = frozenset().union(*(part.options.layers for part in parts))
    logits_needed = any(part.chosen is None for part in parts)
    last_layer = max(layers)

    def at_layer(layer: int, residual: torch.Tensor) -> None:
        # residual: [parts, width, d_model]
        for row, part in enumerate(parts):
            part.take(layer, residual[row])
        if not any(part.outlet.open for part in parts):
            raise Cancelled()
        if layer == last_layer and not logits_needed:
            raise hooks.StopForward()

    lens = hooks.HookSet({hooks.RESID_POST: at_layer}, {hooks.RESID_POST: layers})
    with model.hooks.active(lens), torch.inference_mode():
        logits = model.outputs(batch.model_inputs())  # [parts, width, vocab]
        for row, part in enumerate(parts):
            part.finish(logits[row])


def run(model: LoadedModel, query: LogitLensQuery, options: LogitLensOptions, sink: Sink) -> None:
    """Encodes the input, then streams one result per chosen layer."""
    run_alone(sink, lambda outlet: prepare_part(model, query, options, outlet), lambda parts: run_parts(model, parts))


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
    sharing=Sharing(key=sharing_key, prepare=prepare_part, fits=parts_fit, run=run_parts),
)
