"""The logit lens on the client: building a StreamLogitLensRequest and assembling its
stream (header, then one LogitLensLayer per layer) into a `LogitLensResult`.

    lens = client.logit_lens("The capital of France is", model="gpt2", top_k=3)
    lens.top_tokens[-1][-1]        # the model's own top-3 next tokens after the last token
    lens.chosen_probabilities      # [layers, positions]: p(final prediction) layer by layer
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TypedDict

import numpy as np
from introspect_contract import pb
from introspect_contract.tensors import decode_tensor

from .inputs import InputLike, make_input
from .options import int_list, shared_fields
from .streams import HeaderFirst, SingleInputResult, single_input_fields


class LogitLensOptions(TypedDict, total=False):
    """Keyword options of `logit_lens` / `stream_logit_lens` (see `logit_lens_request`)."""

    model: str
    layers: int | Iterable[int]
    positions: int | Iterable[int]
    top_k: int
    token_id: int | None
    truncate: bool
    cache: str


def logit_lens_request(
    input: InputLike,
    *,
    model: str = "",
    layers: int | Iterable[int] = (),
    positions: int | Iterable[int] = (),
    top_k: int = 0,
    token_id: int | None = None,
    truncate: bool = False,
    cache: str = "use",
) -> pb.StreamLogitLensRequest:
    """Builds a StreamLogitLensRequest.

    Args:
        input: one input (text, (text, text_pair), token ids or an Input).
        model: model name; "" selects the server's default model (it needs an LM head).
        layers: layers whose residual stream to read (0-based); empty means all.
        positions: token positions (negative count from the end); empty means all.
        top_k: next tokens to return per layer and position; 0 means 5.
        token_id: token whose probability is reported; None: the model's own final
            prediction at each position.
        truncate: cut an input longer than the model's limit instead of failing.
        cache: result cache policy: "use", "bypass" or "refresh".
    """
    request = pb.StreamLogitLensRequest(
        input=make_input(input),
        layers=int_list(layers, "layers"),
        positions=int_list(positions, "positions"),
        top_k=int(top_k),
        **shared_fields(model, truncate, cache),
    )
    if token_id is not None:
        request.token_id = int(token_id)
    return request


@dataclass
class LogitLensResult(SingleInputResult):
    """Result of a logit lens call.

    Attributes (besides SingleInputResult's: model, fingerprint, cached and the input as
    the model saw it):
        layers: the layers, in stream order (the first axis below).
        positions: the token positions (the second axis below).
        top_token_ids: [layers, positions, k] int32, most probable next tokens first.
        top_probabilities: [layers, positions, k] float32, their probabilities.
        top_tokens: [layers][positions][k] token strings.
        chosen_token_ids: [positions]: the token whose probability is tracked.
        chosen_probabilities: [layers, positions] float32: its probability per layer.
    """

    layers: list[int]
    positions: list[int]
    top_token_ids: np.ndarray
    top_probabilities: np.ndarray
    top_tokens: list[list[list[str]]]
    chosen_token_ids: list[int]
    chosen_probabilities: np.ndarray


class LogitLensAssembler(HeaderFirst):
    """Collects a StreamLogitLens stream into a LogitLensResult: feed every message to
    `add`, then call `result`."""

    def __init__(self) -> None:
        super().__init__()
        self._layers: list[pb.LogitLensLayer] = []

    def add(self, message: pb.StreamLogitLensResponse) -> None:
        """Takes the next message of the stream."""
        if self._payload_kind(message) == "layer":
            layer = message.layer
            if self._layers and list(layer.positions) != list(self._layers[0].positions):
                raise ValueError(f"layer {layer.layer} covers other positions than layer {self._layers[0].layer}")
            self._layers.append(layer)

    def result(self) -> LogitLensResult:
        """The assembled result; ValueError if the stream ended before any layer."""
        if self._header is None or not self._layers:
            raise ValueError("the stream ended without its header and layers")
        first = self._layers[0]
        positions = [int(position) for position in first.positions]
        ids = np.stack([decode_tensor(layer.top_token_ids) for layer in self._layers])
        k = ids.shape[-1]
        return LogitLensResult(
            **single_input_fields(self._header),
            layers=[layer.layer for layer in self._layers],
            positions=positions,
            top_token_ids=ids,
            top_probabilities=np.stack([decode_tensor(layer.top_probabilities) for layer in self._layers]),
            top_tokens=[
                [list(layer.top_tokens[row * k : (row + 1) * k]) for row in range(len(positions))]
                for layer in self._layers
            ],
            chosen_token_ids=[int(token) for token in first.chosen_token_ids],
            chosen_probabilities=np.stack([decode_tensor(layer.chosen_probabilities) for layer in self._layers]),
        )
