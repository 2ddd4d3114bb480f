"""Contract and operational conventions, against the session's real server: reflection
under v1 and v1alpha (each with its own client), health per model, GetServerInfo and the
versions, and the command line's --version, `info` and --server before or after the
command; a busy port stops `introspect serve` with one line."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import tomllib
from pathlib import Path

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from google.protobuf.message_factory import GetMessageClass
from grpc_health.v1 import health_pb2, health_pb2_grpc
from test_client_cli import run_cli

import introspect
import introspect_client
from introspect_client import Client
from introspect_contract import CONTRACT_VERSION

ROOT = Path(__file__).resolve().parent.parent
SERVICE = "introspect.v1.Introspection"
REFLECTION_NAMES = {"grpc.reflection.v1.ServerReflection", "grpc.reflection.v1alpha.ServerReflection"}


def test_versions_agree_across_the_package_and_the_contract() -> None:
    """pyproject, the server package and the client package share one version; the
    proto's header states CONTRACT_VERSION."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["version"] == introspect.__version__ == introspect_client.__version__
    header = (ROOT / "protos" / "introspect" / "v1" / "introspect.proto").read_text()
    assert re.search(r"^// Contract version: (\d+\.\d+\.\d+)\.", header, re.MULTILINE).group(1) == CONTRACT_VERSION


# ----------------------------------------------------------------------------------------
# Reflection


def test_reflection_v1alpha_with_grpcs_descriptor_database(address: str) -> None:
    """grpc_reflection's own v1alpha client lists the services and resolves the contract."""
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

    with grpc.insecure_channel(address) as channel:
        database = ProtoReflectionDescriptorDatabase(channel)
        services = set(database.get_services())
        assert {SERVICE, "grpc.health.v1.Health"} | REFLECTION_NAMES <= services
        pool = descriptor_pool.DescriptorPool(database)
        service = pool.FindServiceByName(SERVICE)
        assert "GetServerInfo" in service.methods_by_name
        response = pool.FindMessageTypeByName("introspect.v1.GetServerInfoResponse")
        assert [field.name for field in response.fields] == ["server_version", "contract_version"]


def _v1_reflection_classes(tmp_path: Path) -> tuple[type, type]:
    """ServerReflectionRequest and ServerReflectionResponse of grpc.reflection.v1, compiled
    by protoc from tests/protos (independent of the server's code)."""
    out = tmp_path / "reflection_v1.binpb"
    subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", f"-I{ROOT / 'tests' / 'protos'}", f"--descriptor_set_out={out}",
         "grpc/reflection/v1/reflection.proto"],
        check=True, timeout=120,
    )
    files = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())
    pool = descriptor_pool.DescriptorPool()
    for file in files.file:
        pool.Add(file)
    request = GetMessageClass(pool.FindMessageTypeByName("grpc.reflection.v1.ServerReflectionRequest"))
    response = GetMessageClass(pool.FindMessageTypeByName("grpc.reflection.v1.ServerReflectionResponse"))
    return request, response


def test_reflection_v1_with_a_raw_stub(address: str, tmp_path: Path) -> None:
    """A v1 client made from the published v1 proto lists the services, fetches the
    contract's file by symbol and the v1 reflection file itself."""
    request_type, response_type = _v1_reflection_classes(tmp_path)
    with grpc.insecure_channel(address) as channel:
        call = channel.stream_stream(
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
            request_serializer=request_type.SerializeToString,
            response_deserializer=response_type.FromString,
        )
        requests = [
            request_type(list_services=""),
            request_type(file_containing_symbol=SERVICE),
            request_type(file_containing_symbol="grpc.reflection.v1.ServerReflection"),
            request_type(file_containing_symbol="no.such.Symbol"),
        ]
        listed, contract, itself, missing = list(call(iter(requests), timeout=30))
    services = {service.name for service in listed.list_services_response.service}
    assert {SERVICE, "grpc.health.v1.Health"} | REFLECTION_NAMES <= services
    files = [descriptor_pb2.FileDescriptorProto.FromString(data)
             for data in contract.file_descriptor_response.file_descriptor_proto]
    assert any(file.package == "introspect.v1" and "GetServerInfo" in [m.name for s in file.service for m in s.method]
               for file in files)
    reflection_file = descriptor_pb2.FileDescriptorProto.FromString(
        itself.file_descriptor_response.file_descriptor_proto[0]
    )
    assert reflection_file.package == "grpc.reflection.v1"
    assert [method.input_type for method in reflection_file.service[0].method] == [
        ".grpc.reflection.v1.ServerReflectionRequest"
    ]
    assert missing.error_response.error_code == grpc.StatusCode.NOT_FOUND.value[0]


# ----------------------------------------------------------------------------------------
# Health per model


