"""How the client connects: bearer token, TLS (mutual, with certificates made here by
openssl), the default service config's retries, a ready channel, and the restart of a
stream that fails UNAVAILABLE mid-way, against a small grpc.aio server started here
that records what it receives and replays a real server's messages. Several real
replicas, round_robin and a replica killed mid-load: tests/test_replicas.py.
"""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import grpc.aio
import numpy as np
import pytest
from introspect_client import AsyncClient, Client, IntrospectError
from introspect_client.cli import main
from introspect_contract import pb
from introspect_contract import pb_grpc
from services import require_binary

TOKEN = "tok-3f9a1c"
TEXT = "The replica went away mid-stream."


class RecordingServicer(pb_grpc.IntrospectionServicer):
    """ListModels and StreamAttention that record each call's metadata. ListModels fails
    UNAVAILABLE (before any response) `list_failures` times; StreamAttention replays
    `messages`, the first `broken_streams` times cut UNAVAILABLE after two messages."""

    def __init__(self, messages: Sequence[pb.StreamAttentionResponse] = (), broken_streams: int = 0,
                 list_failures: int = 0) -> None:
        self.messages = list(messages)
        self.broken_streams = broken_streams
        self.list_failures = list_failures
        self.metadata: list[dict[str, str]] = []
        self.stream_calls = 0

    async def ListModels(self, request: pb.ListModelsRequest, context: grpc.aio.ServicerContext) -> pb.ListModelsResponse:
        self.metadata.append(dict(context.invocation_metadata() or ()))
        if len(self.metadata) <= self.list_failures:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "draining")
        return pb.ListModelsResponse(models=[pb.ModelInfo(name="recorded")])

    async def StreamAttention(  # type: ignore[override]
        self, request: pb.StreamAttentionRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.StreamAttentionResponse]:
        self.metadata.append(dict(context.invocation_metadata() or ()))
        self.stream_calls += 1
        broken = self.stream_calls <= self.broken_streams
        for message in self.messages[:2] if broken else self.messages:
            yield message
        if broken:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "the replica went away")


@dataclass
class Recorder:
    """A running RecordingServicer and its address."""

    servicer: RecordingServicer
    address: str
    server: grpc.aio.Server = field(repr=False)


async def start_recorder(servicer: RecordingServicer, credentials: grpc.ServerCredentials | None = None) -> Recorder:
    """Serves `servicer` on a free loopback port (TLS with `credentials`)."""
    server = grpc.aio.server()
    pb_grpc.add_IntrospectionServicer_to_server(servicer, server)
    if credentials is None:
        port = server.add_insecure_port("127.0.0.1:0")
    else:
        port = server.add_secure_port("127.0.0.1:0", credentials)
    await server.start()
    return Recorder(servicer, f"127.0.0.1:{port}", server)


@pytest.fixture(scope="module")
def real_stream(client: Client) -> tuple[list[pb.StreamAttentionResponse], object]:
    """A real server's StreamAttention messages for TEXT on gpt2 (header, several
    chunks) and their assembled result: the reference."""
    messages = list(client.stream_attention(TEXT, model="gpt2", cache="bypass"))
    assert len(messages) >= 4, "the restart test needs a stream of several messages"
    return messages, client.attention(TEXT, model="gpt2", cache="bypass")


def assert_same_attention(result: object, reference: object) -> None:
    """Equal tokens and equal arrays for every layer."""
    item, expected = result[0], reference[0]  # type: ignore[index]
    assert item.tokens == expected.tokens and item.layers.keys() == expected.layers.keys()
    for layer, values in expected.layers.items():
        np.testing.assert_array_equal(item.layers[layer], values)


async def test_a_stream_cut_unavailable_after_its_first_messages_is_restarted_once(real_stream) -> None:  # type: ignore[no-untyped-def]
    messages, reference = real_stream
    recorder = await start_recorder(RecordingServicer(messages, broken_streams=1))
    try:
        with Client(recorder.address) as client:
            result = await asyncio.to_thread(client.attention, TEXT, model="gpt2")
        assert recorder.servicer.stream_calls == 2
        assert_same_attention(result, reference)  # from the restarted stream only

        async with AsyncClient(recorder.address) as async_client:
            assert_same_attention(await async_client.attention(TEXT, model="gpt2"), reference)
        assert recorder.servicer.stream_calls == 3  # the async restart made one more call

        # The raw iterator hands out what arrived, then raises: it never restarts.
        recorder.servicer.broken_streams = 4
        received: list[pb.StreamAttentionResponse] = []

        def drain() -> None:
            with Client(recorder.address) as client:
                received.extend(client.stream_attention(TEXT))

        with pytest.raises(IntrospectError) as error:
            await asyncio.to_thread(drain)
        assert error.value.code is grpc.StatusCode.UNAVAILABLE and recorder.servicer.stream_calls == 4
        assert received == messages[:2]

        # Restarted once only: a second cut is the caller's error.
        recorder.servicer.broken_streams = 6
        with Client(recorder.address) as client, pytest.raises(IntrospectError) as error:
            await asyncio.to_thread(client.attention, TEXT, model="gpt2")
        assert error.value.code is grpc.StatusCode.UNAVAILABLE and recorder.servicer.stream_calls == 6
    finally:
        await recorder.server.stop(None)


