"""Head statistics: what each attention head does on average, over one input or many,
streamed per input with running means and standard deviations (Welford) per layer and
head.

Statistics of the attention probabilities (`attn.probs`, from the registered attention
function: the forward stays on SDPA for the layers nobody reads), each averaged over an
input's query tokens (padding excluded), then over the inputs:

- entropy, in nats;
- attention-sink mass: on the first token (Xiao et al. 2023, "Efficient Streaming
  Language Models with Attention Sinks"), and on the special tokens;
- attention to delimiters, special tokens and punctuation (Clark et al. 2019, "What Does
  BERT Look At?"), previous-token and same-token (own position) scores;
- mean attention distance, in tokens, or for images in pixels over the patches
  (Dosovitskiy et al. 2021, as `reductions.mean_attention_distance`);
- the L2 norm of the residual stream after each block at every token (`resid.post`;
  massive activations, Sun et al. 2024): per layer the first token's norm, the mean and
  the largest norm of the others.

For causal models, two scores on inputs the method makes itself:

- induction (Olsson et al. 2022, "In-context Learning and Induction Heads"): sequences of
  random tokens repeated twice; from each token of the second copy, the attention to the
  token after its earlier occurrence (query length + t, key t + 1);
- retrieval (Wu et al. 2024, "Retrieval Head Mechanistically Explains Long-Context
  Factuality"): each input is a prompt continued greedily; at a step whose generated
  token w occurs in the needle, a head copies when its most attended key j (from the
  last position) lies in the needle and holds w; score = copying steps / needle length.
  Each step is one forward without a KV cache whose probabilities are computed for the
  last query row only (`HookSet.probability_rows`).
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from .. import hooks
from ..budget import Footprint, activation_bytes, output_bytes
from ..engine import Sink
from ..errors import InvalidInput, require
from ..kinds import KINDS
from ..models import LoadedModel, ModelDescription
from ..requests import InputSpec
from ..results import EncodedInput, StreamStart, WireArray
from ..wire import to_wire
from .reductions import mean_attention_distance, patch_centres
from .registry import Method
from .selection import unique_in_range

ATTENTION_STATISTICS = ("entropy", "first_token", "special_tokens", "delimiters", "mean_distance",
                        "previous_token", "same_token")
HIDDEN_NORM = "hidden_norm"
INDUCTION = "induction"
RETRIEVAL = "retrieval"
DEFAULT_STATISTICS = (*ATTENTION_STATISTICS, HIDDEN_NORM)
HIDDEN_NORM_COLUMNS = ("first_token", "others_mean", "others_max")

DEFAULT_INDUCTION_LENGTH = 20
DEFAULT_INDUCTION_SAMPLES = 4
MAX_INDUCTION_SAMPLES = 64
DEFAULT_RETRIEVAL_STEPS = 8
MAX_RETRIEVAL_STEPS = 64


@dataclass(frozen=True)
class HeadStatisticsQuery:
    """What StreamHeadStatistics was asked for (fields as in StreamHeadStatisticsRequest)."""

    model: str
    inputs: tuple[InputSpec, ...] = ()
    truncate: bool = False
    statistics: tuple[str, ...] = ()
    layers: tuple[int, ...] = ()
    heads: tuple[int, ...] = ()
    induction_length: int = 0
    induction_samples: int = 0
    induction_seed: int = 0
    retrieval_steps: int = 0
    needle_start: int = 0
    needle_end: int = 0


@dataclass(frozen=True)
class HeadStatisticsOptions:
    """A validated head statistics query."""

    statistics: tuple[str, ...]  # in request order, unique
    layers: tuple[int, ...]  # sorted, unique
    heads: tuple[int, ...]  # in request order, unique
    induction_length: int
    induction_samples: int
    retrieval_steps: int

    @property
    def attention(self) -> tuple[str, ...]:
        """The statistics of the request's inputs' attention."""
        return tuple(name for name in self.statistics if name in ATTENTION_STATISTICS)

    @property
    def on_inputs(self) -> bool:
        """Whether the request's inputs run a forward of statistics (not retrieval alone)."""
        return bool(self.attention) or HIDDEN_NORM in self.statistics


