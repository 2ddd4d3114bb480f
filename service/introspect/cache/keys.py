"""Cache keys: SHA-256 over everything a streamed result depends on.

The parts are length-prefixed so that no two different part lists hash alike, and a
format tag leads so that changing what goes in invalidates every old key.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Sequence

_FORMAT = b"introspect-result-v2"  # v2: SaliencyChunk gained batch_size and converged
_LENGTH = struct.Struct("<Q")


def result_key(
    fingerprint: str,
    rpc: str,
    canonical_request: bytes,
    processed_inputs: Sequence[bytes],
    serving: str = "",
) -> str:
    """Hex SHA-256 of the model's weight fingerprint, the RPC's full name, the canonical
    request bytes, every input as the model sees it after processing (token ids, or
    pixels: EncodedInput.identity, so a changed tokenizer or image processor misses) and
    `serving`: whatever else on the server shapes a result's bytes (the weight dtype, the
    message size limit that sets chunk sizes), so replicas configured differently that
    share Redis never replay each other's results."""
    digest = hashlib.sha256()

    def part(data: bytes) -> None:
        digest.update(_LENGTH.pack(len(data)))
        digest.update(data)

    part(_FORMAT)
    part(fingerprint.encode())
    part(rpc.encode())
    part(canonical_request)
    part(serving.encode())
    part(_LENGTH.pack(len(processed_inputs)))
    for processed in processed_inputs:
        part(processed)
    return digest.hexdigest()
