"""Placeholder: the direct_logit_attribution technique of StreamPatching is being written (see methods/patching.py)."""

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
    raise Unimplemented("direct_logit_attribution is not implemented yet")
    yield


TECHNIQUE = register(PatchingTechnique("direct_logit_attribution", prepare, run))