@dataclass(frozen=True)
class HeadStatisticValues:
    """One statistic over the layers and heads (fields as in HeadStatisticValues)."""

    statistic: str
    count: int
    layers: tuple[int, ...]
    heads: tuple[int, ...]
    mean: WireArray  # float32 [layers, heads] ([layers, 3] for hidden_norm)
    std: WireArray


@dataclass(frozen=True)
class HeadStatisticsInputResult:
    """One input's statistics (fields as in HeadStatisticsInput)."""

    input_index: int
    values: tuple[HeadStatisticValues, ...]
    hidden_norms: WireArray | None = None  # float32 [layers, tokens]
    generated_token_ids: tuple[int, ...] = ()
    generated_tokens: tuple[str, ...] = ()


@dataclass(frozen=True)
class HeadStatisticsAggregateResult:
    """The running statistics (fields as in HeadStatisticsAggregate)."""

    inputs_done: int
    inputs_total: int
    values: tuple[HeadStatisticValues, ...]


def prepare(description: ModelDescription, query: HeadStatisticsQuery) -> HeadStatisticsOptions:
    """Validates the query against the model (cheap; the needle is checked per prompt)."""
    statistics = tuple(dict.fromkeys(query.statistics)) or DEFAULT_STATISTICS
    kind = KINDS[description.kind]
    for name in (INDUCTION, RETRIEVAL):
        require(name not in statistics or kind.causal, "statistics",
                f"{name} needs a causal model; model {description.name!r} ({description.kind}) attends both ways")
    require(RETRIEVAL not in statistics or kind.has_lm_head, "statistics",
            f"retrieval generates tokens; model {description.name!r} ({description.kind}) has no LM head")
    only_induction = statistics == (INDUCTION,)
    if only_induction:
        require(not query.inputs, "inputs", "induction runs on random sequences of its own: send no inputs, "
                                            "or ask for statistics of them too")
    else:
        require(bool(query.inputs), "inputs", "at least one input is required (only induction takes none)")
    layers = unique_in_range(query.layers, description.num_layers, "layers", "layer") or tuple(
        range(description.num_layers))
    heads = unique_in_range(query.heads, description.num_heads, "heads", "head") or tuple(
        range(description.num_heads))
    length = query.induction_length or DEFAULT_INDUCTION_LENGTH
    samples = query.induction_samples or DEFAULT_INDUCTION_SAMPLES
    steps = query.retrieval_steps or DEFAULT_RETRIEVAL_STEPS
    if INDUCTION in statistics:
        require(2 <= length and 2 * length <= description.max_tokens, "induction_length",
                f"must be in [2, {description.max_tokens // 2}] (twice it fits the model's "
                f"{description.max_tokens} tokens; 0 means {DEFAULT_INDUCTION_LENGTH}), got {query.induction_length}")
        require(0 < samples <= MAX_INDUCTION_SAMPLES, "induction_samples",
                f"must be in [0, {MAX_INDUCTION_SAMPLES}] (0 means {DEFAULT_INDUCTION_SAMPLES}), "
                f"got {query.induction_samples}")
        require(0 <= query.induction_seed < 2**63, "induction_seed", "must be >= 0")
    if RETRIEVAL in statistics:
        require(0 < steps <= MAX_RETRIEVAL_STEPS, "retrieval_steps",
                f"must be in [0, {MAX_RETRIEVAL_STEPS}] (0 means {DEFAULT_RETRIEVAL_STEPS}), "
                f"got {query.retrieval_steps}")
    return HeadStatisticsOptions(statistics=statistics, layers=tuple(sorted(layers)), heads=heads,
                                 induction_length=length, induction_samples=samples, retrieval_steps=steps)


