"""The standard gRPC health service (grpc.health.v1), SERVING only while the server is ready."""

from __future__ import annotations

import asyncio
import contextlib

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from api.dataplane import DataPlane

OVERALL = ""  # the service name health checkers ask about by default
PREDICTION_SERVICE = "tensorflow.serving.PredictionService"


class HealthReporter:
    """Keeps the health service in step with readiness: every known model has an AVAILABLE version.
    Checks are answered on the event loop from the last status set; readiness (which reads Redis) is
    computed on a thread."""

    def __init__(self, dataplane: DataPlane, server: grpc.aio.Server, interval_s: float = 0.25) -> None:
        self._dataplane = dataplane
        self._interval = interval_s
        self._servicer = health.aio.HealthServicer()
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

    async def update(self) -> None:
        serving, _ = await asyncio.to_thread(self._dataplane.readiness)
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for service in (OVERALL, PREDICTION_SERVICE):
            await self._servicer.set(service, status)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                await self.update()
            except Exception:  # readiness reads Redis; a hiccup must not end health reporting
                await self._servicer.set(OVERALL, health_pb2.HealthCheckResponse.NOT_SERVING)
