"""Layers, heads and positions chosen by a request: the range checks the methods share.

Each refusal is INVALID_ARGUMENT naming the request's field and the valid range.
"""

from __future__ import annotations

from ..errors import require


def unique_in_range(values: tuple[int, ...], limit: int, field: str, what: str) -> tuple[int, ...]:
    """`values` without repeats, in request order; INVALID_ARGUMENT naming `field` for one
    outside [0, limit) (`what`: "layer", "head", ...)."""
    out_of_range = [value for value in values if not 0 <= value < limit]
    require(not out_of_range, field, f"{what} {out_of_range} out of range: the model has {limit} {what}s (0..{limit - 1})")
    return tuple(dict.fromkeys(values))


def absolute_positions(requested: tuple[int, ...], length: int, field: str, of: str = "the input") -> tuple[int, ...]:
    """Token positions (negative counts from the end) as absolute positions, sorted and
    unique; every position when none is requested. INVALID_ARGUMENT naming `field` for
    one outside `of`, an input of `length` tokens."""
    bad = [position for position in requested if not -length <= position < length]
    require(not bad, field, f"positions {bad} are outside {of} ({length} tokens; use -{length}..{length - 1})")
    return tuple(sorted({position % length for position in requested})) or tuple(range(length))