def needle_range(start: int, end: int, length: int) -> tuple[int, int]:
    """The needle [start, end) of a prompt of `length` tokens (negative counts from the
    end, end 0 is the end); InvalidInput naming needle_start or needle_end."""
    first = start + length if start < 0 else start
    stop = length if end == 0 else end + length if end < 0 else end
    require(0 <= first < length, "needle_start", f"{start} is outside a prompt of {length} tokens")
    require(first < stop <= length, "needle_end",
            f"{end} gives the needle [{first}, {stop}) of a prompt of {length} tokens: it must end in "
            f"({first}, {length}] (0 is the end, negative counts from it)")
    return first, stop


def is_punctuation(token: str) -> bool:
    """Whether a token string is made only of punctuation (after the tokenizers' word
    markers: '##', 'Ġ', '▁')."""
    text = token.removeprefix("##").replace("Ġ", "").replace("▁", "").strip()
    return bool(text) and all(unicodedata.category(character).startswith("P") for character in text)


class Running:
    """Running mean and population standard deviation of equally shaped arrays (Welford)."""

    def __init__(self) -> None:
        self.count = 0
        self.mean: np.ndarray | None = None
        self.m2: np.ndarray | None = None

    def add(self, value: np.ndarray) -> None:
        """Takes one input's value."""
        value = value.astype(np.float64)
        self.count += 1
        if self.mean is None or self.m2 is None:
            self.mean, self.m2 = value.copy(), np.zeros_like(value)
            return
        delta = value - self.mean
        self.mean += delta / self.count
        self.m2 += delta * (value - self.mean)

    def std(self) -> np.ndarray:
        """The population standard deviation so far."""
        assert self.m2 is not None
        return np.sqrt(np.maximum(self.m2 / self.count, 0.0))


@dataclass
class _Work:
    """One call's state: its inputs, options and running statistics."""

    model: LoadedModel
    options: HeadStatisticsOptions
    sink: Sink
    total: int
    running: dict[str, Running] = field(default_factory=dict)
    done: int = 0

    def values(self, name: str, mean: np.ndarray, std: np.ndarray, count: int) -> HeadStatisticValues:
        heads = () if name == HIDDEN_NORM else self.options.heads
        return HeadStatisticValues(statistic=name, count=count, layers=self.options.layers, heads=heads,
                                   mean=to_wire(torch.from_numpy(np.ascontiguousarray(mean)), "float32"),
                                   std=to_wire(torch.from_numpy(np.ascontiguousarray(std)), "float32"))

    def finish_input(self, index: int, values: dict[str, np.ndarray], hidden_norms: np.ndarray | None = None,
                     generated: tuple[int, ...] = ()) -> None:
        """Adds one input's values to the running statistics and emits them."""
        for name, value in values.items():
            self.running.setdefault(name, Running()).add(value)
        self.done += 1
        self.sink.emit(HeadStatisticsInputResult(
            input_index=index,
            values=tuple(self.values(name, value, np.zeros_like(value), 1) for name, value in values.items()),
            hidden_norms=None if hidden_norms is None else to_wire(torch.from_numpy(hidden_norms), "float32"),
            generated_token_ids=generated,
            generated_tokens=self.model.text.tokens(list(generated)) if generated else (),
        ))

    def emit_aggregate(self) -> None:
        """Emits the running statistics, in the request's order of statistics."""
        values = tuple(self.values(name, self.running[name].mean, self.running[name].std(),  # type: ignore[arg-type]
                                   self.running[name].count)
                       for name in self.options.statistics if name in self.running)
        self.sink.emit(HeadStatisticsAggregateResult(inputs_done=self.done, inputs_total=self.total, values=values))


