"""Head statistics on the client: building a StreamHeadStatisticsRequest and assembling
its stream (header, then per batch one message per input and a running aggregate) into a
`HeadStatisticsResult`.

    stats = client.head_statistics(["The cat sat.", "A dog ran."], model="gpt2")
    stats.mean["entropy"]            # [layers, heads] mean over the inputs
    stats.std["first_token"]         # [layers, heads] standard deviation over the inputs
    stats.roles()                    # [layers][heads] the statistic each head scores highest on

    client.head_statistics(None, model="gpt2", statistics=["induction"], induction_length=16)

On random-weight models the values mean nothing.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, TypedDict

import numpy as np
from introspect_contract import pb
from introspect_contract.enums import names_of
from introspect_contract.tensors import decode_tensor

from .inputs import InputsLike, make_inputs
from .options import enum_choices, enum_value, int_list, shared_fields
from .streams import HeaderFirst, input_fields, stream_fields

HEAD_STATISTIC = names_of(pb.HeadStatistic.DESCRIPTOR)
STATISTICS: dict[str, int] = enum_choices(HEAD_STATISTIC)
"""Statistic name -> HeadStatistic."""
HIDDEN_NORM_COLUMNS = ("first_token", "others_mean", "others_max")
"""The columns of the hidden_norm values [layers, 3]."""
ROLE_STATISTICS = ("first_token", "special_tokens", "delimiters", "previous_token", "same_token", "induction",
                   "retrieval")
"""Statistics that are shares of attention (0..1), compared to name a head's dominant role."""


class HeadStatisticsOptions(TypedDict, total=False):
    """Keyword options of `head_statistics` / `stream_head_statistics` (see
    `head_statistics_request`)."""

    model: str
    statistics: str | Iterable[str]
    layers: int | Iterable[int]
    heads: int | Iterable[int]
    induction_length: int
    induction_samples: int
    induction_seed: int
    retrieval_steps: int
    needle_start: int
    needle_end: int
    truncate: bool
    cache: str


def head_statistics_request(
    inputs: InputsLike | None = None,
    *,
    model: str = "",
    statistics: str | Iterable[str] = (),
    layers: int | Iterable[int] = (),
    heads: int | Iterable[int] = (),
    induction_length: int = 0,
    induction_samples: int = 0,
    induction_seed: int = 0,
    retrieval_steps: int = 0,
    needle_start: int = 0,
    needle_end: int = 0,
    truncate: bool = False,
    cache: str = "use",
) -> pb.StreamHeadStatisticsRequest:
    """Builds a StreamHeadStatisticsRequest.

    Args:
        inputs: one input or several (see `make_inputs`); None for induction alone.
        model: model name; "" selects the server's default model.
        statistics: names among "entropy", "first_token", "special_tokens", "delimiters",
            "mean_distance", "previous_token", "same_token", "hidden_norm", "induction",
            "retrieval"; empty means "entropy" to "hidden_norm".
        layers, heads: 0-based; empty means all.
        induction_length, induction_samples, induction_seed: the random sequences of the
            induction score (0: 20 tokens, 4 sequences).
        retrieval_steps: tokens generated greedily per prompt for the retrieval score (0: 8).
        needle_start, needle_end: the needle [start, end) in every prompt (negative count
            from the end; end 0 is the end).
        truncate: cut inputs longer than the model's limit instead of failing.
        cache: result cache policy: "use", "bypass" or "refresh".
    """
    names = [statistics] if isinstance(statistics, str) else list(statistics)
    return pb.StreamHeadStatisticsRequest(
        inputs=[] if inputs is None else make_inputs(inputs),
        statistics=[enum_value(STATISTICS, name, "statistics") for name in names],  # type: ignore[misc]
        layers=int_list(layers, "layers"),
        heads=int_list(heads, "heads"),
        induction_length=int(induction_length),
        induction_samples=int(induction_samples),
        induction_seed=int(induction_seed),
        retrieval_steps=int(retrieval_steps),
        needle_start=int(needle_start),
        needle_end=int(needle_end),
        **shared_fields(model, truncate, cache),
    )


@dataclass
class InputStatistics:
    """One input's statistics.

    Attributes:
        input_index: the input's index in `HeadStatisticsResult.inputs`.
        values: statistic -> [layers, heads] (hidden_norm: [layers, 3]).
        hidden_norms: [layers, tokens] residual-stream norms, or None.
        generated_token_ids, generated_tokens: retrieval's greedy continuation.
    """

    input_index: int
    values: dict[str, np.ndarray]
    hidden_norms: np.ndarray | None = None
    generated_token_ids: list[int] = field(default_factory=list)
    generated_tokens: list[str] = field(default_factory=list)


