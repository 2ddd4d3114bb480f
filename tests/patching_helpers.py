"""Shared by the StreamPatching tests: the raw RPC call, tensor decoding, a server with a
tiny Qwen2 (tests/architectures.py) and plain-transformers references of it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from architectures import CASES, build_tiny_model, minilm_tokenizer
from conftest import InProcessServer, reference_model
from introspect_contract import pb, pb_grpc

IDS = [101, 1996, 3007, 1997, 2605, 2003, 3000, 1012, 102]


@pytest.fixture(scope="module")
def qwen2(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """(address, directory) of a server serving only a tiny random-weight Qwen2."""
    case = next(case for case in CASES if case.model_type == "qwen2")
    path = build_tiny_model(case, tmp_path_factory.mktemp("qwen2"), minilm_tokenizer())
    running = InProcessServer(f"--model=qwen2={path}")
    yield running.address, path
    assert running.stop() == 0


def served(name: str, address: str, model_dirs: dict[str, Path], qwen2: tuple[str, Path]) -> tuple[str, Any]:
    """(server address, reference model in plain transformers with eager attention) of a
    model: gpt2 and llama from the session server, qwen2 from its own."""
    if name == "qwen2":
        return qwen2[0], reference_model({"qwen2": qwen2[1]}, "qwen2")
    return address, reference_model(model_dirs, name)


def pair(ids: list[int]) -> pb.InputPair:
    """A pair with only its clean input, as token ids."""
    return pb.InputPair(clean=pb.Input(token_ids=pb.TokenIds(ids=ids)))


def logit_difference(token_id: int, contrast_token_id: int, position: int = -1) -> pb.Target:
    """A logit difference target."""
    return pb.Target(logit_difference=pb.LogitDifferenceTarget(
        position=position, token_id=token_id, contrast_token_id=contrast_token_id))


def stream_patching(address: str, request: pb.StreamPatchingRequest) -> list[pb.StreamPatchingResponse]:
    """Every response message of one StreamPatching call (raises grpc.RpcError)."""
    with grpc.insecure_channel(address) as channel:
        return list(pb_grpc.IntrospectionStub(channel).StreamPatching(request))


def payloads(responses: list[pb.StreamPatchingResponse], kind: str) -> list[Any]:
    """The payloads of one kind ("baseline", "logit_attribution", "knockout", ...)."""
    return [getattr(response, kind) for response in responses if response.WhichOneof("payload") == kind]


def array(tensor: pb.Tensor) -> np.ndarray:
    """A float32 result tensor as an array of its shape."""
    assert tensor.dtype == pb.DTYPE_FLOAT32
    return np.frombuffer(tensor.data, dtype="<f4").reshape(tuple(tensor.shape))


def refusal(address: str, request: pb.StreamPatchingRequest) -> tuple[grpc.StatusCode, str, str]:
    """(status code, the field violation's field, details) of a call that must fail."""
    from google.rpc import error_details_pb2
    from grpc_status import rpc_status

    with grpc.insecure_channel(address) as channel, pytest.raises(grpc.RpcError) as raised:
        list(pb_grpc.IntrospectionStub(channel).StreamPatching(request))
    status = rpc_status.from_call(raised.value)
    field = ""
    if status is not None and status.details:
        violations = error_details_pb2.BadRequest()
        status.details[0].Unpack(violations)
        field = violations.field_violations[0].field
    return raised.value.code(), field, raised.value.details() or ""