async def test_the_default_service_config_retries_unavailable_before_the_response() -> None:
    recorder = await start_recorder(RecordingServicer(list_failures=2))
    try:
        with Client(recorder.address) as client:
            models = await asyncio.to_thread(client.list_models)
        assert [model.name for model in models] == ["recorded"] and len(recorder.servicer.metadata) == 3
        recorder.servicer.metadata.clear()
        with Client(recorder.address, service_config=None) as client, pytest.raises(IntrospectError) as error:
            await asyncio.to_thread(client.list_models)
        assert error.value.code is grpc.StatusCode.UNAVAILABLE and len(recorder.servicer.metadata) == 1
    finally:
        await recorder.server.stop(None)


async def test_the_token_travels_as_bearer_metadata_and_is_never_shown(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    recorder = await start_recorder(RecordingServicer())
    try:
        with Client(recorder.address, token=TOKEN, metadata=[("x-team", "lens")]) as client:
            await asyncio.to_thread(client.list_models)
            assert TOKEN not in repr(client)
        channel = grpc.insecure_channel(recorder.address)
        with Client(channel=channel, token=TOKEN) as client:  # a ready channel
            await asyncio.to_thread(client.list_models)
        assert channel.unary_unary("/introspect.v1.Introspection/ListModels")  # still open
        channel.close()
        token_file = tmp_path / "token"
        token_file.write_text(TOKEN + "\n")
        status = await asyncio.to_thread(main, ["models", "--server", recorder.address, "--token-file", str(token_file)])
        assert status == 0
        with pytest.raises(ValueError) as error:
            Client(recorder.address, token=TOKEN + " x")
        assert TOKEN not in str(error.value)
    finally:
        await recorder.server.stop(None)
    output = capsys.readouterr()
    assert "recorded" in output.out and TOKEN not in output.out + output.err
    sent = recorder.servicer.metadata
    assert [metadata.get("authorization") for metadata in sent] == [f"Bearer {TOKEN}"] * 3
    assert sent[0].get("x-team") == "lens"


def openssl(*arguments: str, cwd: Path) -> None:
    """Runs openssl quietly in `cwd`."""
    subprocess.run([require_binary("openssl"), *arguments], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, both signed by
    the CA (EC P-256 keys): ca.pem, server.pem/server.key, client.pem/client.key."""
    directory = tmp_path_factory.mktemp("tls")
    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "1", "-subj", "/CN=test-ca",
            cwd=directory)
    for name, extension in (("server", "subjectAltName=IP:127.0.0.1"), ("client", "extendedKeyUsage=clientAuth")):
        openssl("req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}", cwd=directory)
        (directory / f"{name}.ext").write_text(extension + "\n")
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
                "-out", f"{name}.pem", "-days", "1", "-extfile", f"{name}.ext", cwd=directory)
    return directory


async def test_tls_credentials_reach_a_mutual_tls_server_and_plaintext_does_not(
    certificates: Path, monkeypatch: pytest.MonkeyPatch, capsys  # type: ignore[no-untyped-def]
) -> None:
    def read(name: str) -> bytes:
        return (certificates / name).read_bytes()

    credentials = grpc.ssl_server_credentials(
        [(read("server.key"), read("server.pem"))], root_certificates=read("ca.pem"), require_client_auth=True
    )
    recorder = await start_recorder(RecordingServicer(), credentials)
    try:
        mutual = grpc.ssl_channel_credentials(read("ca.pem"), read("client.key"), read("client.pem"))
        async with AsyncClient(recorder.address, credentials=mutual, token=TOKEN) as client:
            assert [model.name for model in await client.list_models(timeout=10)] == ["recorded"]
        for refused in (None, grpc.ssl_channel_credentials(read("ca.pem"))):  # plaintext; no client certificate
            async with AsyncClient(recorder.address, credentials=refused, service_config=None) as client:
                with pytest.raises(IntrospectError) as error:
                    await client.list_models(timeout=10)
                assert error.value.code is grpc.StatusCode.UNAVAILABLE
        monkeypatch.setenv("INTROSPECT_TLS_CA", str(certificates / "ca.pem"))
        monkeypatch.setenv("INTROSPECT_TOKEN", TOKEN)
        arguments = ["models", "--server", recorder.address, "--tls-cert", str(certificates / "client.pem"),
                     "--tls-key", str(certificates / "client.key")]
        assert await asyncio.to_thread(main, arguments) == 0
        assert await asyncio.to_thread(main, arguments[:5]) == 1  # a certificate without its key
    finally:
        await recorder.server.stop(None)
    output = capsys.readouterr()
    assert "recorded" in output.out and "--tls-cert and --tls-key go together" in output.err
    assert TOKEN not in output.out + output.err
    assert [metadata.get("authorization") for metadata in recorder.servicer.metadata] == [f"Bearer {TOKEN}"] * 2
