"""The Method record: what the servicer and the data plane need to know of a method.

Kept apart from the package's __init__ (which imports every method module) so that the
method modules can import it without an import cycle.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..engine import Sink
from ..models import LoadedModel, ModelDescription


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
