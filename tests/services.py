"""Real servers the suite starts itself on free loopback ports: redis-server and
Prometheus (Debian packages `redis-server` and `prometheus`; scripts/test.sh installs
them), plus helpers to read a server's /metrics and call it over the raw stub."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest
from introspect_contract import pb
from introspect_contract import pb_grpc
from prometheus_client.parser import text_string_to_metric_families

INSTALL_HINT = (
    "install the Debian packages redis-server and prometheus "
    "(scripts/test.sh does: it is the README's test command)"
)


def require_binary(name: str) -> str:
    """Path of an executable the suite needs; fails the test (never skips) without it."""
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed: {INSTALL_HINT}")
    return path


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def stop_process(process: subprocess.Popen, timeout: float) -> int:  # type: ignore[type-arg]
    """SIGTERM, then SIGKILL if the process has not exited after `timeout` s; returns
    its exit code."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode


def wait_until(condition, timeout: float, interval: float = 0.05, message: str = "condition"):  # type: ignore[no-untyped-def]
    """Polls `condition()` until it returns something truthy; fails after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {message}")
        time.sleep(interval)


@dataclass
class RedisServer:
    """A redis-server process without persistence, restartable on the same port."""

    directory: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    password: str | None = None
    """When set, the server requires it (--requirepass); `url` leaves it out."""
    cache_secret: str = "test-cache-secret-0123456789abcdef"
    """What `server_flags` gives servers in their --cache-secret-file."""

    @property
    def url(self) -> str:
        """redis:// URL of the server (without the password)."""
        return f"redis://127.0.0.1:{self.port}/0"

    def server_flags(self) -> list[str]:
        """The introspect server flags that use this Redis: --redis-url and a
        --cache-secret-file holding `cache_secret` (and --redis-password-file if needed)."""
        secret_file = self.directory / "cache-secret"
        secret_file.write_text(self.cache_secret + "\n")
        flags = [f"--redis-url={self.url}", f"--cache-secret-file={secret_file}"]
        if self.password is not None:
            password_file = self.directory / "redis-password"
            password_file.write_text(self.password + "\n")
            flags.append(f"--redis-password-file={password_file}")
        return flags

    def start(self) -> RedisServer:
        """Starts (or restarts) the server and waits until it answers PING."""
        binary = require_binary("redis-server")
        auth = ["--requirepass", self.password] if self.password is not None else []
        self.process = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.directory), "--maxmemory", "256mb", "--maxmemory-policy", "allkeys-lru", *auth],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        wait_until(self.ping, 10, message=f"redis-server on port {self.port}")
        return self

    def client(self):  # type: ignore[no-untyped-def]
        """A synchronous redis client of this server (authenticated when it needs it)."""
        import redis

        return redis.Redis(host="127.0.0.1", port=self.port, password=self.password, socket_timeout=2)

    def ping(self) -> bool:
        """True when the server answers."""
        import redis

        try:
            return bool(self.client().ping())
        except redis.RedisError:
            return False

    def kill(self) -> None:
        """SIGKILL: the server dies without a word, as in a crash."""
        assert self.process is not None
        self.process.kill()
        self.process.wait()

    def pause(self) -> None:
        """SIGSTOP: the server accepts connections but answers nothing."""
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT after pause()."""
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        """Stops the server if it runs."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)  # a paused server would not act on SIGTERM
            stop_process(self.process, timeout=10)