def induction_inputs(model: LoadedModel, options: HeadStatisticsOptions, seed: int) -> list[EncodedInput]:
    """The induction sequences: `samples` sequences of `length` random non-special tokens
    (numpy's default generator from `seed`), each repeated twice."""
    vocabulary = np.arange(model.description.vocab_size)
    candidates = np.setdiff1d(vocabulary, np.fromiter(model.text.special_ids, dtype=np.int64))
    generator = np.random.default_rng(seed)
    encoded = []
    for _ in range(options.induction_samples):
        sequence = [int(token) for token in generator.choice(candidates, size=options.induction_length)]
        encoded.append(model.encode(InputSpec(token_ids=tuple(sequence + sequence)), False, "induction_length"))
    return encoded


def _head_values(name: str, maps: torch.Tensor, item: EncodedInput, masks: dict[str, torch.Tensor],
                 centres: torch.Tensor | None) -> torch.Tensor:
    """One statistic [heads] of one input's maps [heads, tokens, tokens] float32."""
    length = maps.shape[-1]
    if name == "entropy":
        return torch.special.entr(maps).sum(dim=-1).mean(dim=-1)
    if name == "first_token":
        return maps[:, :, 0].mean(dim=-1)
    if name in ("special_tokens", "delimiters"):
        return maps[:, :, masks[name]].sum(dim=-1).mean(dim=-1)
    if name == "mean_distance":
        if item.image is not None:
            assert centres is not None
            return mean_attention_distance(maps, item.image.first_patch, centres)
        positions = torch.arange(length, device=maps.device, dtype=maps.dtype)
        distances = (positions[:, None] - positions[None, :]).abs()
        return (maps * distances).sum(dim=-1).mean(dim=-1)
    if name == "previous_token":
        if length < 2:
            return maps.new_zeros(maps.shape[0])
        return maps.diagonal(offset=-1, dim1=1, dim2=2).mean(dim=-1)
    if name == "same_token":
        return maps.diagonal(dim1=1, dim2=2).mean(dim=-1)
    if name == INDUCTION:
        half = length // 2
        # entries (half - 1 + k, k): from query half + t (second copy) to key t + 1, t in [0, half)
        return maps.diagonal(offset=1 - half, dim1=1, dim2=2)[:, 1:].mean(dim=-1)
    raise AssertionError(name)


def _batch_values(names: tuple[str, ...], maps: torch.Tensor, lengths: torch.Tensor,
                  key_masks: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Every statistic [rows, heads] of a padded batch of text inputs' maps [rows, heads,
    width, width] at once (the same values as `_head_values` row by row): per query row,
    then the mean over each row's real query tokens. `lengths` [rows]; `key_masks` name
    -> [rows, width]."""
    width = maps.shape[-1]
    positions = torch.arange(width, device=maps.device)
    real = (positions[None, :] < lengths[:, None])[:, None, :]  # [rows, 1, queries]

    def mean_over_queries(per_query: torch.Tensor, valid: torch.Tensor = real, count: torch.Tensor | None = None
                          ) -> torch.Tensor:
        total = torch.where(valid, per_query, 0.0).sum(dim=-1)
        return total / (lengths if count is None else count).to(total.dtype)[:, None]

    values = {}
    for name in names:
        if name == "entropy":
            values[name] = mean_over_queries(torch.special.entr(maps).sum(dim=-1))
        elif name == "first_token":
            values[name] = mean_over_queries(maps[..., 0])
        elif name in ("special_tokens", "delimiters"):
            values[name] = mean_over_queries(torch.where(key_masks[name][:, None, None, :], maps, 0.0).sum(dim=-1))
        elif name == "mean_distance":
            distances = (positions[:, None] - positions[None, :]).abs().to(maps.dtype)
            values[name] = mean_over_queries((maps * distances).sum(dim=-1))
        elif name == "previous_token":
            previous = maps.diagonal(offset=-1, dim1=2, dim2=3)  # [rows, heads, width - 1]: queries 1..width-1
            mean = mean_over_queries(previous, real[..., 1:], (lengths - 1).clamp(min=1))
            values[name] = torch.where((lengths > 1)[:, None], mean, 0.0)
        elif name == "same_token":
            values[name] = mean_over_queries(maps.diagonal(dim1=2, dim2=3))
        elif name == INDUCTION:  # repeated sequences of one length: no padding
            half = width // 2
            values[name] = maps.diagonal(offset=1 - half, dim1=2, dim2=3)[..., 1:].mean(dim=-1)
        else:
            raise AssertionError(name)
    return values


def _masks(model: LoadedModel, item: EncodedInput) -> dict[str, torch.Tensor]:
    """Key masks [tokens] of an input's special tokens and delimiters."""
    if item.image is not None:
        special = [position < item.image.first_patch for position in range(item.length)]
        delimiters = special
    else:
        special_ids = model.text.special_ids
        special = [token in special_ids for token in item.token_ids]
        delimiters = [is_special or is_punctuation(token) for is_special, token in zip(special, item.tokens)]
    device = model.device
    return {"special_tokens": torch.tensor(special, device=device, dtype=torch.bool),
            "delimiters": torch.tensor(delimiters, device=device, dtype=torch.bool)}


