"""Authentication and per-caller quotas, against a real server process with a tokens
file: missing, wrong and revoked tokens are refused alike, a known token works and is
counted under its caller's name (never logged), the file is reloaded without a restart
(a broken version keeps the previous callers, with one ERROR line), health stays open,
and callers over their rate or concurrency get RESOURCE_EXHAUSTED with a RetryInfo.
A tokens file that cannot be used stops the server at start with exit code 2."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from conftest import RunningServer, start_server
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from introspect_client import Client, IntrospectError
from introspect_contract import pb, pb_grpc
from services import long_text, metrics_port_flag, scrape, server_env, total, wait_until

# SHA-256 test vectors (FIPS 180-2 / common knowledge), independent of the server's hashing.
KNOWN_HASHES = {
    "test": "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
    "abc": "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
}
RELOAD_SECONDS = 5.0  # the server looks at the file at most once a second
TOKENS = {"alice": "alice-Secret-1", "bob": "bob-Secret-2", "carol": "carol-Secret-3",
          "limited": "limited-Secret-4", "single": "single-Secret-5"}
QUOTAS = {"limited": "rate_per_second = 0.5\nburst = 2\n", "single": "max_concurrency = 1\n"}


def tokens_file_text(names: list[str]) -> str:
    """A tokens file for `names` (their tokens from TOKENS, hashed by hashlib)."""
    import hashlib

    return "".join(
        f'[callers.{name}]\ntoken_sha256 = "{hashlib.sha256(TOKENS[name].encode()).hexdigest()}"\n{QUOTAS.get(name, "")}\n'
        for name in names
    )


def write_atomically(path: Path, text: str) -> None:
    """Replaces the file as a secret volume or `mv` would."""
    staging = path.with_suffix(".new")
    staging.write_text(text)
    os.replace(staging, path)


class Served:
    """The server under test, its tokens file and its metrics port."""

    def __init__(self, running: RunningServer, tokens: Path, metrics_port: int) -> None:
        self.running = running
        self.tokens = tokens
        self.metrics_port = metrics_port

    def client(self, token: str | None) -> Client:
        """A client sending `token` as a bearer token (none: no authorization)."""
        metadata = [("authorization", f"Bearer {token}")] if token is not None else []
        return Client(self.running.address, metadata=metadata, timeout=60)

    def code_of(self, token: str | None) -> tuple[grpc.StatusCode, str]:
        """The status code and message ListModels gets with `token`."""
        with self.client(token) as client:
            try:
                client.list_models()
            except IntrospectError as error:
                return error.code, error.message
        return grpc.StatusCode.OK, ""

    def use(self, names: list[str]) -> None:
        """Writes a tokens file with `names` and waits until the server serves by it."""
        write_atomically(self.tokens, tokens_file_text(names))
        probe = names[0]
        wait_until(lambda: self.code_of(TOKENS[probe])[0] == grpc.StatusCode.OK, RELOAD_SECONDS, 0.2, "the reload")
        absent = [name for name in TOKENS if name not in names]
        for name in absent:
            wait_until(
                lambda name=name: self.code_of(TOKENS[name])[0] == grpc.StatusCode.UNAUTHENTICATED,
                RELOAD_SECONDS, 0.2, f"{name} refused",
            )


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """A server process (MiniLM, no cache) with a tokens file of alice and bob."""
    tokens = tmp_path_factory.mktemp("auth") / "tokens.toml"
    tokens.write_text(tokens_file_text(["alice", "bob", "limited", "single"]))
    port, flag = metrics_port_flag()
    running = start_server(
        f"--auth-tokens-file={tokens}", flag, "--cache-bytes=0", "--max-message-bytes=65536",
        "--stall-timeout-seconds=60", env=server_env(),
    )
    yield Served(running, tokens, port)
    assert running.stop() == 0
    output = "".join(running.output)
    for token in TOKENS.values():
        assert token not in output


def test_missing_wrong_and_revoked_tokens_are_refused_alike(served: Served) -> None:
    assert served.code_of(TOKENS["bob"])[0] == grpc.StatusCode.OK
    served.use(["alice", "limited", "single"])  # bob removed
    refusals = {
        "missing": served.code_of(None),
        "wrong": served.code_of("not-a-token"),
        "another caller's hash": served.code_of(KNOWN_HASHES["test"]),
        "revoked": served.code_of(TOKENS["bob"]),
    }
    codes = {code for code, _ in refusals.values()}
    messages = {message for _, message in refusals.values()}
    assert codes == {grpc.StatusCode.UNAUTHENTICATED}, refusals
    assert len(messages) == 1, refusals
    assert "bob" not in messages.pop()
    served.use(["alice", "bob", "limited", "single"])


def test_a_known_token_is_served_and_counted_under_its_caller(served: Served) -> None:
    before = scrape(served.metrics_port)
    with served.client(TOKENS["alice"]) as client:
        models = [model.name for model in client.list_models()]
        for _ in range(2):
            client.get_model("minilm")
    assert models == ["minilm"]
    served.code_of("wrong")
    after = scrape(served.metrics_port)

    def counted(**labels: str) -> float:
        return total(after, "introspect_requests_total", **labels) - total(before, "introspect_requests_total", **labels)

    assert counted(caller="alice", code="OK") == 3
    assert counted(caller="anonymous", code="UNAUTHENTICATED") == 1
    callers = {dict(labels).get("caller") for name, labels in after if name == "introspect_requests_total"}
    assert callers <= {"alice", "bob", "carol", "limited", "single", "anonymous"}


def test_the_tokens_file_is_reloaded_without_a_restart(served: Served) -> None:
    assert served.code_of(TOKENS["carol"])[0] == grpc.StatusCode.UNAUTHENTICATED
    served.use(["carol", "alice", "bob", "limited", "single"])
    assert served.code_of(TOKENS["carol"])[0] == grpc.StatusCode.OK
    served.use(["alice", "bob", "limited", "single"])
    assert served.code_of(TOKENS["carol"])[0] == grpc.StatusCode.UNAUTHENTICATED


def test_a_tokens_file_broken_on_reload_keeps_the_previous_callers_with_one_error_line(served: Served) -> None:
    lines_before = len(served.running.output)
    write_atomically(served.tokens, '[callers.alice]\ntoken_sha256 = "not hex"\n')
    deadline = time.monotonic() + 3.5  # three looks at the file at least
    while time.monotonic() < deadline:
        assert served.code_of(TOKENS["alice"])[0] == grpc.StatusCode.OK
        assert served.code_of(TOKENS["bob"])[0] == grpc.StatusCode.OK
        time.sleep(0.2)
    errors = [line for line in served.running.output[lines_before:] if " ERROR " in line]
    assert len(errors) == 1, errors
    assert str(served.tokens) in errors[0] and "keeping the previous 4 callers" in errors[0]
    served.use(["alice", "bob", "limited", "single"])


def test_health_is_open_without_a_token(served: Served) -> None:
    with grpc.insecure_channel(served.running.address) as channel:
        for service in ("", "introspect.v1.Introspection/minilm"):
            request = health_pb2.HealthCheckRequest(service=service)
            response = health_pb2_grpc.HealthStub(channel).Check(request, timeout=10)
            assert response.status == health_pb2.HealthCheckResponse.SERVING, service


def test_get_server_info_needs_a_token_like_list_models(served: Served) -> None:
    with served.client(None) as client, pytest.raises(IntrospectError) as refused:
        client.server_info()
    assert refused.value.code == grpc.StatusCode.UNAUTHENTICATED
    assert refused.value.message == served.code_of(None)[1]
    with served.client(TOKENS["alice"]) as client:
        assert client.server_info().contract_version


def retry_delay(error: grpc.RpcError) -> float:
    """Seconds of the google.rpc.RetryInfo in a call's status details."""
    for key, value in error.trailing_metadata():  # type: ignore[attr-defined]
        if key == "grpc-status-details-bin":
            status = status_pb2.Status.FromString(value)
            for detail in status.details:
                if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
                    info = error_details_pb2.RetryInfo()
                    detail.Unpack(info)
                    return info.retry_delay.ToTimedelta().total_seconds()
    raise AssertionError("no RetryInfo in the status")


