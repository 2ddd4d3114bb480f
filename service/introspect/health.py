"""The gRPC health service, with a drain: on the way down every service reports
NOT_SERVING to Check and Watch, and open Watch streams get that status and then end
(grpc_health's servicer keeps them open until the server stops, which holds a graceful
stop for its whole grace).

Service names: "" (the whole server), "introspect.v1.Introspection" (the service), and
one per loaded model, "introspect.v1.Introspection/<model>" (health_service_names). A
model's name is always qualified by the service so that it can never be taken for
another gRPC service's name; an unknown name (a model not loaded) answers NOT_FOUND."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable

import grpc.aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

Status = health_pb2.HealthCheckResponse.ServingStatus
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def health_service_names(service: str, models: Iterable[str]) -> list[str]:
    """The names the server reports on: "", `service`, and `service`/MODEL per model."""
    return ["", service, *(f"{service}/{model}" for model in models)]


class DrainingHealth(health_pb2_grpc.HealthServicer):
    """Check and Watch over a status per service name ("" is the whole server)."""

    def __init__(self) -> None:
        self._statuses: dict[str, Status] = {}
        self._changed = asyncio.Event()
        self._draining = False
        self._watchers = 0
        self._no_watchers = asyncio.Event()
        self._no_watchers.set()

    def set(self, service: str, status: Status) -> None:
        """Sets a service's status and tells its watchers; ignored once draining."""
        if not self._draining:
            self._statuses[service] = status
            self._notify()

    async def drain(self, timeout: float) -> None:
        """Every service NOT_SERVING from now on; waits (at most `timeout` s) until each
        open Watch stream has been sent that status and has ended."""
        self._draining = True
        self._statuses = dict.fromkeys(self._statuses, NOT_SERVING)
        self._notify()
        try:
            await asyncio.wait_for(self._no_watchers.wait(), timeout)
        except TimeoutError:
            pass  # the server's stop ends them

    def _notify(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def Check(  # noqa: N802 (gRPC method name)
        self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext
    ) -> health_pb2.HealthCheckResponse:
        """The service's status; NOT_FOUND for a service never set."""
        status = self._statuses.get(request.service)
        if status is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"unknown service {request.service!r}")
        return health_pb2.HealthCheckResponse(status=status)

    async def Watch(  # noqa: N802 (gRPC method name)
        self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[health_pb2.HealthCheckResponse]:
        """The service's status now and at every change (SERVICE_UNKNOWN while never
        set); ends after sending NOT_SERVING when the server drains."""
        self._watchers += 1
        self._no_watchers.clear()
        try:
            last = None
            while True:
                changed = self._changed
                status = self._statuses.get(request.service, health_pb2.HealthCheckResponse.SERVICE_UNKNOWN)
                if status != last:
                    yield health_pb2.HealthCheckResponse(status=status)
                    last = status
                if self._draining:
                    return
                await changed.wait()
        finally:
            self._watchers -= 1
            if self._watchers == 0:
                self._no_watchers.set()
