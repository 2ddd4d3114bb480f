"""TLS and mutual TLS on the gRPC port and the metrics endpoint, certificate rotation
under a call in flight, the plaintext health-only port, and bad TLS files.

Real server processes on loopback ports with certificates made for the test (a CA, a
server and a client certificate, and an unrelated CA with its own client certificate);
results over TLS are checked against eager attention from plain transformers.
"""

from __future__ import annotations

import http.client
import os
import ssl
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest
import yaml
from certificates import Authority, Issued
from conftest import RunningServer, minilm_dir, start_server
from grpc_health.v1 import health_pb2, health_pb2_grpc
from introspect.config import build_settings
from introspect.server import SERVICE_NAME
from introspect_client import Client, IntrospectError
from introspect_client.client import assembler_for
from introspect_contract import pb, pb_grpc
from prometheus_client.parser import text_string_to_metric_families
from services import PrometheusServer, free_port, long_text, server_env, wait_until
from test_attention import TOLERANCE, eager_attentions

MINILM = {"minilm": minilm_dir()}
SCRAPE_TLS = Path(__file__).resolve().parent.parent / "deploy" / "monitoring" / "prometheus-scrape-tls.yml"


@dataclass(frozen=True)
class Pki:
    """The test's certificates, written under `directory`."""

    directory: Path
    ca: Authority
    server: Issued
    client: Issued
    other_ca: Authority
    other_client: Issued

    def flags(self, mutual: bool) -> list[str]:
        """The server's TLS flags."""
        flags = [f"--tls-cert={self.directory / 'server.crt'}", f"--tls-key={self.directory / 'server.key'}"]
        return flags + [f"--tls-client-ca={self.directory / 'ca.crt'}"] if mutual else flags


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A CA with a server and a client certificate; another CA with a client certificate."""
    directory = tmp_path_factory.mktemp("pki")
    ca, other_ca = Authority("introspect test CA"), Authority("unrelated CA")
    made = Pki(directory, ca, ca.issue("server", server=True), ca.issue("client", server=False),
               other_ca, other_ca.issue("client", server=False))
    ca.write(directory, "ca")
    made.server.write(directory, "server")
    made.client.write(directory, "client")
    return made


def credentials(trusted: Authority, client: Issued | None = None) -> grpc.ChannelCredentials:
    """Channel credentials trusting only `trusted`, presenting `client` if given."""
    if client is None:
        return grpc.ssl_channel_credentials(root_certificates=trusted.pem)
    return grpc.ssl_channel_credentials(trusted.pem, private_key=client.key, certificate_chain=client.cert)


def health_check(channel: grpc.Channel, service: str = "") -> int:
    """The health status of `service`; raises grpc.RpcError if the call fails."""
    request = health_pb2.HealthCheckRequest(service=service)
    return health_pb2_grpc.HealthStub(channel).Check(request, timeout=10).status


def refused_code(channel: grpc.Channel) -> grpc.StatusCode:
    """The status code of a health check that must fail."""
    with channel, pytest.raises(grpc.RpcError) as failure:
        health_check(channel)
    return failure.value.code()


def assert_eager_attention(messages: list[pb.StreamAttentionResponse], text: str) -> None:
    """The assembled stream equals eager attention of `text`."""
    assembler = assembler_for({})
    for message in messages:
        assembler.add(message)
    stacked = assembler.result().inputs[0].stacked()
    np.testing.assert_allclose(stacked, eager_attentions(MINILM, "minilm", [text])[0], atol=TOLERANCE, rtol=0)


@dataclass
class MutualTlsServer:
    """A server with mutual TLS, HTTPS metrics and a plaintext health port."""

    running: RunningServer
    health_port: int
    metrics_port: int


@pytest.fixture(scope="module")
def mtls(pki: Pki) -> Iterator[MutualTlsServer]:
    """A server with mutual TLS on gRPC and metrics, and a plaintext health port."""
    health_port, metrics_port = free_port(), free_port()
    running = start_server(
        *pki.flags(mutual=True), "--metrics-tls", f"--metrics-port={metrics_port}", f"--health-port={health_port}",
        env=server_env(),
    )
    yield MutualTlsServer(running, health_port, metrics_port)
    assert running.stop() == 0


def test_a_client_with_a_certificate_gets_eager_attention(pki: Pki, mtls: MutualTlsServer) -> None:
    texts = ["Attention is all you need.", "Hi"]
    with Client(mtls.running.address, credentials=credentials(pki.ca, pki.client)) as client:
        result = client.attention(texts)
    for reference, item in zip(eager_attentions(MINILM, "minilm", texts), result.inputs, strict=True):
        np.testing.assert_allclose(item.stacked(), reference, atol=TOLERANCE, rtol=0)


def test_plaintext_clients_are_refused(mtls: MutualTlsServer) -> None:
    assert refused_code(grpc.insecure_channel(mtls.running.address)) == grpc.StatusCode.UNAVAILABLE


@pytest.mark.parametrize("who", ["no certificate", "a certificate of another CA"])
def test_clients_without_a_certificate_of_the_ca_are_refused(pki: Pki, mtls: MutualTlsServer, who: str) -> None:
    client = None if who == "no certificate" else pki.other_client
    channel = grpc.secure_channel(mtls.running.address, credentials(pki.ca, client))
    assert refused_code(channel) == grpc.StatusCode.UNAVAILABLE
    with Client(mtls.running.address, credentials=credentials(pki.ca, client)) as refused:
        with pytest.raises(IntrospectError):
            refused.list_models(timeout=10)


def test_the_health_port_is_plaintext_and_serves_health_only(mtls: MutualTlsServer) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{mtls.health_port}") as channel:
        for service in ("", SERVICE_NAME):
            assert health_check(channel, service) == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.RpcError) as failure:
            pb_grpc.IntrospectionStub(channel).ListModels(pb.ListModelsRequest(), timeout=10)
        assert failure.value.code() == grpc.StatusCode.UNIMPLEMENTED


def _https(port: int, context: ssl.SSLContext) -> str:
    with urllib.request.urlopen(f"https://127.0.0.1:{port}/metrics", timeout=10, context=context) as response:
        return response.read().decode()


def _client_context(pki: Pki, client: Issued | None) -> ssl.SSLContext:
    context = ssl.create_default_context(cadata=pki.ca.pem.decode())
    if client is not None:
        context.load_cert_chain(*client.write(pki.directory, "metrics-client"))
    return context


def test_metrics_are_served_over_mutual_tls_only(pki: Pki, mtls: MutualTlsServer) -> None:
    families = {family.name for family in text_string_to_metric_families(_https(mtls.metrics_port, _client_context(pki, pki.client)))}
    assert "introspect_model_load_seconds" in families
    for refused in (lambda: _https(mtls.metrics_port, _client_context(pki, None)),
                    lambda: urllib.request.urlopen(f"http://127.0.0.1:{mtls.metrics_port}/metrics", timeout=10)):
        with pytest.raises((OSError, http.client.HTTPException)):
            refused()


def test_prometheus_scrapes_the_metrics_with_the_shipped_tls_config(
    pki: Pki, mtls: MutualTlsServer, tmp_path: Path
) -> None:
    shipped = yaml.safe_load(SCRAPE_TLS.read_text())["scrape_configs"][0]
    files = {"ca.crt": pki.directory / "ca.crt", "tls.crt": pki.directory / "client.crt", "tls.key": pki.directory / "client.key"}
    tls_config = {key: str(files[Path(value).name]) if key.endswith("_file") else value
                  for key, value in shipped["tls_config"].items()}
    prometheus = PrometheusServer(
        tmp_path, [f"127.0.0.1:{mtls.metrics_port}"], job={"scheme": shipped["scheme"], "tls_config": tls_config}
    ).start()
    try:
        wait_until(lambda: prometheus.scalar('up{job="introspect"}') == 1, 30, interval=0.5, message="a TLS scrape")
        scraped = prometheus.scalar('introspect_model_load_seconds{model="minilm"}')
    finally:
        prometheus.stop()
    direct = _https(mtls.metrics_port, _client_context(pki, pki.client))
    [load] = [sample.value for family in text_string_to_metric_families(direct) for sample in family.samples
              if sample.name == "introspect_model_load_seconds"]
    assert scraped == pytest.approx(load)


def _replace(path: Path, content: bytes) -> None:
    """Writes `content` to `path` atomically, as Kubernetes updates a mounted Secret."""
    staged = path.with_suffix(".new")
    staged.write_bytes(content)
    os.replace(staged, path)


def test_a_rotated_certificate_is_served_to_new_connections_while_calls_in_flight_finish(
    pki: Pki, tmp_path: Path
) -> None:
    first = pki.server.write(tmp_path, "server")
    running = start_server(
        f"--tls-cert={first[0]}", f"--tls-key={first[1]}", "--cache-bytes=0", "--max-message-bytes=65536",
        "--stall-timeout-seconds=120", env=server_env(),
    )
    try:
        text = long_text(200)
        with Client(running.address, credentials=credentials(pki.ca)) as before:
            stream = before.stream_attention(text)
            messages = [next(stream), next(stream)]  # the call is in flight, its reader paused
            new_ca = Authority("rotated CA")
            rotated = new_ca.issue("server", server=True)
            _replace(tmp_path / "server.key", rotated.key)
            _replace(tmp_path / "server.crt", rotated.cert)
            with Client(running.address, credentials=credentials(new_ca)) as after:
                assert [model.name for model in after.list_models(timeout=10)] == ["minilm"]
            assert refused_code(grpc.secure_channel(running.address, credentials(pki.ca))) == grpc.StatusCode.UNAVAILABLE
            messages.extend(stream)
        assert_eager_attention(messages, text)
        assert any("TLS certificate reloaded" in line for line in running.output)
    finally:
        assert running.stop() == 0


def _start_fails(*flags: str) -> list[str]:
    """Runs a server that must not start; returns its non-empty output lines."""
    result = subprocess.run(
        [sys.executable, "-m", "introspect", "--host", "127.0.0.1", "--port", "0", *flags],
        capture_output=True, text=True, timeout=180, env={**os.environ, **server_env()},
    )
    assert result.returncode == 2, result.stdout + result.stderr
    return [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]


@pytest.mark.parametrize(
    ("broken", "content", "message"),
    [
        ("server.crt", None, "cannot read the TLS certificate file"),
        ("server.crt", b"-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n", "holds no valid PEM certificate"),
        ("server.key", b"not a key", "TLS key file"),
        ("server.key", "other key", "TLS key file"),
        ("ca.crt", b"", "TLS client CA file"),
    ],
)
def test_bad_tls_files_stop_the_start_with_one_line_naming_the_file(
    pki: Pki, tmp_path: Path, broken: str, content: bytes | str | None, message: str
) -> None:
    pki.server.write(tmp_path, "server")
    pki.ca.write(tmp_path, "ca")
    path = tmp_path / broken
    if content is None:
        path.unlink()
    else:
        path.write_bytes(pki.client.key if content == "other key" else content)  # type: ignore[arg-type]
    lines = _start_fails(f"--tls-cert={tmp_path / 'server.crt'}", f"--tls-key={tmp_path / 'server.key'}",
                         f"--tls-client-ca={tmp_path / 'ca.crt'}")
    assert len(lines) == 1 and message in lines[0] and str(path) in lines[0], lines
    assert "Traceback" not in lines[0]


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ({"tls_cert": "a.crt"}, "tls_cert and tls_key go together"),
        ({"tls_key": "a.key"}, "tls_cert and tls_key go together"),
        ({"tls_client_ca": "ca.crt"}, "tls_client_ca needs tls_cert"),
        ({"metrics_tls": True}, "metrics_tls needs tls_cert"),
        ({"health_port": 50051}, "health_port must differ"),
    ],
)
def test_incomplete_tls_settings_are_refused(flags: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build_settings(flags, environ={})


def test_tls_settings_come_from_the_environment() -> None:
    settings = build_settings({}, environ={"INTROSPECT_TLS_CERT": "/t/tls.crt", "INTROSPECT_TLS_KEY": "/t/tls.key",
                                           "INTROSPECT_METRICS_TLS": "true", "INTROSPECT_HEALTH_PORT": "8081"})
    assert (settings.tls_cert, settings.tls_key, settings.metrics_tls, settings.health_port) == (
        "/t/tls.crt", "/t/tls.key", True, 8081)
