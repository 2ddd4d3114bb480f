"""Prometheus metrics through real parts: a server with --metrics-port, a real Prometheus
(Debian package `prometheus`) scraping it every second and answering PromQL over its HTTP
API, promtool on the alert rules, and the Grafana dashboard's queries run by Prometheus."""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from conftest import RunningServer, start_server
from introspect.metrics import LATENCY_BUCKETS
from introspect_contract import pb
from services import (
    PrometheusServer,
    attention_request,
    metric_names,
    metrics_port_flag,
    require_binary,
    scrape,
    server_env,
    stream_attention,
    total,
)

MONITORING = Path(__file__).resolve().parent.parent / "deploy" / "monitoring"
OK_CALLS = 5
NOT_FOUND_CALLS = 2


@pytest.fixture(scope="module")
def observed(model_dirs: dict[str, Path]) -> Iterator[tuple[RunningServer, int]]:
    """A server serving gpt2 with metrics on a free port, after a known set of calls:
    OK_CALLS successful StreamAttention calls (a miss, then hits and a bypass), and
    NOT_FOUND_CALLS for an unknown model."""
    port, flag = metrics_port_flag()
    server = start_server(f"--model=gpt2={model_dirs['gpt2']}", flag, env=server_env())
    yield server, port
    server.stop()


@pytest.fixture(scope="module")
async def traffic(observed: tuple[RunningServer, int]) -> tuple[RunningServer, int]:
    """Sends the known calls once."""
    server, port = observed
    policies = [pb.CACHE_POLICY_UNSPECIFIED] * (OK_CALLS - 1) + [pb.CACHE_POLICY_BYPASS]
    for policy in policies:
        await stream_attention(server.address, attention_request("counted calls", "gpt2", cache=policy))
    for _ in range(NOT_FOUND_CALLS):
        with pytest.raises(grpc.aio.AioRpcError):
            await stream_attention(server.address, attention_request("counted calls", "no-such-model"))
    return server, port


def test_metrics_endpoint_exposes_every_metric(traffic: tuple[RunningServer, int]) -> None:
    _, port = traffic
    samples = scrape(port)
    labels = {"rpc": "StreamAttention", "model": "gpt2"}
    assert total(samples, "introspect_requests_total", code="OK", **labels) == OK_CALLS
    not_found = total(samples, "introspect_requests_total", code="NOT_FOUND", rpc="StreamAttention", model="unknown")
    assert not_found == NOT_FOUND_CALLS
    for histogram in ("introspect_request_duration_seconds", "introspect_time_to_first_message_seconds"):
        bounds = {dict(key)["le"] for (name, key) in samples if name == f"{histogram}_bucket"}
        assert {"0.001", "60.0", "+Inf"} <= bounds
        assert total(samples, f"{histogram}_count", **labels) == OK_CALLS
    assert LATENCY_BUCKETS[0] == 0.001 and LATENCY_BUCKETS[-1] == 60
    assert total(samples, "introspect_response_bytes_total", **labels) > 0
    assert total(samples, "introspect_cache_misses_total", backend="memory", rpc="StreamAttention") == 1
    assert total(samples, "introspect_cache_hits_total", backend="memory", rpc="StreamAttention") == OK_CALLS - 2
    assert total(samples, "introspect_cache_stored_bytes", backend="memory") > 0
    assert total(samples, "introspect_cache_up", backend="memory") == 1
    assert ("introspect_requests_in_flight", (("model", "gpt2"),)) in samples
    assert samples[("introspect_requests_queued", (("model", "gpt2"),))] == 0
    assert samples[("introspect_requests_queue_limit", (("model", "gpt2"),))] == 32
    assert samples[("introspect_model_load_seconds", (("model", "gpt2"),))] > 0
    # the miss and the bypass computed, each alone in its forward (dynamic batching is on)
    assert total(samples, "introspect_batch_size_count", model="gpt2") == 2
    assert total(samples, "introspect_batch_size_sum", model="gpt2") == 2
    # CPU only here: no device memory series (it appears on CUDA).
    assert not any(name == "introspect_device_memory_bytes" for name, _ in samples)
    assert not any(name.endswith("_created") for name, _ in samples)


@pytest.fixture(scope="module")
def prometheus(
    traffic: tuple[RunningServer, int], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[PrometheusServer]:
    """A real Prometheus scraping the server every second."""
    _, port = traffic
    server = PrometheusServer(tmp_path_factory.mktemp("prometheus"), [f"127.0.0.1:{port}"]).start()
    yield server
    server.stop()


def _eventually(prometheus: PrometheusServer, promql: str, expected: float, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    value = None
    while time.monotonic() < deadline:
        value = prometheus.scalar(promql)
        if value == expected:
            return
        time.sleep(0.5)
    pytest.fail(f"{promql} = {value}, expected {expected}")


def test_prometheus_scrapes_the_server_and_answers_promql(prometheus: PrometheusServer) -> None:
    _eventually(prometheus, 'sum(introspect_requests_total{rpc="StreamAttention",model="gpt2",code="OK"})', OK_CALLS)
    _eventually(prometheus, 'sum(introspect_requests_total{code="NOT_FOUND",model="unknown"})', NOT_FOUND_CALLS)
    _eventually(prometheus, 'sum(introspect_cache_misses_total{backend="memory"})', 1)
    _eventually(prometheus, 'sum(introspect_batch_size_count{model="gpt2"})', 2)  # the dashboard's batching row
    assert prometheus.scalar('up{job="introspect"}') == 1


def _dashboard() -> dict:  # type: ignore[type-arg]
    return json.loads((MONITORING / "grafana-dashboard.json").read_text())


def _dashboard_queries() -> list[tuple[str, str]]:
    return [
        (panel["title"], target["expr"])
        for panel in _dashboard()["panels"]
        for target in panel.get("targets", [])
    ]


def test_dashboard_queries_run_on_prometheus(prometheus: PrometheusServer) -> None:
    titles = " | ".join(panel["title"] for panel in _dashboard()["panels"]).lower()
    for wanted in ("latency quantiles", "throughput", "error", "cache hit ratio", "queued", "device memory",
                   "batch size"):
        assert wanted in titles, f"no panel for {wanted}"
    queries = _dashboard_queries()
    assert len(queries) >= 12
    for title, expr in queries:
        promql = expr.replace("$__rate_interval", "1m").replace("$model", ".*")
        answer = prometheus.query(promql)
        assert answer["status"] == "success", (title, answer)


def test_dashboard_and_alerts_name_only_metrics_the_server_exports(traffic: tuple[RunningServer, int]) -> None:
    _, port = traffic
    exported = metric_names(port) | {"introspect_device_memory_bytes"}  # CUDA only
    text = (MONITORING / "alerts.yml").read_text() + json.dumps(_dashboard())
    referenced = set(re.findall(r"introspect_[a-z_]+", text))
    assert referenced and referenced <= exported, referenced - exported


def test_alert_rules_pass_promtool() -> None:
    promtool = require_binary("promtool")
    check = subprocess.run([promtool, "check", "rules", "alerts.yml"], cwd=MONITORING, capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "SUCCESS: 5 rules found" in check.stdout
    unit = subprocess.run(
        [promtool, "test", "rules", "alerts_test.yml"], cwd=MONITORING, capture_output=True, text=True
    )
    assert unit.returncode == 0, unit.stdout + unit.stderr