def test_a_caller_over_its_rate_is_told_when_to_retry(served: Served) -> None:
    metadata = [("authorization", f"Bearer {TOKENS['limited']}")]
    with grpc.insecure_channel(served.running.address) as channel:
        stub = pb_grpc.IntrospectionStub(channel)
        time.sleep(4.0)  # a full bucket: 2 calls at 0.5 per second
        started = time.monotonic()
        for _ in range(2):
            stub.ListModels(pb.ListModelsRequest(), metadata=metadata, timeout=10)
        with pytest.raises(grpc.RpcError) as refused:
            stub.ListModels(pb.ListModelsRequest(), metadata=metadata, timeout=10)
        elapsed = time.monotonic() - started
        other = stub.ListModels(pb.ListModelsRequest(), metadata=[("authorization", f"Bearer {TOKENS['alice']}")])
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "limited" in refused.value.details() and "rate" in refused.value.details()
    # The bucket is empty after 2 calls: the next token comes 1 / 0.5 s after them.
    assert 2.0 - elapsed - 0.05 <= retry_delay(refused.value) <= 2.0, (retry_delay(refused.value), elapsed)
    assert [model.name for model in other.models] == ["minilm"]


def test_a_caller_over_its_concurrency_is_told_when_to_retry(served: Served) -> None:
    metadata = [("authorization", f"Bearer {TOKENS['single']}")]
    request = pb.StreamAttentionRequest(inputs=[pb.Input(text=pb.TextInput(text=long_text(400)))])
    with grpc.insecure_channel(served.running.address, options=[("grpc.max_receive_message_length", 1 << 26)]) as channel:
        stub = pb_grpc.IntrospectionStub(channel)
        held = stub.StreamAttention(request, metadata=metadata, timeout=60)
        next(held)  # in flight, and held open by not reading the rest
        with pytest.raises(grpc.RpcError) as refused:
            stub.ListModels(pb.ListModelsRequest(), metadata=metadata, timeout=10)
        held.cancel()
        after = wait_until(lambda: _list_models_or_none(stub, metadata), RELOAD_SECONDS, 0.1, "the slot given back")
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "1 calls in flight" in refused.value.details()
    assert retry_delay(refused.value) == 1.0
    assert [model.name for model in after.models] == ["minilm"]


