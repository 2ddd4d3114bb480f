"""Prometheus metrics of the server.

Everything lives on the server's own CollectorRegistry (not the process-global one) and
is served over HTTP only when --metrics-port is set. Names follow Prometheus
conventions: prefix `introspect_`, units in the name, `_total` on counters.
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any
from wsgiref.simple_server import WSGIServer, make_server

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics, start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import ThreadingWSGIServer, _SilentHandler, make_wsgi_app

log = logging.getLogger(__name__)

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0)
"""Latency histogram buckets, in seconds: 1 ms to 60 s."""


@dataclass(frozen=True)
class ServerState:
    """Callables that read the server's state when Prometheus scrapes."""

    queued: Callable[[], Mapping[str, int]]
    """model -> requests waiting for that model's device."""
    queue_limit: int
    """Requests a device queues before RESOURCE_EXHAUSTED."""
    cache_stored_bytes: Callable[[], Mapping[str, float | None]]
    """backend -> bytes it holds (None: unknown)."""
    device_memory: Callable[[], Mapping[str, int]]
    """device -> bytes of memory allocated there (CUDA devices only)."""


class _StateCollector:
    """Gauges read at scrape time."""

    def __init__(self, state: ServerState) -> None:
        self._state = state

    def describe(self) -> list[Metric]:
        """Nothing to check for name clashes ahead of time."""
        return []

    def collect(self) -> Iterator[Metric]:
        """The current values."""
        queued = GaugeMetricFamily(
            "introspect_requests_queued", "Requests waiting for the device of a model", labels=["model"]
        )
        limit = GaugeMetricFamily(
            "introspect_requests_queue_limit",
            "Requests the device of a model queues before rejecting with RESOURCE_EXHAUSTED",
            labels=["model"],
        )
        for model, waiting in self._state.queued().items():
            queued.add_metric([model], waiting)
            limit.add_metric([model], self._state.queue_limit)
        yield queued
        yield limit
        stored = GaugeMetricFamily(
            "introspect_cache_stored_bytes",
            "Bytes the result cache holds (memory: value bytes; redis: the instance's used_memory)",
            labels=["backend"],
        )
        for backend, size in self._state.cache_stored_bytes().items():
            if size is not None:
                stored.add_metric([backend], size)
        yield stored
        memory = self._state.device_memory()
        if memory:
            family = GaugeMetricFamily(
                "introspect_device_memory_bytes", "Device memory allocated by tensors", labels=["device"]
            )
            for device, allocated in memory.items():
                family.add_metric([device], allocated)
            yield family


class Metrics:
    """The server's metrics and the HTTP endpoint that serves them."""

    def __init__(self) -> None:
        # No `_created` series: they double the series count and no panel or alert uses them.
        disable_created_metrics()
        self.registry = CollectorRegistry()
        registry = self.registry
        self.requests = Counter(
            "introspect_requests", "RPCs finished, by RPC, model, status code and caller",
            ["rpc", "model", "code", "caller"],
            registry=registry,
        )
        self.duration = Histogram(
            "introspect_request_duration_seconds", "Time from an RPC's start to its end", ["rpc", "model"],
            buckets=LATENCY_BUCKETS, registry=registry,
        )
        self.batch_size = Histogram(
            "introspect_batch_size", "Calls run in one shared forward (dynamic batching)", ["model"],
            buckets=(1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64), registry=registry,
        )
        self.first_message = Histogram(
            "introspect_time_to_first_message_seconds", "Time from an RPC's start to its first response message",
            ["rpc", "model"], buckets=LATENCY_BUCKETS, registry=registry,
        )
        self.response_bytes = Counter(
            "introspect_response_bytes", "Serialized response message bytes sent", ["rpc", "model"],
            registry=registry,
        )
        self.in_flight = Gauge(
            "introspect_requests_in_flight", "RPCs being handled now", ["model"], registry=registry
        )
        self.cache_hits = Counter(
            "introspect_cache_hits", "Streams served without computing them (stored or shared)", ["backend", "rpc"],
            registry=registry,
        )
        self.cache_coalesced = Counter(
            "introspect_cache_coalesced", "Cache hits shared from an identical computation in flight",
            ["backend", "rpc"], registry=registry,
        )
        self.cache_misses = Counter(
            "introspect_cache_misses", "Streams computed because no value was cached", ["backend", "rpc"],
            registry=registry,
        )
        self.cache_errors = Counter(
            "introspect_cache_errors", "Failed or timed-out cache backend operations", ["backend", "operation"],
            registry=registry,
        )
        self.cache_rejected = Counter(
            "introspect_cache_rejected", "Stored values that failed their integrity check (deleted, served as misses)",
            ["backend"], registry=registry,
        )
        self.cache_up = Gauge(
            "introspect_cache_up", "1 while the cache backend is reachable, else 0", ["backend"], registry=registry
        )
        self.model_load = Gauge(
            "introspect_model_load_seconds", "Time it took to load a model", ["model"], registry=registry
        )

    def watch(self, state: ServerState) -> None:
        """Reads queue depths, cache size and device memory from `state` at every scrape."""
        self.registry.register(_StateCollector(state))

    def cache_observer(self, backend: str) -> CacheMetrics:
        """The cache observer that records into these metrics for `backend`."""
        return CacheMetrics(self, backend)

    def serve(self, host: str, port: int, tls: Callable[[], ssl.SSLContext] | None = None) -> WSGIServer:
        """Starts the /metrics endpoint on a background thread: HTTP, or HTTPS with the
        SSL context `tls` returns at each new connection (so a rotated certificate is
        served from the next scrape on)."""
        if tls is None:
            server, _ = start_http_server(port, addr=host, registry=self.registry)
            return server
        https = make_server(host, port, make_wsgi_app(self.registry), _https_server(host, tls), _SilentHandler)
        threading.Thread(target=https.serve_forever, name="introspect-metrics", daemon=True).start()
        return https


