"""Admission: the checks a request passes before any work is queued or any text is
tokenized, in one place for every method (and for the result cache's key path).

Sizes a caller controls are bounded here: the number of inputs (mean references and
target references included), the UTF-8 bytes of each input's text and of all of them,
the token ids of one input, and every list of numbers (layers, heads, positions, ids),
which can never usefully be longer than the model is wide or long. A full device queue
is refused here too, before tokenizing; the engine's own check stays authoritative.
Memory, which depends on the tokens, is estimated by each method (budget.py).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from .config import Settings
from .errors import ResourceExhausted
from .models import ModelDescription
from .requests import InputSpec


@dataclass(frozen=True)
class RequestLimits:
    """Size limits of one request (see the --max-* flags) and the queue limit."""

    max_inputs: int
    max_text_bytes: int
    max_request_text_bytes: int
    max_batch_tokens: int
    max_queue: int

    @classmethod
    def from_settings(cls, settings: Settings) -> RequestLimits:
        """The limits a server is configured with."""
        return cls(
            max_inputs=settings.max_inputs,
            max_text_bytes=settings.max_text_bytes,
            max_request_text_bytes=settings.max_request_text_bytes,
            max_batch_tokens=settings.max_batch_tokens,
            max_queue=settings.max_queue,
        )


def input_specs(query: object, path: str = "") -> Iterator[tuple[str, InputSpec]]:
    """Every InputSpec anywhere in a query dataclass, with its field path
    (e.g. "inputs[1]", "mean_references[0]", "target.reference")."""
    for item in dataclasses.fields(query):  # type: ignore[arg-type]
        value = getattr(query, item.name)
        name = f"{path}.{item.name}" if path else item.name
        if isinstance(value, InputSpec):
            yield name, value
        elif isinstance(value, tuple) and value and isinstance(value[0], InputSpec):
            yield from ((f"{name}[{index}]", spec) for index, spec in enumerate(value))
        elif isinstance(value, tuple) and value and dataclasses.is_dataclass(value[0]):  # e.g. input pairs
            for index, element in enumerate(value):
                yield from input_specs(element, f"{name}[{index}]")
        elif dataclasses.is_dataclass(value) and not isinstance(value, type):
            yield from input_specs(value, name)


def check_inputs(limits: RequestLimits, inputs: Sequence[tuple[str, InputSpec]]) -> None:
    """Raises ResourceExhausted, naming the field, for too many inputs, a text over
    --max-text-bytes, texts over --max-request-text-bytes in all, or more token ids in
    one input than a batch may hold. Costs no tokenizing."""
    if len(inputs) > limits.max_inputs:
        root = inputs[limits.max_inputs][0].split("[")[0]
        raise ResourceExhausted(
            root, f"{len(inputs)} inputs in one request; the server takes at most {limits.max_inputs} (--max-inputs)"
        )
    total = 0
    for field, spec in inputs:
        size = sum(len(text.encode("utf-8", "surrogatepass")) for text in (spec.text, spec.text_pair) if text)
        if size > limits.max_text_bytes:
            raise ResourceExhausted(
                f"{field}.text",
                f"{size} bytes of text; the server takes at most {limits.max_text_bytes} per input "
                "(--max-text-bytes): split or shorten it",
            )
        total += size
        if spec.token_ids is not None and len(spec.token_ids) > limits.max_batch_tokens:
            raise ResourceExhausted(
                f"{field}.token_ids",
                f"{len(spec.token_ids)} token ids; a batch holds at most {limits.max_batch_tokens} (--max-batch-tokens)",
            )
    if total > limits.max_request_text_bytes:
        raise ResourceExhausted(
            inputs[0][0].split("[")[0],
            f"{total} bytes of text in all; the server takes at most {limits.max_request_text_bytes} per request "
            "(--max-request-text-bytes): send fewer or shorter texts",
        )


def check_lists(query: object, description: ModelDescription, path: str = "") -> None:
    """Raises ResourceExhausted for a list of numbers (layers, heads, positions, token
    ids, (layer, head) pairs) longer than any use the model has for one: its longest
    input or its number of heads."""
    longest = max(description.max_tokens, description.num_layers * description.num_heads)
    for item in dataclasses.fields(query):  # type: ignore[arg-type]
        value = getattr(query, item.name)
        name = f"{path}.{item.name}" if path else item.name
        if isinstance(value, tuple) and value and dataclasses.is_dataclass(value[0]):  # e.g. input pairs
            for index, element in enumerate(value):
                check_lists(element, description, f"{name}[{index}]")
            continue
        if isinstance(value, tuple) and len(value) > longest and not isinstance(value[0], InputSpec):
            raise ResourceExhausted(
                name, f"{len(value)} entries; model {description.name!r} has no use for more than {longest}"
            )
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            check_lists(value, description, name)