def _list_models_or_none(stub: pb_grpc.IntrospectionStub, metadata: list[tuple[str, str]]) -> pb.ListModelsResponse | None:
    try:
        return stub.ListModels(pb.ListModelsRequest(), metadata=metadata, timeout=10)
    except grpc.RpcError as error:
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        return None


def test_the_hash_helper_prints_the_sha256_of_the_token_on_stdin() -> None:
    for token, digest in KNOWN_HASHES.items():
        done = subprocess.run([sys.executable, "-m", "introspect.auth", "hash"], input=token + "\n",
                              capture_output=True, text=True, timeout=60, check=True)
        assert done.stdout.strip() == digest


@pytest.mark.parametrize(
    ("content", "words"),
    [
        (None, "cannot be read"),
        ("[callers.x\n", "not TOML"),
        ('[callers.x]\ntoken_sha256 = "abc"\n', "64 hex digits"),
        (f'[callers.x]\ntoken_sha256 = "{KNOWN_HASHES["abc"]}"\nmax_concurrency = -1\n', "must be >= 0"),
        (f'[callers.anonymous]\ntoken_sha256 = "{KNOWN_HASHES["abc"]}"\n', "not 'anonymous'"),
    ],
    ids=["missing", "not-toml", "bad-hash", "negative-quota", "reserved-name"],
)
def test_an_unusable_tokens_file_stops_the_server_at_start(tmp_path: Path, content: str | None, words: str) -> None:
    path = tmp_path / "tokens.toml"
    if content is not None:
        path.write_text(content)
    done = subprocess.run(
        [sys.executable, "-m", "introspect", "--port", "0", f"--auth-tokens-file={path}"],
        capture_output=True, text=True, timeout=120, env={**os.environ, **server_env()},
    )
    lines = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    assert done.returncode == 2, lines
    assert len(lines) == 1 and str(path) in lines[0] and words in lines[0], lines
    assert "Traceback" not in done.stderr
