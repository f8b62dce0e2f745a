"""The standard gRPC health service (grpc.health.v1), SERVING only while the server is ready.

The service needs no token (probes carry none), so what one client can make it hold is bounded: at most
MAX_WATCH_STREAMS Watch streams at once server-wide (a Watch beyond them is RESOURCE_EXHAUSTED at once;
the streams held are the long-lived ones of honest watchers, so none is pushed out), and a service name
we do not report is answered without being kept: Check NOT_FOUND, Watch SERVICE_UNKNOWN and then the
stream stays open as the health protocol asks, counted among the Watch streams.
"""

from __future__ import annotations

import asyncio
import contextlib

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from api.dataplane.readiness import Readiness

OVERALL = ""  # the service name health checkers ask about by default
PREDICTION_SERVICE = "tensorflow.serving.PredictionService"
KSERVE_SERVICE = "inference.GRPCInferenceService"
SERVICES = (OVERALL, PREDICTION_SERVICE, KSERVE_SERVICE)  # all served by the same workers: one status
MAX_WATCH_STREAMS = 256  # ≈ 40 KB of api memory each (HTTP/2 stream, call, request); Checks are not counted

ServingStatus = health_pb2.HealthCheckResponse.ServingStatus
SERVICE_UNKNOWN = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN


class BoundedHealthServicer(health_pb2_grpc.HealthServicer):
    """grpc.health.v1 for a fixed set of services, with at most `max_watches` Watch streams at once."""

    def __init__(self, services: tuple[str, ...], max_watches: int) -> None:
        self._statuses: dict[str, ServingStatus] = dict.fromkeys(services, health_pb2.HealthCheckResponse.NOT_SERVING)
        self._changed = asyncio.Condition()
        self._max_watches = max_watches
        self._watches = 0
        self._shutting_down = False

    async def Check(self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext):  # noqa: N802
        status = self._statuses.get(request.service)
        if status is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, "Unknown service")
        return health_pb2.HealthCheckResponse(status=status)

    async def Watch(self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext) -> None:  # noqa: N802
        if self._watches >= self._max_watches:
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"Too many health Watch streams on this server ({self._max_watches}); use Check or retry later",
            )
        self._watches += 1
        try:
            service = request.service if request.service in self._statuses else None
            del request  # an unknown name, however long, is not kept for the stream's life
            if service is None:
                await context.write(health_pb2.HealthCheckResponse(status=SERVICE_UNKNOWN))
                await asyncio.Event().wait()  # our services are fixed: it never becomes known
            last_sent = None
            async with self._changed:
                while True:
                    status = self._statuses[service]
                    if status != last_sent:
                        await context.write(health_pb2.HealthCheckResponse(status=status))
                        last_sent = status
                    await self._changed.wait()
        finally:
            self._watches -= 1

    def status(self, service: str) -> ServingStatus:
        return self._statuses[service]

    async def set(self, service: str, status: ServingStatus) -> None:
        """Set a known service's status (ignored once shutting down) and wake its watchers."""
        if not self._shutting_down:
            await self._set(service, status)

    async def enter_graceful_shutdown(self) -> None:
        """NOT_SERVING for every service, for good."""
        self._shutting_down = True
        for service in self._statuses:
            await self._set(service, health_pb2.HealthCheckResponse.NOT_SERVING)

    async def _set(self, service: str, status: ServingStatus) -> None:
        if self._statuses[service] == status:
            return  # set every 0.25 s: watchers wake only on a change
        async with self._changed:
            self._statuses[service] = status
            self._changed.notify_all()


class HealthReporter:
    """Keeps the health service in step with readiness: every known model has an AVAILABLE version.
    Checks are answered on the event loop from the last status set; readiness (which reads Redis) is
    computed on a thread."""

    def __init__(self, readiness: Readiness, server: grpc.aio.Server, interval_s: float = 0.25) -> None:
        self._readiness = readiness
        self._interval = interval_s
        self._servicer = BoundedHealthServicer(SERVICES, MAX_WATCH_STREAMS)
        health_pb2_grpc.add_HealthServicer_to_server(self._servicer, server)
        self._task: asyncio.Task | None = None

    async def start(self) -> None:
        await self.update()
        self._task = asyncio.create_task(self._run(), name="ovms-health")

    async def stop(self) -> None:
        """Report NOT_SERVING for good (a draining server) and stop updating."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._servicer.enter_graceful_shutdown()

    def serving(self) -> bool:
        """Whether the server reports SERVING now (read on the event loop: no thread, no Redis)."""
        return self._servicer.status(OVERALL) == health_pb2.HealthCheckResponse.SERVING

    async def update(self) -> None:
        serving, _ = await asyncio.to_thread(self._readiness.check)
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for service in SERVICES:
            await self._servicer.set(service, status)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                await self.update()
            except Exception:  # readiness reads Redis; a hiccup must not end health reporting
                await self._servicer.set(OVERALL, health_pb2.HealthCheckResponse.NOT_SERVING)