HANDSHAKE_TIMEOUT_SECONDS = 10.0
"""How long a metrics connection may take for its TLS handshake and request."""


def _https_server(host: str, tls: Callable[[], ssl.SSLContext]) -> type[ThreadingWSGIServer]:
    """A threading WSGI server class that speaks TLS with `tls()`'s context; handshakes
    happen on the connection's own thread, and failed ones (a plaintext client, a client
    certificate refused) are logged at DEBUG only."""

    class HttpsServer(ThreadingWSGIServer):
        address_family = socket.AF_INET6 if ":" in host else socket.AF_INET

        def get_request(self) -> tuple[socket.socket, Any]:
            connection, address = self.socket.accept()
            connection.settimeout(HANDSHAKE_TIMEOUT_SECONDS)
            return tls().wrap_socket(connection, server_side=True, do_handshake_on_connect=False), address

        def handle_error(self, request: Any, client_address: Any) -> None:
            log.debug("metrics connection from %s failed", client_address, exc_info=True)

    return HttpsServer


class CacheMetrics:
    """Records what the result cache does (implements introspect.cache.CacheObserver)."""

    def __init__(self, metrics: Metrics, backend: str) -> None:
        self._metrics = metrics
        self._backend = backend
        metrics.cache_up.labels(backend).set(1)
        metrics.cache_rejected.labels(backend)  # the series exists from the start, at 0

    def hit(self, rpc: str, coalesced: bool) -> None:
        """Counts a hit (and a coalesced one)."""
        self._metrics.cache_hits.labels(self._backend, rpc).inc()
        if coalesced:
            self._metrics.cache_coalesced.labels(self._backend, rpc).inc()

    def miss(self, rpc: str) -> None:
        """Counts a miss."""
        self._metrics.cache_misses.labels(self._backend, rpc).inc()

    def error(self, operation: str) -> None:
        """Counts a failed backend operation."""
        self._metrics.cache_errors.labels(self._backend, operation).inc()

    def available(self, up: bool) -> None:
        """Sets introspect_cache_up."""
        self._metrics.cache_up.labels(self._backend).set(1 if up else 0)

    def rejected(self) -> None:
        """Counts a value that failed its integrity check."""
        self._metrics.cache_rejected.labels(self._backend).inc()


def cuda_memory_allocated(devices: Iterable[str]) -> Callable[[], dict[str, int]]:
    """A reader of torch.cuda.memory_allocated for the CUDA devices among `devices`
    (reads nothing, and imports no torch, when there are none)."""
    cuda = sorted({device for device in devices if device.startswith("cuda")})
    if not cuda:
        return dict

    def read() -> dict[str, int]:
        import torch

        return {device: int(torch.cuda.memory_allocated(device)) for device in cuda}

    return read
