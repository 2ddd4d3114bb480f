"""Introspection methods: one module each, registered here by the query type it answers.

A method validates its query against a model's description (cheap, before queueing) and
runs it on the device worker: encode the inputs, emit a StreamStart, then results.
Adding a method: write its module with a `METHOD = Method(...)` (methods/registry.py)
naming its RPC, query type and result payloads, and list it in METHODS below; the
servicer serves its RPC from that entry.
"""

from __future__ import annotations

from types import MappingProxyType

from . import attention, head_ablation, head_statistics, logit_lens, patching, query_key, saliency, shapley_heads
from . import knockout, logit_attribution, patching_activation, patching_attribution  # register the circuit techniques
from .registry import Method

METHODS: tuple[Method, ...] = (attention.METHOD, saliency.METHOD, head_ablation.METHOD, logit_lens.METHOD,
                              patching.METHOD, shapley_heads.METHOD, query_key.METHOD, head_statistics.METHOD)
"""Every method the server serves, one per streaming RPC."""
_BY_QUERY_TYPE = MappingProxyType({method.query_type: method for method in METHODS})


def method_for(query: object) -> Method:
    """The method that answers queries of this type."""
    return _BY_QUERY_TYPE[type(query)]


__all__ = ["METHODS", "Method", "method_for"]
