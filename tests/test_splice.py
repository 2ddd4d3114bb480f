"""Spliced serialization (rpc/splice.py) against protobuf's own: the spliced bytes parse
to the message SerializeToString gives, for every wire dtype and strided slices."""

from __future__ import annotations

import numpy as np
import pytest
from introspect_contract import pb
from introspect_contract.tensors import encode_storage, to_wire_storage

from introspect.results import AttentionLayerResult, WireArray
from introspect.rpc.encode import attention_chunks
from introspect.rpc.splice import with_tensors


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16", "int32"])
def test_spliced_tensors_parse_to_the_message_protobuf_serializes(dtype: str) -> None:
    values = np.random.default_rng(0).standard_normal((4, 9, 33)).astype(np.float32) * 100
    storage = to_wire_storage(values, dtype)[1:3, 2:7]  # a strided slice: made contiguous once
    indices = np.arange(2 * 5 * 33, dtype=np.int32).reshape(2, 5, 33)
    chunk = pb.AttentionChunk(input_index=1, layer=3, heads=[1, 2], query_start=2, query_end=7, layer_complete=True)
    spliced = with_tensors(chunk, {"values": (storage, dtype), "key_indices": (indices, "int32")})
    expected = pb.AttentionChunk()
    expected.CopyFrom(chunk)
    expected.values.CopyFrom(encode_storage(storage, dtype))
    expected.key_indices.CopyFrom(encode_storage(indices, "int32"))
    assert pb.AttentionChunk.FromString(spliced.serialized()) == expected
    assert spliced.size == expected.ByteSize()
    response = pb.StreamAttentionResponse.FromString(spliced.within(pb.StreamAttentionResponse.DESCRIPTOR
                                                                    .fields_by_name["chunk"].number).serialized())
    assert response.WhichOneof("payload") == "chunk" and response.chunk == expected


def test_attention_chunks_cover_a_layer_exactly_under_a_small_message_limit() -> None:
    maps = np.random.default_rng(1).random((3, 40, 40), dtype=np.float32)
    result = AttentionLayerResult(input_index=0, layer=2, heads=(0, 1, 2), view="heads",
                                  values=WireArray(maps, "float32"), key_indices=None, query_start=5)
    chunks = [pb.AttentionChunk.FromString(item.serialized()) for item in attention_chunks(result, 8 * 1024 + 2000)]
    rebuilt = np.full_like(maps, np.nan)
    for chunk in chunks:
        piece = np.frombuffer(chunk.values.data, dtype="<f4").reshape(tuple(chunk.values.shape))
        rebuilt[list(chunk.heads), chunk.query_start - 5:chunk.query_end - 5] = piece
        assert chunk.ByteSize() <= 8 * 1024 + 2000
    assert len(chunks) > 3 and [chunk.layer_complete for chunk in chunks] == [False] * (len(chunks) - 1) + [True]
    np.testing.assert_array_equal(rebuilt, maps)
