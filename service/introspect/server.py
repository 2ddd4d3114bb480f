"""`introspect serve`: the grpc.aio server with health checking, reflection and an
orderly shutdown on SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from wsgiref.simple_server import WSGIServer

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from introspect_contract import pb

from typing import TYPE_CHECKING

from .auth import Authenticator, TokenFileError
from .auth import authenticator as build_authenticator
from .cache import ResultCache, build_result_cache
from .callers import CallerLogFilter
from .config import Settings, parse_serve_arguments
from . import reflection
from .health import SERVING, DrainingHealth, health_service_names
from .metrics import Metrics, ServerState, cuda_memory_allocated
from .quotas import CallerQuotas, Quota
from .rpc.authenticating import AuthInterceptor
from .rpc.draining import DrainInterceptor
from .rpc.observing import MetricsInterceptor
from .rpc.undecodable import UndecodableInterceptor
from .tls import ReloadingTls, TlsFileError, TlsFiles
from .secret_files import StartupError

if TYPE_CHECKING:  # torch and transformers: imported by serve() once the start-up files are checked
    from .dataplane import DataPlane
    from .engine import Engine
    from .models import ModelRegistry

log = logging.getLogger("introspect")


class CallerLeftDuringWrite(logging.Filter):
    """gRPC logs "ExecuteBatchError raised in core by servicer method" at ERROR when a
    message is written to a call the caller has just cancelled or whose deadline has just
    passed (a race inside grpc.aio, before the call is marked done). The call ends
    CANCELLED or DEADLINE_EXCEEDED all the same: nothing for an operator to act on, so the
    record is lowered to DEBUG."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Lowers the caller-left record to DEBUG; passes every record on."""
        if record.levelno >= logging.ERROR and record.getMessage().startswith("ExecuteBatchError raised in core"):
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return True


def quiet_caller_left_records() -> None:
    """Installs CallerLeftDuringWrite on gRPC's core logger (once per process)."""
    core = logging.getLogger("grpc._cython.cygrpc")
    if not any(isinstance(existing, CallerLeftDuringWrite) for existing in core.filters):
        core.addFilter(CallerLeftDuringWrite())
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Introspection"].full_name
# How long the end of a graceful stop may take past the grace: Watch streams ending,
# cancelled calls unwinding, worker threads leaving their work.
STOP_MARGIN_SECONDS = 0.5


def grpc_options(settings: Settings) -> list[tuple[str, int]]:
    """Channel arguments of the server."""
    options = [
        ("grpc.max_send_message_length", settings.max_message_bytes),
        ("grpc.max_receive_message_length", settings.max_message_bytes),
        ("grpc.so_reuseport", 0),
    ]
    if settings.max_connection_age_seconds > 0:
        options.append(("grpc.max_connection_age_ms", int(settings.max_connection_age_seconds * 1000)))
        options.append(("grpc.max_connection_age_grace_ms", int(settings.grace_seconds * 1000)))
    return options


def caller_defaults(settings: Settings) -> Quota:
    """The quotas of the anonymous caller and of tokens file callers that set none."""
    return Quota(settings.caller_max_concurrency, settings.caller_rate_per_second, settings.caller_burst)


def interceptors(
    settings: Settings,
    plane: DataPlane,
    metrics: Metrics,
    cache: ResultCache | None,
    drain: DrainInterceptor,
    authenticator: Authenticator,
) -> list[grpc.aio.ServerInterceptor]:
    """Request metrics outermost (they see cache hits, undecodable requests and calls
    refused while draining too), then authentication and quotas (before the request's
    bytes are looked at), then the refusal of undecodable requests, then the drain, then
    the result cache."""
    service = pb.DESCRIPTOR.services_by_name["Introspection"]
    chain: list[grpc.aio.ServerInterceptor] = [
        MetricsInterceptor(metrics, SERVICE_NAME, plane.model_label),
        AuthInterceptor(authenticator, CallerQuotas(), SERVICE_NAME, guard_others=settings.auth_health),
        UndecodableInterceptor(service),
        drain,
    ]
    if cache is not None:
        from .rpc.caching import CacheInterceptor

        chain.append(CacheInterceptor(cache, plane, service, settings.max_message_bytes))
    return chain


def load_tls(settings: Settings) -> ReloadingTls | None:
    """The TLS files of --tls-cert/--tls-key/--tls-client-ca, checked (TlsFileError
    names a file that is unreadable or malformed); None without TLS."""
    if not settings.tls_cert:
        return None
    client_ca = Path(settings.tls_client_ca) if settings.tls_client_ca else None
    return ReloadingTls(TlsFiles(Path(settings.tls_cert), Path(settings.tls_key), client_ca))


