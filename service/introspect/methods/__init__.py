"""Introspection methods: one module each, registered here by the query type it answers.

A method validates its query against a model's description (cheap, before queueing) and
runs it on the device worker: encode the inputs, emit a StreamStart, then results.
Adding a method: write its module with a `METHOD = Method(...)`, list it in _MODULES.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..engine import Sink
from ..models import LoadedModel, ModelDescription


@dataclass(frozen=True)
class Method:
    """An introspection method."""

    name: str
    query_type: type
    # (model description, query) -> validated options; raises InvalidInput
    prepare: Callable[[ModelDescription, Any], Any]
    # (model, query, options, sink): emits StreamStart, then results
    run: Callable[[LoadedModel, Any, Any, Sink], None]


_MODULES = ("attention", "head_ablation", "saliency")
_REGISTRY: dict[type, Method] = {}


def method_for(query: object) -> Method:
    """The method that answers queries of this type."""
    if not _REGISTRY:
        for module in _MODULES:
            method: Method = importlib.import_module(f"{__name__}.{module}").METHOD
            _REGISTRY[method.query_type] = method
    return _REGISTRY[type(query)]
