"""Assembly of the StreamPatching stream (header, then per pair a baseline and its
results, then the means over pairs) into a `PatchingResult` of numpy arrays.

Array conventions (every map spans the whole model, whatever was requested):

- per-position points (resid_pre, resid_post, attn_out, mlp_out): [num_layers,
  clean_tokens];
- head: [num_layers, num_heads];
- head_position: [num_layers, num_heads, clean_tokens];

float32, NaN in every cell the stream did not fill (layers, positions or heads not
requested, a clean position with no corrupted counterpart). `layers`, `positions` and
`heads` of a map list what was filled. The mean over pairs (pair_index -1, sent only
for two pairs or more) spans the shortest clean input: the server sends per-position
means only when every pair patched the same positions.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from introspect_contract import pb
from introspect_contract.enums import PATCH_POINT, PATCHING_METHOD
from introspect_contract.tensors import decode_tensor
from .image_layout import ImageLayout
from .streams import HeaderFirst, input_fields, stream_fields

HEAD_POINTS = ("head", "head_position")
"""Patch points with a heads axis."""
POSITION_POINTS = ("resid_pre", "resid_post", "attn_out", "mlp_out", "head_position")
"""Patch points with a positions axis (the last)."""
MEAN = -1
"""pair_index of the means over pairs."""


@dataclass
class PatchedInput:
    """One input as the model saw it."""

    tokens: list[str]
    token_ids: list[int]
    truncated: bool
    original_length: int
    image: ImageLayout | None = None


@dataclass
class PatchingBaseline:
    """A pair's unpatched scores: the metric on the clean and on the corrupted run."""

    clean_score: float
    corrupted_score: float
    metric: str
    num_layers: int
    num_heads: int
    batch_size: int


@dataclass
class PatchingMap:
    """Patching results of one (method, point) over every layer (see the module for the
    shapes; NaN where nothing was sent).

    Attributes:
        method: "activation" (exact) or "attribution" (first-order estimate).
        point: the patch point.
        values: the metric with each patch (attribution: its estimate).
        normalized: (values - corrupted) / (clean - corrupted) with the target metric;
            None for KL.
        layers / positions / heads: the layers, clean positions and heads filled.
    """

    method: str
    point: str
    values: np.ndarray
    normalized: np.ndarray | None
    layers: list[int] = field(default_factory=list)
    positions: list[int] = field(default_factory=list)
    heads: list[int] = field(default_factory=list)


@dataclass
class PatchingCorrelation:
    """How attribution patching ranks against exact patching at one point."""

    pearson: float
    max_abs_difference: float


@dataclass
class LogitAttributionArrays:
    """Direct logit attribution of a clean input: heads [layers, heads, positions], mlps
    and attention_biases [layers, positions], embeddings, bias and logit_difference
    [positions] (logit_difference is the sum of all the others)."""

    heads: np.ndarray
    mlps: np.ndarray
    attention_biases: np.ndarray
    embeddings: np.ndarray
    bias: np.ndarray
    logit_difference: np.ndarray


@dataclass
class KnockoutArrays:
    """Attention knockout: per window start, the metric with the window's edges blocked
    (`values`) and its change from the unblocked clean metric (`change`), [windows]."""

    window_starts: list[int]
    window: int
    values: np.ndarray
    change: np.ndarray


@dataclass
class PairPatching:
    """The results of one pair, or their mean over pairs (index -1: no inputs or
    baseline of its own).

    Attributes:
        index: the pair's index in the request; -1 for the mean.
        clean / corrupted: the inputs as the model saw them (corrupted None when not sent).
        baseline: the unpatched scores (None for the mean).
        maps: (method, point) -> PatchingMap.
        correlations: point -> attribution against exact patching (with_exact).
        logit_attribution / knockout: the clean-only methods' results.
    """

    index: int
    clean: PatchedInput | None = None
    corrupted: PatchedInput | None = None
    baseline: PatchingBaseline | None = None
    maps: dict[tuple[str, str], PatchingMap] = field(default_factory=dict)
    correlations: dict[str, PatchingCorrelation] = field(default_factory=dict)
    logit_attribution: LogitAttributionArrays | None = None
    knockout: KnockoutArrays | None = None


@dataclass
class PatchingResult:
    """Result of a patching call: one PairPatching per pair, in request order, and
    `mean` over them (None for one pair). `inputs` are the header's inputs in its order:
    each pair's clean input, then its corrupted one when sent."""

    model: str
    fingerprint: str
    cached: bool
    inputs: list[PatchedInput]
    pairs: list[PairPatching]
    mean: PairPatching | None = None

    def __getitem__(self, index: int) -> PairPatching:
        return self.pairs[index]

    def __len__(self) -> int:
        return len(self.pairs)

    def __iter__(self) -> Iterator[PairPatching]:
        return iter(self.pairs)