def listen(server: grpc.aio.Server, address: str, tls: ReloadingTls | None) -> int:
    """Adds the gRPC port, over TLS when configured; returns the bound port (StartupError
    when it cannot be bound: in use, or an address this host does not have)."""
    try:
        port = server.add_secure_port(address, tls.grpc_credentials()) if tls else server.add_insecure_port(address)
    except RuntimeError:
        port = 0
    if port == 0:
        raise StartupError(f"cannot listen on {address}: {port_problem(address) or 'the bind failed'}")
    return port


def port_problem(address: str) -> str:
    """Why `address` (HOST:PORT) cannot be bound, in a few words: "the port is in use",
    the operating system's reason, or "" when it can be bound now."""
    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    try:
        infos = socket.getaddrinfo(host or None, int(port), type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (OSError, ValueError) as error:
        return str(error)
    reasons, bound = [], False
    for family, kind, protocol, _, sockaddr in infos:
        try:
            with socket.socket(family, kind, protocol) as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gRPC binds
                probe.bind(sockaddr)
            bound = True
        except OSError as error:
            if error.errno == errno.EADDRINUSE:
                return "the port is in use (another server listens there?)"
            reasons.append(error.strerror or str(error))
    # gRPC serves when any of the host's addresses binds (an IPv6-less host's ::1 need not)
    return "" if bound or not reasons else reasons[0]


def check_ports_free(settings: Settings) -> None:
    """StartupError naming the address when the gRPC port (or --health-port) cannot be
    bound: checked before the models load, so that a busy port stops the server at once."""
    ports = [settings.port, settings.health_port or 0]
    for port in ports:
        if port:
            address = f"{settings.host}:{port}"
            problem = port_problem(address)
            if problem:
                raise StartupError(f"cannot listen on {address}: {problem}")


async def start_health_port(settings: Settings, health: DrainingHealth) -> grpc.aio.Server | None:
    """With --health-port: a plaintext server on --host that serves only the health
    service (kubelet gRPC probes speak no TLS); every other method is UNIMPLEMENTED there."""
    if not settings.health_port:
        return None
    server = grpc.aio.server()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    address = f"{settings.host}:{settings.health_port}"
    listen(server, address, None)
    await server.start()
    log.info("health checks (plaintext, grpc.health.v1.Health only) on %s", address)
    return server


def start_metrics(
    settings: Settings, metrics: Metrics, plane: DataPlane, cache: ResultCache | None, tls: ReloadingTls | None
) -> WSGIServer | None:
    """Registers the scrape-time gauges and, when --metrics-port is set, serves /metrics."""
    for model in plane.registry:
        metrics.model_load.labels(model.name).set(model.description.load_seconds)
    # Creates every device worker here, on the loop's thread, so that scrapes (on the
    # metrics thread) only read the engine.
    plane.queued()
    metrics.watch(
        ServerState(
            queued=plane.queued,
            queue_limit=settings.max_queue,
            cache_stored_bytes=lambda: {cache.backend.name: cache.backend.stored_bytes()} if cache else {},
            device_memory=cuda_memory_allocated(model.description.device for model in plane.registry),
        )
    )
    if not settings.metrics_port:
        return None
    https = tls if settings.metrics_tls else None
    http = metrics.serve(settings.metrics_host, settings.metrics_port, https.context if https else None)
    scheme = "https" if https else "http"
    log.info("metrics on %s://%s:%d/metrics", scheme, settings.metrics_host, settings.metrics_port)
    return http


async def serve(
    settings: Settings,
    registry: ModelRegistry | None = None,
    stopping: asyncio.Event | None = None,
    ready: Callable[[int], None] | None = None,
) -> None:
    """Loads the models, serves until SIGTERM/SIGINT, then stops gracefully.

    Embedders (e.g. an in-process server on a thread other than the main one, where
    signal handlers cannot be installed) pass `stopping` and set it to stop; `ready` is
    called with the bound port once the server serves."""
    quiet_caller_left_records()
    # the files the server starts with are checked before torch and transformers are
    # imported: a bad one stops the server within a second, with one line naming it
    check_ports_free(settings)
    tls = load_tls(settings)
    authenticator = build_authenticator(settings.auth_tokens_file, caller_defaults(settings))
    metrics = Metrics()
    cache = build_result_cache(settings, metrics.cache_observer)
    from transformers.utils import logging as transformers_logging

    from .admission import RequestLimits
    from .batching import BatchPolicy
    from .dataplane import DataPlane
    from .engine import Engine
    from .models import ModelRegistry
    from .rpc.servicer import IntrospectionServicer, add_to_server

    transformers_logging.disable_progress_bar()
    registry = registry or await asyncio.to_thread(ModelRegistry.load, settings)
    engine = Engine(
        max_queue=settings.max_queue,
        stall_timeout=settings.stall_timeout_seconds,
        batching=BatchPolicy(settings.max_batch_size, settings.max_batch_delay_ms / 1000),
        batch_sizes=lambda model, size: metrics.batch_size.labels(model).observe(size),
    )
    plane = DataPlane(registry, engine, RequestLimits.from_settings(settings))
    drain = DrainInterceptor(SERVICE_NAME)
    server = grpc.aio.server(
        options=grpc_options(settings), interceptors=interceptors(settings, plane, metrics, cache, drain, authenticator)
    )
    add_to_server(IntrospectionServicer(plane, settings.max_message_bytes), server)
    health_servicer = DrainingHealth()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable((SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name), server)
    port = listen(server, f"{settings.host}:{settings.port}", tls)
    if cache is not None:
        await cache.start()
    metrics_http = start_metrics(settings, metrics, plane, cache, tls)
    await server.start()
    health_server = await start_health_port(settings, health_servicer)
    for service in health_service_names(SERVICE_NAME, [model.name for model in registry]):
        health_servicer.set(service, SERVING)
    host = settings.host if ":" not in settings.host else f"[{settings.host}]"
    # Tests and scripts read this line to learn the port when --port 0 was asked.
    print(f"introspect serving {', '.join(m.name for m in registry)} on {host}:{port}", flush=True)
    if ready is not None:
        ready(port)

    if stopping is None:
        stopping = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signal_number in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signal_number, stopping.set)
    await stopping.wait()
    await stop_gracefully(server, health_servicer, drain, engine, settings.grace_seconds)
    if health_server is not None:
        await health_server.stop(None)
    if cache is not None:
        await cache.close()
    if metrics_http is not None:
        metrics_http.shutdown()
        metrics_http.server_close()


