"""The api process: gRPC and REST frontends over one data plane, until stopped."""

from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor

import grpc
import waitress

from api.dataplane import DataPlane
from api.grpc_service import ModelService, PredictionService
from api.health import HealthReporter
from api.metrics import ServingMetrics
from api.protos import serving_pb2_grpc
from api.rest_app import create_app
from api.rest_server import JsonErrorChannel
from inference.settings import ConfiguredModels, ServerSettings
from tasks.app import configure
from tasks.dispatcher import Dispatcher
from tasks.publisher import store_client
from tasks.registry import RegistryView

log = logging.getLogger("serving")

GRPC_THREADS = 256  # each in-flight request holds a thread while its result is on the way
MAX_RESPONSE_BYTES = 1 << 30  # what we send is ours; what we receive is bounded by --max_request_mb


class ApiServer:
    def __init__(self, settings: ServerSettings, broker_url: str, rest: bool = True) -> None:
        self._settings = settings
        backend_url = settings.result_backend_url or broker_url
        configure(broker_url, backend_url, settings.job_ttl_s)
        store = store_client(backend_url)
        self._registry = RegistryView(store)
        self._dispatcher = Dispatcher(store)
        self._dataplane = DataPlane(
            self._registry,
            self._dispatcher,
            settings.request_timeout_s,
            store,
            ConfiguredModels(settings),
            settings.job_ttl_s,
        )
        self._metrics = ServingMetrics(self._registry, store)
        self._rest_enabled = rest and settings.rest_port > 0
        self._grpc: grpc.Server | None = None
        self._health: HealthReporter | None = None
        self._rest: waitress.server.BaseWSGIServer | None = None

    def start(self) -> None:
        self._registry.start()
        self._dispatcher.start()
        self._start_grpc()
        if self._rest_enabled:
            self._start_rest()

    def stop(self, grace_s: float = 5.0) -> None:
        if self._health is not None:
            self._health.stop()
        if self._rest is not None:
            self._rest.close()
        if self._grpc is not None:
            self._grpc.stop(grace_s).wait()
        self._dispatcher.stop()
        self._registry.stop()

    def _start_grpc(self) -> None:
        options = {
            "grpc.max_receive_message_length": self._settings.max_request_bytes,  # else RESOURCE_EXHAUSTED
            "grpc.max_send_message_length": MAX_RESPONSE_BYTES,
            "grpc.so_reuseport": 0,  # a second server on a taken port must fail, not share it
            **self._settings.grpc_channel_arguments,
        }
        server = grpc.server(ThreadPoolExecutor(max_workers=GRPC_THREADS), options=list(options.items()))
        serving_pb2_grpc.add_PredictionServiceServicer_to_server(
            PredictionService(self._dataplane, self._metrics), server
        )
        serving_pb2_grpc.add_ModelServiceServicer_to_server(ModelService(self._dataplane, self._metrics), server)
        self._health = HealthReporter(self._dataplane, server)
        if server.add_insecure_port(f"[::]:{self._settings.port}") == 0:
            raise RuntimeError(f"cannot bind gRPC port {self._settings.port}")
        server.start()
        self._health.start()
        self._grpc = server
        log.info("Server started on port %d", self._settings.port)

    def _start_rest(self) -> None:
        self._rest = waitress.create_server(
            create_app(self._dataplane, self._metrics, self._settings.max_request_bytes),
            host="0.0.0.0",
            port=self._settings.rest_port,
            threads=self._settings.rest_workers,
            ident="ovms",
            connection_limit=1000,
            channel_timeout=120,
            # waitress reads a whole body before the app sees it: a larger one is refused as its headers arrive
            max_request_body_size=self._settings.max_request_bytes,
        )
        self._rest.channel_class = JsonErrorChannel
        threading.Thread(target=self._rest.run, name="ovms-rest", daemon=True).start()
        log.info("Started REST server at localhost:%d", self._settings.rest_port)
