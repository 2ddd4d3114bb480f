"""The Method record: what the servicer and the data plane need to know of a method.

Kept apart from the package's __init__ (which imports every method module) so that the
method modules can import it without an import cycle.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..batching import Outlet
from ..engine import Sink
from ..models import LoadedModel, ModelDescription


@dataclass(frozen=True)
class Sharing:
    """How calls of a method share one forward (dynamic batching, batching.py): the
    method's `run` split into a part per call and one run of several parts."""

    # (query, options) -> what must be equal for calls of one model to share a forward;
    # None: this call runs alone (`Method.run`), e.g. a technique of the method that cannot share
    key: Callable[[Any, Any], Hashable | None]
    # (model, query, options, outlet) -> this call's part: inputs encoded, its own limits checked
    prepare: Callable[[LoadedModel, Any, Any, Outlet], Any]
    # (model, parts) -> whether the parts fit one forward (budget and --max-batch-tokens)
    fits: Callable[[LoadedModel, Sequence[Any]], bool]
    # (model, parts): one forward; each part emits StreamStart, then its results, to its outlet
    run: Callable[[LoadedModel, Sequence[Any]], None]


@dataclass(frozen=True)
class Method:
    """An introspection method, served by one server-streaming RPC.

    The RPC's request decodes into `query_type` by field name (rpc/decode.py); every
    result type `run` emits (but StreamStart, which is the header) is carried by the
    response's `payload` oneof field that `payloads` names (rpc/encode.py).
    """

    name: str
    rpc: str  # the RPC of the Introspection service, e.g. "StreamAttention"
    query_type: type
    # (model description, query) -> validated options; raises InvalidInput
    prepare: Callable[[ModelDescription, Any], Any]
    # (model, query, options, sink): emits StreamStart, then results
    run: Callable[[LoadedModel, Any, Any, Sink], None]
    # result type -> name of the response's payload field that carries it
    payloads: Mapping[type, str] = field(default_factory=dict)
    # set when concurrent calls may share a forward
    sharing: Sharing | None = None
