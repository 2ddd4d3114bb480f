"""Placeholder: the attention_knockout technique of StreamPatching is being written (see methods/patching.py)."""

from __future__ import annotations

from collections.abc import Iterator

from ..errors import Unimplemented
from ..models import LoadedModel, ModelDescription
from ..requests import PatchingQuery
from .patching import Check, PatchingOptions, PatchingPair, PatchingTechnique, register


def prepare(description: ModelDescription, query: PatchingQuery) -> None:
    """No options yet."""


def run(model: LoadedModel, options: PatchingOptions, pair: PatchingPair, check: Check) -> Iterator[object]:
    """Not served yet."""
    raise Unimplemented("attention_knockout is not implemented yet")
    yield


TECHNIQUE = register(PatchingTechnique("attention_knockout", prepare, run))