@dataclass
class PrometheusServer:
    """A Prometheus process scraping the given targets every second; `job` adds keys to
    the scrape job (e.g. `scheme` and `tls_config`)."""

    directory: Path
    targets: Sequence[str]
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    job: Mapping[str, Any] = field(default_factory=dict)

    def start(self) -> PrometheusServer:
        """Writes the config, starts Prometheus and waits until it is ready."""
        binary = require_binary("prometheus")
        config = self.directory / "prometheus.yml"
        job = {"job_name": "introspect", "static_configs": [{"targets": list(self.targets)}], **self.job}
        settings = {"global": {"scrape_interval": "1s", "evaluation_interval": "1s"}, "scrape_configs": [job]}
        config.write_text(json.dumps(settings))  # JSON is YAML
        self.log = (self.directory / "prometheus.log").open("wb")
        self.process = subprocess.Popen(
            [binary, f"--config.file={config}", f"--web.listen-address=127.0.0.1:{self.port}",
             f"--storage.tsdb.path={self.directory / 'data'}"],
            stdout=self.log, stderr=subprocess.STDOUT,
        )
        wait_until(self._ready, 30, interval=0.2, message="prometheus to be ready")
        return self

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/-/ready", timeout=1) as response:
                return response.status == 200
        except OSError:
            return False

    def query(self, promql: str) -> dict:  # type: ignore[type-arg]
        """The JSON answer of /api/v1/query (raises for HTTP errors such as bad PromQL)."""
        url = f"http://127.0.0.1:{self.port}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
        with urllib.request.urlopen(url, timeout=5) as response:
            return json.loads(response.read())

    def scalar(self, promql: str) -> float | None:
        """The single value of an instant query, or None when it has no result."""
        result = self.query(promql)["data"]["result"]
        return float(result[0]["value"][1]) if result else None

    def stop(self) -> None:
        """Stops Prometheus."""
        if self.process is not None:
            stop_process(self.process, timeout=20)
        self.log.close()


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def _exposition(metrics_port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as response:
        return response.read().decode()


def scrape(metrics_port: int) -> Samples:
    """Every sample of a server's /metrics: (name, sorted labels) -> value."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(_exposition(metrics_port))
        for sample in family.samples
    }


def metric_names(metrics_port: int) -> set[str]:
    """Names of every metric family a server declares (with or without samples yet) and
    of every sample it exports (e.g. `_total`, `_bucket`)."""
    names = set()
    for family in text_string_to_metric_families(_exposition(metrics_port)):
        names.add(family.name)
        if family.type == "counter":
            names.add(f"{family.name}_total")
        names.update(sample.name for sample in family.samples)
    return names


def total(samples: Samples, name: str, **labels: str) -> float:
    """Sum of the samples called `name` whose labels include `labels`."""
    return sum(
        value
        for (sample_name, sample_labels), value in samples.items()
        if sample_name == name and set(labels.items()) <= set(sample_labels)
    )


def metrics_port_flag() -> tuple[int, str]:
    """A free port and the server flag that serves metrics on it."""
    port = free_port()
    return port, f"--metrics-port={port}"


@dataclass
class StreamReply:
    """What one streaming call returned."""

    metadata: dict[str, str]
    messages: list[object]

    @property
    def cache(self) -> str:
        """The `introspect-cache` metadata value ('' if absent)."""
        return self.metadata.get("introspect-cache", "")


async def stream_attention(address: str, request: pb.StreamAttentionRequest, timeout: float = 60) -> StreamReply:
    """One StreamAttention call over the raw generated stub."""
    options = [("grpc.max_receive_message_length", 64 * 1024 * 1024)]
    async with grpc.aio.insecure_channel(address, options=options) as channel:
        call = pb_grpc.IntrospectionStub(channel).StreamAttention(request, timeout=timeout)
        messages = [message async for message in call]
        metadata = {key: value for key, value in (await call.initial_metadata())}
    return StreamReply(metadata=metadata, messages=messages)


def attention_request(text: str, model: str, cache: int = pb.CACHE_POLICY_UNSPECIFIED, **fields: object) -> pb.StreamAttentionRequest:
    """An StreamAttentionRequest for one text."""
    return pb.StreamAttentionRequest(model=model, inputs=[pb.Input(text=pb.TextInput(text=text))], cache=cache, **fields)  # type: ignore[arg-type]


def long_text(words: int) -> str:
    """A text of about `words` words (one token each for BERT's vocabulary)."""
    return " ".join(["the model attends to every token it has seen so far"] * (words // 11 + 1))


def server_env() -> dict[str, str]:
    """Environment for server subprocesses: few threads, the machine is shared."""
    return {"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}


def chunks(messages: Iterable[object]) -> list[bytes]:
    """The serialized non-header messages of a stream."""
    return [message.SerializeToString() for message in messages if not message.HasField("header")]  # type: ignore[attr-defined]