@dataclass
class HeadStatisticsResult:
    """Result of a head statistics call.

    Attributes:
        model, fingerprint, cached: which model (and weights) answered.
        inputs: every input as the model saw it (input_fields dicts: tokens, token_ids, ...):
            the request's, then the induction sequences.
        layers, heads: the axes of the [layers, heads] arrays.
        mean, std: statistic -> [layers, heads] over the inputs (hidden_norm: [layers, 3],
            columns HIDDEN_NORM_COLUMNS).
        counts: statistic -> inputs it covers.
        per_input: each input's own values, in stream order.
    """

    model: str
    fingerprint: str
    cached: bool
    inputs: list[dict[str, Any]]
    layers: list[int]
    heads: list[int]
    mean: dict[str, np.ndarray]
    std: dict[str, np.ndarray]
    counts: dict[str, int]
    per_input: list[InputStatistics]

    def roles(self) -> list[list[str]]:
        """[layers][heads]: each head's dominant role, the largest of its shares of attention
        by their means, made disjoint: "first_token" (the sink), "special_tokens" beyond the
        first token (special_tokens - first_token, at least 0: exact where the first token is
        special, as [CLS] or BOS), "delimiters" beyond the special tokens (the punctuation:
        delimiters - special_tokens), "previous_token", "same_token", "induction" and
        "retrieval"; "" when none was computed."""
        shares = role_shares(self.mean)
        if not shares:
            return [["" for _ in self.heads] for _ in self.layers]
        names = list(shares)
        best = np.stack([shares[name] for name in names]).argmax(axis=0)  # [layers, heads]
        return [[names[int(best[row, column])] for column in range(best.shape[1])] for row in range(best.shape[0])]


def role_shares(mean: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The disjoint shares of attention `HeadStatisticsResult.roles` compares, from the
    means of the statistics (those computed)."""
    shares = {name: mean[name] for name in ROLE_STATISTICS if name in mean}
    if "special_tokens" in shares and "first_token" in shares:
        shares["special_tokens"] = np.maximum(mean["special_tokens"] - mean["first_token"], 0.0)
    if "delimiters" in shares and "special_tokens" in mean:
        shares["delimiters"] = np.maximum(mean["delimiters"] - mean["special_tokens"], 0.0)
    return shares


Values = tuple[pb.HeadStatisticValues, np.ndarray, np.ndarray]  # the message, its mean and its std


def _values(messages: Iterable[pb.HeadStatisticValues]) -> dict[str, Values]:
    return {HEAD_STATISTIC.name_of(item.statistic) or "unspecified": (item, decode_tensor(item.mean),
                                                                     decode_tensor(item.std)) for item in messages}


class HeadStatisticsAssembler(HeaderFirst):
    """Collects a StreamHeadStatistics stream into a HeadStatisticsResult: feed every
    message to `add`, then call `result`."""

    def __init__(self) -> None:
        super().__init__()
        self._inputs: list[InputStatistics] = []
        self._aggregate: pb.HeadStatisticsAggregate | None = None

    def add(self, message: pb.StreamHeadStatisticsResponse) -> None:
        """Takes the next message of the stream."""
        kind = self._payload_kind(message)
        if kind == "input":
            item = message.input
            self._inputs.append(InputStatistics(
                input_index=item.input_index,
                values={name: mean for name, (_, mean, _) in _values(item.values).items()},
                hidden_norms=decode_tensor(item.hidden_norms) if item.HasField("hidden_norms") else None,
                generated_token_ids=[int(token) for token in item.generated_token_ids],
                generated_tokens=list(item.generated_tokens),
            ))
        elif kind == "aggregate":
            self._aggregate = message.aggregate

    def result(self) -> HeadStatisticsResult:
        """The assembled result; ValueError if the stream ended before its last aggregate."""
        aggregate = self._aggregate
        if self._header is None or aggregate is None or aggregate.inputs_done != aggregate.inputs_total:
            raise ValueError("the stream ended before the statistics of every input")
        values = _values(aggregate.values)
        first = next(iter(values.values()))[0] if values else None
        heads = next((list(item.heads) for item, _, _ in values.values() if item.heads), [])
        return HeadStatisticsResult(
            **stream_fields(self._header),
            inputs=[input_fields(item) for item in self._header.inputs],
            layers=list(first.layers) if first is not None else [],
            heads=heads,
            mean={name: mean for name, (_, mean, _) in values.items()},
            std={name: std for name, (_, _, std) in values.items()},
            counts={name: item.count for name, (item, _, _) in values.items()},
            per_input=self._inputs,
        )