def _hidden_summary(norms: np.ndarray) -> np.ndarray:
    """[layers, tokens] norms -> [layers, 3]: the first token's, the mean and the largest
    of the others (zero for a one-token input)."""
    others = norms[:, 1:]
    if others.shape[1] == 0:
        return np.stack([norms[:, 0], np.zeros(len(norms)), np.zeros(len(norms))], axis=1).astype(np.float32)
    return np.stack([norms[:, 0], others.mean(axis=1), others.max(axis=1)], axis=1).astype(np.float32)


def footprint(description: ModelDescription, count: int, width: int) -> Footprint:
    """A padded forward per batch of inputs of up to `width` tokens, with one layer's
    probabilities read at a time (counted in activation_bytes)."""
    return Footprint(
        fixed=0,
        per_row=activation_bytes(description, width, gradients=False) + output_bytes(description, width, positions=0)
        + description.num_layers * width * 4,
        rows=max(count, 1),
        field="inputs",
        advice=f"send shorter inputs (the longest has {width} tokens)",
        tokens_per_row=width,
    )


def _statistics_forward(work: _Work, items: Sequence[tuple[int, EncodedInput]], names: tuple[str, ...],
                        hidden: bool) -> None:
    """Runs the inputs `items` ((header index, encoded)) in padded batches of inputs of
    similar lengths (shortest first), reading each layer's probabilities (and residual
    stream), and emits each input's values, then the running statistics after each batch."""
    model, options = work.model, work.options
    items = sorted(items, key=lambda numbered: numbered[1].length)  # batches of similar lengths: less padding
    width = max(item.length for _, item in items)
    batch_size = model.budget.fit(footprint(model.description, len(items), width))
    batch_size = max(1, min(batch_size, model.budget.batch_tokens // width))
    head_index = torch.tensor(options.heads, device=model.device)
    layers = frozenset(options.layers)
    last_layer = max(options.layers)
    layer_row = {layer: row for row, layer in enumerate(options.layers)}
    for begin in range(0, len(items), batch_size):
        work.sink.check()
        chunk = items[begin:begin + batch_size]
        encoded = [item for _, item in chunk]
        masks = [_masks(model, item) if {"special_tokens", "delimiters"} & set(names) else {} for item in encoded]
        centres = [None if item.image is None else patch_centres(item.image.grid_rows, item.image.grid_columns,
                                                                 item.image.patch_height, item.image.patch_width)
                   for item in encoded]
        batch_width = max(item.length for item in encoded)
        heads_values = {name: torch.zeros(len(chunk), len(options.layers), len(options.heads),
                                          device=model.device) for name in names}
        norms = [np.zeros((len(options.layers), item.length), dtype=np.float32) for item in encoded]

        text = all(item.image is None for item in encoded)
        lengths = torch.tensor([item.length for item in encoded], device=model.device)
        key_masks = {name: torch.stack([torch.nn.functional.pad(mask[name], (0, batch_width - mask[name].shape[0]))
                                        for mask in masks]) for name in ("special_tokens", "delimiters")
                     if masks and name in masks[0]} if text else {}

        def on_probabilities(layer: int, probabilities: torch.Tensor) -> None:
            # probabilities: [rows, heads, tokens, tokens] float32, padded to the batch's width
            selected = probabilities.index_select(1, head_index)
            if text:  # every row at once, padding masked
                values = _batch_values(names, selected, lengths, key_masks)
                for name in names:
                    heads_values[name][:, layer_row[layer]] = values[name]
                if layer == last_layer and not hidden:
                    raise hooks.StopForward()
                return
            for row, item in enumerate(encoded):
                maps = selected[row, :, :item.length, :item.length]
                for name in names:
                    heads_values[name][row, layer_row[layer]] = _head_values(name, maps, item, masks[row],
                                                                             centres[row])
            if layer == last_layer and not hidden:
                raise hooks.StopForward()

        def on_residual(layer: int, residual: torch.Tensor) -> None:
            # residual: [rows, width, d_model]
            layer_norms = residual.float().norm(dim=-1).cpu().numpy()
            for row, item in enumerate(encoded):
                norms[row][layer_row[layer]] = layer_norms[row, :item.length]
            if layer == last_layer:
                raise hooks.StopForward()

        points: dict[str, hooks.Hook] = {}
        if names:
            points[hooks.ATTN_PROBS] = on_probabilities
        if hidden:
            points[hooks.RESID_POST] = on_residual
        hookset = hooks.HookSet(points, {point: layers for point in points})
        batch = model.batch(encoded)
        with model.hooks.active(hookset), torch.inference_mode():
            model.run_trunk(batch.model_inputs())
        host = {name: values.cpu().numpy() for name, values in heads_values.items()}
        for row, (index, _) in enumerate(chunk):
            values = {name: host[name][row] for name in names}
            if hidden:
                values[HIDDEN_NORM] = _hidden_summary(norms[row])
            work.finish_input(index, values, norms[row] if hidden else None)
        work.emit_aggregate()


def retrieval(model: LoadedModel, options: HeadStatisticsOptions, item: EncodedInput, needle: tuple[int, int],
              check: Sink) -> tuple[np.ndarray, tuple[int, ...]]:
    """The retrieval score [layers, heads] of one prompt, and the tokens generated."""
    ids = list(item.token_ids)
    start, end = needle
    needle_tokens = set(ids[start:end])
    copies = torch.zeros(len(options.layers), len(options.heads))
    head_index = torch.tensor(options.heads, device=model.device)
    layer_row = {layer: row for row, layer in enumerate(options.layers)}
    generated: list[int] = []
    for _ in range(options.retrieval_steps):
        check.check()
        top_keys = torch.zeros(len(options.layers), len(options.heads), dtype=torch.long)

        def on_probabilities(layer: int, probabilities: torch.Tensor) -> None:
            # probabilities: [1, heads, 1 (the last query row), keys]
            top_keys[layer_row[layer]] = probabilities[0].index_select(0, head_index)[:, -1].argmax(dim=-1).cpu()

        length = len(ids)
        hookset = hooks.HookSet({hooks.ATTN_PROBS: on_probabilities}, {hooks.ATTN_PROBS: frozenset(options.layers)},
                                probability_rows=(length - 1, length))
        batch = model.batch([model.encode(InputSpec(token_ids=tuple(ids)), False, "retrieval_steps")])
        with model.hooks.active(hookset), torch.inference_mode():
            logits = model.outputs(batch.model_inputs(), last_positions=1)
        token = int(logits[0, -1].argmax())
        if token in needle_tokens:
            keys = top_keys.flatten().tolist()
            copied = [start <= key < end and ids[key] == token for key in keys]
            copies += torch.tensor(copied, dtype=torch.float32).reshape(copies.shape)
        ids.append(token)
        generated.append(token)
    return (copies / (end - start)).numpy(), tuple(generated)


def run(model: LoadedModel, query: HeadStatisticsQuery, options: HeadStatisticsOptions, sink: Sink) -> None:
    """Encodes the inputs (and makes the induction sequences), then streams each input's
    statistics and the running aggregate after each batch."""
    statistics = options.statistics
    inputs = model.encode_all(query.inputs, query.truncate) if query.inputs else []
    needles: list[tuple[int, int]] = []
    if RETRIEVAL in statistics:
        for item in inputs:
            needles.append(needle_range(query.needle_start, query.needle_end, item.length))
            if item.length + options.retrieval_steps > model.description.max_tokens:
                raise InvalidInput("retrieval_steps",
                                   f"a prompt of {item.length} tokens and {options.retrieval_steps} generated "
                                   f"ones exceed the model's {model.description.max_tokens}")
    induction = induction_inputs(model, options, query.induction_seed) if INDUCTION in statistics else []
    everything = inputs + induction
    if everything:
        lengths = [item.length for item in everything]
        model.budget.require(footprint(model.description, 1, max(lengths)), rows=1)
    sink.emit(StreamStart(model.description.name, model.description.fingerprint, tuple(everything)))
    work = _Work(model, options, sink, total=len(everything))
    numbered = list(enumerate(inputs))
    if options.on_inputs:
        if RETRIEVAL in statistics:  # each batch's prompts also generate before their values are emitted
            _statistics_with_retrieval(work, numbered, needles)
        else:
            _statistics_forward(work, numbered, options.attention, HIDDEN_NORM in statistics)
    elif RETRIEVAL in statistics:
        for (index, item), needle in zip(numbered, needles):
            score, generated = retrieval(model, options, item, needle, sink)
            work.finish_input(index, {RETRIEVAL: score}, generated=generated)
            work.emit_aggregate()
    if induction:
        _statistics_forward(work, [(len(inputs) + row, item) for row, item in enumerate(induction)], (INDUCTION,),
                            False)


def _statistics_with_retrieval(work: _Work, numbered: list[tuple[int, EncodedInput]],
                               needles: list[tuple[int, int]]) -> None:
    """Statistics and retrieval of each prompt, one input at a time (its values in one
    message)."""
    model, options = work.model, work.options
    for (index, item), needle in zip(numbered, needles):
        collected: list[HeadStatisticsInputResult] = []
        inner = _Collector(work.sink, collected)
        probe = _Work(model, options, inner, total=1)  # type: ignore[arg-type]
        _statistics_forward(probe, [(index, item)], options.attention, HIDDEN_NORM in options.statistics)
        result = collected[0]
        values = {value.statistic: value.mean.values for value in result.values}
        score, generated = retrieval(model, options, item, needle, work.sink)
        values[RETRIEVAL] = score
        norms = None if result.hidden_norms is None else result.hidden_norms.values
        ordered = {name: values[name] for name in options.statistics if name in values}
        work.finish_input(index, ordered, norms, generated)
        work.emit_aggregate()


@dataclass
class _Collector:
    """A sink that keeps the per-input results and drops the rest (cancels still reach
    the call's own sink)."""

    sink: Sink
    kept: list[HeadStatisticsInputResult]

    def emit(self, item: object) -> None:
        if isinstance(item, HeadStatisticsInputResult):
            self.kept.append(item)

    def check(self) -> None:
        self.sink.check()


METHOD = Method(
    name="head_statistics",
    rpc="StreamHeadStatistics",
    query_type=HeadStatisticsQuery,
    prepare=prepare,
    run=run,
    payloads={HeadStatisticsInputResult: "input", HeadStatisticsAggregateResult: "aggregate"},
)
