"""`introspect serve`: the grpc.aio server with health checking, reflection and an
orderly shutdown on SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import Sequence

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from introspect_client._proto import introspect_pb2 as pb
from introspect_client._proto import introspect_pb2_grpc as pb_grpc

from .config import Settings, parse_serve_arguments
from .dataplane import DataPlane
from .engine import Engine
from .models import ModelLoadError, ModelRegistry
from .rpc.servicer import IntrospectionServicer

log = logging.getLogger("introspect")
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Introspection"].full_name


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


async def serve(settings: Settings, registry: ModelRegistry | None = None) -> None:
    """Loads the models, serves until SIGTERM/SIGINT, then stops gracefully."""
    registry = registry or await asyncio.to_thread(ModelRegistry.load, settings)
    engine = Engine(max_queue=settings.max_queue)
    server = grpc.aio.server(options=grpc_options(settings))
    pb_grpc.add_IntrospectionServicer_to_server(
        IntrospectionServicer(DataPlane(registry, engine), settings.max_message_bytes), server
    )
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME), server
    )
    address = f"{settings.host}:{settings.port}"
    port = server.add_insecure_port(address)
    if port == 0:
        raise OSError(f"could not listen on {address}")
    await server.start()
    for service in ("", SERVICE_NAME):
        await health_servicer.set(service, health_pb2.HealthCheckResponse.SERVING)
    host = settings.host if ":" not in settings.host else f"[{settings.host}]"
    # Tests and scripts read this line to learn the port when --port 0 was asked.
    print(f"introspect serving {', '.join(m.name for m in registry)} on {host}:{port}", flush=True)

    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signal_number in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signal_number, stopping.set)
    await stopping.wait()
    log.info("stopping: health NOT_SERVING, draining for up to %.0fs", settings.grace_seconds)
    await health_servicer.enter_graceful_shutdown()
    await server.stop(settings.grace_seconds)
    engine.shutdown()


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `introspect serve`."""
    settings = parse_serve_arguments(argv)
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()
    logging.basicConfig(
        level=settings.log_level.upper(), stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        asyncio.run(serve(settings))
    except ModelLoadError as error:
        log.error("%s", error)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
