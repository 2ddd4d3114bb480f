"""docs/clients.md against the session's real server: every Python block runs (the
documented address replaced by the server's), and every grpcurl request body (`-d`) is
parsed with protobuf's JSON mapping, as grpcurl parses it, and sent to the method it names.
grpcurl itself is not installed here (Debian bookworm has no package for it)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import grpc
import pytest
from google.protobuf import json_format
from google.protobuf.message_factory import GetMessageClass
from grpc_health.v1 import health_pb2

from introspect_contract import pb

DOC = Path(__file__).resolve().parent.parent / "docs" / "clients.md"
DOCUMENTED_ADDRESS = "127.0.0.1:50051"


def _blocks(language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", DOC.read_text(), re.MULTILINE | re.DOTALL)


def test_the_page_has_its_sections() -> None:
    headings = re.findall(r"^## (.+)$", DOC.read_text(), re.MULTILINE)
    assert headings == ["Python", "grpcurl", "TypeScript", "Any other language", "Tensor layout", "Chunking", "Errors"]


@pytest.mark.parametrize("index", range(len(_blocks("python"))))
def test_python_block_runs(address: str, index: int, capsys: pytest.CaptureFixture[str]) -> None:
    code = _blocks("python")[index]
    assert DOCUMENTED_ADDRESS in code
    exec(compile(code.replace(DOCUMENTED_ADDRESS, address), f"docs/clients.md python block {index}", "exec"), {})


def _grpcurl_calls() -> list[tuple[str, str]]:
    """(method path, JSON body) of every grpcurl line with -d."""
    calls = []
    for block in _blocks("sh"):
        for line in block.splitlines():
            if not line.startswith("grpcurl ") or " -d " not in line:
                continue
            words = shlex.split(line)
            calls.append((words[-1], words[words.index("-d") + 1]))
    return calls


@pytest.mark.parametrize("method, body", _grpcurl_calls())
def test_grpcurl_body_is_served(address: str, method: str, body: str) -> None:
    service_name, _, rpc_name = method.rpartition("/")
    files = {"introspect.v1.Introspection": pb.DESCRIPTOR, "grpc.health.v1.Health": health_pb2.DESCRIPTOR}
    rpc = files[service_name].services_by_name[service_name.rsplit(".", 1)[1]].methods_by_name[rpc_name]
    request = json_format.Parse(body, GetMessageClass(rpc.input_type)())
    response_type = GetMessageClass(rpc.output_type)
    with grpc.insecure_channel(address) as channel:
        kind = channel.unary_stream if rpc.server_streaming else channel.unary_unary
        call = kind(f"/{method}", request_serializer=type(request).SerializeToString,
                    response_deserializer=response_type.FromString)
        reply = call(request, timeout=60)
        messages = list(reply) if rpc.server_streaming else [reply]
    assert messages
    json_format.MessageToJson(messages[-1])  # grpcurl prints each as JSON