def _width(item: PatchedInput) -> int:
    """Tokens of an input: its token ids, or for images its token names."""
    return len(item.token_ids) or len(item.tokens)


def _name(names: Any, number: int, what: str) -> str:
    name = names.name_of(number)
    if name is None:
        raise ValueError(f"the stream sent an unknown {what} {number}")
    return str(name)


def _array(tensor: pb.Tensor, shape: tuple[int, ...], where: str) -> np.ndarray:
    values = decode_tensor(tensor).astype(np.float32)
    if values.shape != shape:
        raise ValueError(f"{where}: values of shape {values.shape}, expected {shape}")
    return values


class _MapBuilder:
    """Fills one PatchingMap from its PatchingLayer messages."""

    def __init__(self, method: str, point: str, layers: int, heads: int, width: int, normalized: bool) -> None:
        shape = (layers,) + ((heads,) if point in HEAD_POINTS else ()) + ((width,) if point in POSITION_POINTS else ())
        self.map = PatchingMap(method, point, np.full(shape, np.nan, np.float32),
                               np.full(shape, np.nan, np.float32) if normalized else None)

    def add(self, layer: pb.PatchingLayer) -> None:
        target = self.map
        where = f"pair {layer.pair_index}, {target.method} {target.point}, layer {layer.layer}"
        heads, positions = list(layer.heads), list(layer.positions)
        if target.point not in HEAD_POINTS and heads or target.point not in POSITION_POINTS and positions:
            raise ValueError(f"{where}: heads {heads} and positions {positions} do not fit the point")
        limits = target.values.shape
        if not 0 <= layer.layer < limits[0]:
            raise ValueError(f"{where}: layer outside the model's {limits[0]} layers")
        index: tuple[Any, ...] = (layer.layer,)
        if target.point in HEAD_POINTS:
            if any(not 0 <= head < limits[1] for head in heads):
                raise ValueError(f"{where}: heads {heads} outside the model's {limits[1]} heads")
            index += (np.array(heads, dtype=np.intp),)
        if target.point in POSITION_POINTS:
            if any(not 0 <= position < limits[-1] for position in positions):
                raise ValueError(f"{where}: positions {positions} outside the clean input's {limits[-1]} tokens")
            index += (np.array(positions, dtype=np.intp),)
        shape = tuple(len(axis) for axis in index[1:])
        grid = np.ix_(*index[1:]) if len(index) > 2 else index[1:]
        target.values[layer.layer][grid] = _array(layer.values, shape, where)
        if target.normalized is not None and layer.HasField("normalized"):
            target.normalized[layer.layer][grid] = _array(layer.normalized, shape, where + " normalized")
        target.layers = sorted({*target.layers, layer.layer})
        target.positions = sorted({*target.positions, *positions})
        target.heads = sorted({*target.heads, *heads})


def _logit_attribution(message: pb.LogitAttribution) -> LogitAttributionArrays:
    arrays = {name: decode_tensor(getattr(message, name)).astype(np.float32)
              for name in ("heads", "mlps", "attention_biases", "embeddings", "bias", "logit_difference")}
    layers, _, positions = arrays["heads"].shape if arrays["heads"].ndim == 3 else (None, None, None)
    expected = {"mlps": (layers, positions), "attention_biases": (layers, positions), "embeddings": (positions,),
                "bias": (positions,), "logit_difference": (positions,)}
    for name, shape in expected.items():
        if layers is None or arrays[name].shape != shape:
            raise ValueError(f"logit attribution of pair {message.pair_index}: {name} of shape "
                             f"{arrays[name].shape} does not match heads of shape {arrays['heads'].shape}")
    return LogitAttributionArrays(**arrays)


def _knockout(message: pb.KnockoutResult) -> KnockoutArrays:
    starts = [int(start) for start in message.window_starts]
    where = f"knockout of pair {message.pair_index}"
    return KnockoutArrays(starts, message.window or 1, _array(message.values, (len(starts),), where),
                          _array(message.change, (len(starts),), where + " change"))