async def stop_gracefully(
    server: grpc.aio.Server, health: DrainingHealth, drain: DrainInterceptor, engine: Engine, grace: float
) -> None:
    """The drain: health NOT_SERVING (Check and Watch; Watch streams end), new calls
    refused with UNAVAILABLE, calls in flight given up to `grace` s to finish; then the
    rest are cut (their callers see UNAVAILABLE) and their work on the device workers is
    stopped at its next check."""
    deadline = time.monotonic() + grace
    log.info("stopping: health NOT_SERVING, draining %d calls for up to %.1fs", drain.in_flight, grace)
    drain.close()
    await health.drain(min(grace, STOP_MARGIN_SECONDS))
    if not await drain.idle(max(0.0, deadline - time.monotonic())):
        log.warning("cutting %d calls still running at the end of the %.1fs grace", drain.cut(), grace)
        await drain.idle(STOP_MARGIN_SECONDS)
    # Cut calls end UNAVAILABLE, not as streams cut short that look complete, because
    # their handlers were cancelled before their work; cancelling all work is for the rest.
    engine.cancel_all()
    await server.stop(None)
    engine.shutdown()


def leave_promptly(timeout: float) -> None:
    """Waits at most `timeout` s for threads that would hold the interpreter's exit
    (device workers still inside a step: they stop at their next check); exits at once
    if some still run, so that a stop never outlasts the grace by more than `timeout`."""
    deadline = time.monotonic() + timeout
    for thread in threading.enumerate():
        if thread is not threading.current_thread() and not thread.daemon:
            thread.join(max(0.0, deadline - time.monotonic()))
    busy = [t.name for t in threading.enumerate() if t is not threading.current_thread() and not t.daemon and t.is_alive()]
    if busy:
        log.warning("exiting without waiting for %s", ", ".join(busy))
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `introspect serve`."""
    settings = parse_serve_arguments(argv)
    logging.basicConfig(
        level=settings.log_level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s [%(caller)s]: %(message)s",
    )
    for handler in logging.getLogger().handlers:
        handler.addFilter(CallerLogFilter())
    try:
        asyncio.run(serve(settings))
    except (TlsFileError, TokenFileError, StartupError) as error:
        log.error("%s", error)
        return 2
    except Exception as error:
        from .models import ModelLoadError  # imported by serve() already

        if not isinstance(error, ModelLoadError):
            raise
        log.error("%s", error)
        return 2
    leave_promptly(STOP_MARGIN_SECONDS)
    return 0


if __name__ == "__main__":
    sys.exit(main())
