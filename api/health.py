"""The standard gRPC health service (grpc.health.v1), SERVING only while the server is ready."""

from __future__ import annotations

import threading

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from api.dataplane import DataPlane

OVERALL = ""  # the service name health checkers ask about by default
PREDICTION_SERVICE = "tensorflow.serving.PredictionService"


class HealthReporter:
    """Keeps the health service in step with readiness: every known model has an AVAILABLE version."""

    def __init__(self, dataplane: DataPlane, server: grpc.Server, interval_s: float = 0.25) -> None:
        self._dataplane = dataplane
        self._interval = interval_s
        self._servicer = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self._servicer, server)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ovms-health", daemon=True)
        self.update()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Report NOT_SERVING for good (a draining server) and stop updating."""
        self._stop.set()
        self._servicer.enter_graceful_shutdown()

    def update(self) -> None:
        serving, _ = self._dataplane.readiness()
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for service in (OVERALL, PREDICTION_SERVICE):
            self._servicer.set(service, status)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self.update()
            except Exception:  # readiness reads Redis; a hiccup must not end health reporting
                self._servicer.set(OVERALL, health_pb2.HealthCheckResponse.NOT_SERVING)