class PatchingAssembler(HeaderFirst):
    """Collects a StreamPatching stream into a PatchingResult: feed every message to
    `add`, then call `result`.

    `corrupted_sent` says, per pair of the request, whether it sent a corrupted input
    (the header lists each pair's clean input, then its corrupted one when sent); None
    infers it from the header when every pair or none sent one.
    """

    def __init__(self, corrupted_sent: Sequence[bool] | None = None) -> None:
        super().__init__()
        self._corrupted_sent = None if corrupted_sent is None else list(corrupted_sent)
        self._baselines: dict[int, pb.PatchingBaseline] = {}
        self._layers: dict[int, list[pb.PatchingLayer]] = {}
        self._pairs: dict[int, PairPatching] = {}

    @classmethod
    def for_request(cls, request: pb.StreamPatchingRequest) -> PatchingAssembler:
        """An assembler for the stream answering `request`."""
        return cls([pair.HasField("corrupted") for pair in request.pairs])

    def add(self, message: pb.StreamPatchingResponse) -> None:
        """Takes the next message of the stream."""
        kind = self._payload_kind(message)
        if kind in (None, "header"):
            return
        payload = getattr(message, kind)
        index = payload.pair_index
        if kind == "baseline":
            if index in self._baselines or index < 0:
                raise ValueError(f"the stream sent a baseline for pair {index} twice or out of range")
            self._baselines[index] = payload
            return
        if index != MEAN and index not in self._baselines:
            raise ValueError(f"the stream sent {kind} of pair {index} before its baseline")
        pair = self._pairs.setdefault(index, PairPatching(index))
        if kind == "layer":
            self._layers.setdefault(index, []).append(payload)
        elif kind == "correlation":
            point = _name(PATCH_POINT, payload.point, "patch point")
            pair.correlations[point] = PatchingCorrelation(payload.pearson, payload.max_abs_difference)
        elif kind == "logit_attribution":
            pair.logit_attribution = _logit_attribution(payload)
        elif kind == "knockout":
            pair.knockout = _knockout(payload)

    def _inputs_of_pairs(self, inputs: list[PatchedInput]) -> list[tuple[PatchedInput, PatchedInput | None]]:
        count = len(self._baselines)
        sent = self._corrupted_sent
        if sent is None:
            if len(inputs) not in (count, 2 * count):
                raise ValueError(f"{len(inputs)} header inputs for {count} pairs: give corrupted_sent")
            sent = [len(inputs) == 2 * count] * count
        if len(sent) != count or len(inputs) != count + sum(sent):
            raise ValueError(f"the stream has {count} baselines and {len(inputs)} inputs; the request {len(sent)} "
                             f"pairs, {sum(sent)} with a corrupted input")
        pairs, cursor = [], iter(inputs)
        for with_corrupted in sent:
            clean = next(cursor)
            pairs.append((clean, next(cursor) if with_corrupted else None))
        return pairs

    def _build_maps(self, pair: PairPatching, layers: int, heads: int, width: int, normalized: bool) -> None:
        builders: dict[tuple[str, str], _MapBuilder] = {}
        for layer in self._layers.get(pair.index, []):
            key = (_name(PATCHING_METHOD, layer.method, "method"), _name(PATCH_POINT, layer.point, "patch point"))
            if key not in builders:
                builders[key] = _MapBuilder(*key, layers, heads, width, normalized)
            builders[key].add(layer)
        pair.maps = {key: builder.map for key, builder in builders.items()}

    def result(self) -> PatchingResult:
        """The assembled result; ValueError if the stream ended early or disagrees with
        itself."""
        if self._header is None or not self._baselines:
            raise ValueError("the stream ended without its header and baselines")
        if sorted(self._baselines) != list(range(len(self._baselines))):
            raise ValueError(f"baselines of pairs {sorted(self._baselines)}, expected 0..{len(self._baselines) - 1}")
        ordered = sorted(self._header.inputs, key=lambda item: item.input_index)
        inputs = [PatchedInput(**input_fields(item)) for item in ordered]
        pairs = []
        for index, (clean, corrupted) in enumerate(self._inputs_of_pairs(inputs)):
            baseline = self._baselines[index]
            pair = self._pairs.get(index, PairPatching(index))
            pair.clean, pair.corrupted = clean, corrupted
            pair.baseline = PatchingBaseline(baseline.clean_score, baseline.corrupted_score, baseline.metric,
                                             baseline.num_layers, baseline.num_heads, baseline.batch_size)
            self._build_maps(pair, baseline.num_layers, baseline.num_heads, _width(clean),
                             baseline.metric != "kl_divergence")
            pairs.append(pair)
        mean = self._pairs.get(MEAN)
        if mean is not None:
            first = self._baselines[0]
            shortest = min(_width(pair.clean) for pair in pairs if pair.clean)
            self._build_maps(mean, first.num_layers, first.num_heads, shortest, first.metric != "kl_divergence")
        unknown = set(self._pairs) - set(range(len(pairs))) - {MEAN}
        if unknown:
            raise ValueError(f"the stream sent results of pairs {sorted(unknown)} without baselines")
        return PatchingResult(**stream_fields(self._header), inputs=inputs, pairs=pairs, mean=mean)