def _health(address: str, service: str) -> tuple[grpc.StatusCode, int]:
    with grpc.insecure_channel(address) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
        except grpc.RpcError as error:
            return error.code(), -1
    return grpc.StatusCode.OK, reply.status


def test_health_per_model(address: str, client: Client) -> None:
    """"", the service and SERVICE/<model> for each loaded model are SERVING; a model not
    loaded (or a bare model name) is NOT_FOUND. (NOT_SERVING while draining:
    tests/reliability/test_graceful_stop.py.)"""
    serving = (grpc.StatusCode.OK, health_pb2.HealthCheckResponse.SERVING)
    models = [model.name for model in client.list_models()]
    assert {"minilm", "gpt2"} <= set(models)
    for service in ["", SERVICE, *(f"{SERVICE}/{model}" for model in models)]:
        assert _health(address, service) == serving, service
    for unknown in (f"{SERVICE}/nope", "minilm", f"{SERVICE}/"):
        assert _health(address, unknown)[0] == grpc.StatusCode.NOT_FOUND, unknown


# ----------------------------------------------------------------------------------------
# GetServerInfo and versions


def test_get_server_info(client: Client) -> None:
    info = client.server_info(timeout=10)
    assert info.server_version == introspect.__version__
    assert info.contract_version == CONTRACT_VERSION


async def test_get_server_info_async(address: str) -> None:
    from introspect_client import AsyncClient

    async with AsyncClient(address) as client:
        info = await client.server_info(timeout=10)
    assert (info.server_version, info.contract_version) == (introspect.__version__, CONTRACT_VERSION)


def test_cli_version_and_serve_version() -> None:
    expected = f"introspect {introspect.__version__} (contract introspect.v1 {CONTRACT_VERSION})"
    for arguments in (["--version"], ["serve", "--version"]):
        finished = run_cli(*arguments)
        assert finished.returncode == 0, finished.stderr
        assert finished.stdout.strip() == expected, arguments


def test_cli_info_with_server_before_or_after_the_command(address: str) -> None:
    expected = f"server   {address}: introspect {introspect.__version__} (contract introspect.v1 {CONTRACT_VERSION})"
    for arguments in (["--server", address, "info"], ["info", "--server", address]):
        finished = run_cli(*arguments)
        assert finished.returncode == 0, finished.stderr
        assert finished.stdout.splitlines()[0] == expected, arguments
    finished = run_cli("info", "--json", env={"INTROSPECT_SERVER": address})
    assert finished.returncode == 0, finished.stderr
    assert f'"contract_version": "{CONTRACT_VERSION}"' in finished.stdout


def test_cli_server_flag_before_the_command_and_the_one_after_wins(address: str) -> None:
    """models with --server before the command; after it, it overrides both the one
    before and $INTROSPECT_SERVER."""
    finished = run_cli("--server", address, "models", env={"INTROSPECT_SERVER": "127.0.0.1:1"})
    assert finished.returncode == 0, finished.stderr
    assert "minilm" in finished.stdout
    finished = run_cli("--server", "127.0.0.1:1", "models", "--server", address, "--timeout", "20")
    assert finished.returncode == 0, finished.stderr
    from introspect_client.cli import build_parser

    assert build_parser({"INTROSPECT_SERVER": "h:1"}).parse_args(["models"]).server == "h:1"
    assert build_parser({}).parse_args(["models"]).server == "127.0.0.1:50051"
    assert build_parser({}).parse_args(["--server", "a:1", "models"]).server == "a:1"
    assert build_parser({}).parse_args(["--server", "a:1", "models", "--server", "b:2"]).server == "b:2"


# ----------------------------------------------------------------------------------------
# A busy port


def test_busy_port_is_one_line_and_a_nonzero_exit() -> None:
    """`introspect serve` on a port another socket listens on: exit 2 at once (before
    the models load), one log line naming the address, no traceback."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        finished = subprocess.run(
            [sys.executable, "-m", "introspect", "--host", "127.0.0.1", "--port", str(port)],
            capture_output=True, text=True, timeout=120,
        )
    assert finished.returncode == 2, finished.stderr
    lines = finished.stderr.strip().splitlines()
    assert len(lines) == 1, finished.stderr
    assert f"cannot listen on 127.0.0.1:{port}: the port is in use" in lines[0]
    assert "Traceback" not in finished.stderr and finished.stdout == ""  # one line: no model was loaded


def test_client_flags_before_serve_are_refused_in_one_line() -> None:
    """`introspect --server H:P serve`: `serve` takes the server's flags only; a usage
    error (exit 2) saying so, not a traceback."""
    finished = subprocess.run([sys.executable, "-c", "import sys; from introspect_client.cli import main; "
                               "sys.exit(main(['--server', '127.0.0.1:1', 'serve']))"],
                              capture_output=True, text=True, timeout=120)
    assert finished.returncode == 2, finished.stderr
    assert "`serve` must come first" in finished.stderr and "Traceback" not in finished.stderr
