"""The gRPC server: grpc.aio on an event loop of its own thread.

A call costs a thread only while its request is decoded and published (or a large answer encoded),
never while its request message is still arriving or its answer is awaited: no number of idle
connections, half-open streams or slow senders takes threads from other clients. What bounds a
hostile client: the calls waiting for their request (the longest waiting is pushed out) and the calls
being served (api.grpc_limits), streams per connection, a handshake timeout for connections that never
speak HTTP/2, and each model's queue limit; every bound answers at once (RESOURCE_EXHAUSTED), never by
a hang.
"""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc

from api.auth import BearerTokens, TokenInterceptor
from api.dataplane import DataPlane
from api.grpc_limits import AwaitedRequests, CallLimit, RequestReader
from api.grpc_service import ModelService, PredictionService
from api.health import HealthReporter
from api.kserve.grpc_service import KServeService
from api.metrics import ServingMetrics
from api.protos import grpc_service_pb2_grpc, serving_pb2_grpc
from api.tenants import TenantScope, as_caller
from api.tls import TlsFiles

MAX_RESPONSE_BYTES = 1 << 30  # what we send is ours; what we receive is bounded by --max_request_mb
MAX_CALLS_IN_PROGRESS = 4096  # calls whose request arrived and whose answer has not left
MAX_CALLS_AWAITING_REQUEST = 1024  # half-open streams and slow senders (≈ 22 KB each); the oldest is pushed out
# HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS: one connection may hold as many calls as the server serves at
# once. grpc core refuses streams beyond it (REFUSED_STREAM: UNAVAILABLE, which clients may retry),
# counting streams not yet freed too (its Rapid Reset protection, kept on).
MAX_STREAMS_PER_CONNECTION = MAX_CALLS_IN_PROGRESS
# Calls arrived that the event loop has not taken yet: beyond grpc core's default soft limit (1,000) it
# drops them at random with CANCELLED, which a burst of a few thousand calls on one channel hit.
MAX_PENDING_CALLS = 4 * MAX_CALLS_IN_PROGRESS
HANDSHAKE_TIMEOUT_MS = 10_000  # a connection must finish TLS and the HTTP/2 preface within this
# A connection with no call in progress for this long is sent GOAWAY and closed (grpc core's max_idle
# filter: its timer runs only while the connection carries no call, so a long Predict is never cut). It
# also ends connections that sent the preface and then nothing, which no other timer of grpc core does.
IDLE_CONNECTION_MS = 5_000
# Open gRPC connections at most, and at most the port's share of the descriptors (api.descriptors); grpc core
# closes one accepted beyond this at once, so that the gRPC port can never fill the descriptor table that
# REST and Redis share.
MAX_CONNECTIONS = 8_192
BLOCKING_WORK_THREADS = 16  # decoding, validation, publishing, registry reads, large encodings


class GrpcServer:
    def __init__(
        self,
        address: str,
        dataplane: DataPlane,
        metrics: ServingMetrics,
        max_request_bytes: int,
        channel_arguments: dict[str, Any],
        tls: TlsFiles | None,
        tokens: BearerTokens | None,
        max_connections: int = MAX_CONNECTIONS,
        shared_port: bool = False,
        tenant_scope: TenantScope = as_caller,
    ) -> None:
        """Listens on `address` (`host:port`, api.settings.host_port). With `shared_port` the port is bound
        with SO_REUSEPORT, shared with the other api processes of `--grpc_workers`; else a taken port
        fails the start. With `tokens`, calls run within `tenant_scope` (api.tenants: as their tenant's,
        within its limits)."""
        self._address = address
        self._dataplane = dataplane
        self._metrics = metrics
        self._tls = tls
        self._tokens = tokens
        self._tenant_scope = tenant_scope
        self._options = {
            "grpc.max_receive_message_length": max_request_bytes,  # else RESOURCE_EXHAUSTED
            "grpc.max_send_message_length": MAX_RESPONSE_BYTES,
            "grpc.max_concurrent_streams": MAX_STREAMS_PER_CONNECTION,
            "grpc.server_handshake_timeout_ms": HANDSHAKE_TIMEOUT_MS,
            "grpc.max_connection_idle_ms": IDLE_CONNECTION_MS,
            "grpc.max_allowed_incoming_connections": min(MAX_CONNECTIONS, max_connections),
            "grpc.server.max_pending_requests": MAX_PENDING_CALLS,
            "grpc.server.max_pending_requests_hard_limit": MAX_PENDING_CALLS,
            "grpc.so_reuseport": int(shared_port),  # grpc core's default is 1: a lone server must not share
            **channel_arguments,
        }
        self._executor = ThreadPoolExecutor(BLOCKING_WORK_THREADS, thread_name_prefix="ovms-grpc-work")
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="ovms-grpc", daemon=True)
        self._server: grpc.aio.Server | None = None
        self._health: HealthReporter | None = None

    def start(self) -> None:
        """Bind and serve; raises RuntimeError when the port cannot be bound."""
        self._thread.start()
        try:
            self._call(self._start())
        except BaseException:
            self._close_loop()
            raise

    def not_serving(self) -> None:
        """Health reports NOT_SERVING from now on (a draining server)."""
        if self._health is not None:
            self._call(self._health.stop())

    def stop(self, grace_s: float) -> None:
        """Close the listener; calls still running after `grace_s` are cancelled."""
        if self._server is not None:
            self._call(self._server.stop(grace_s))
        self._close_loop()
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def _start(self) -> None:
        interceptors = [TokenInterceptor(self._tokens, self._tenant_scope)] if self._tokens else []
        interceptors.append(RequestReader(AwaitedRequests(MAX_CALLS_AWAITING_REQUEST)))
        server = grpc.aio.server(interceptors=interceptors, options=list(self._options.items()))
        services = (self._dataplane, self._metrics, self._executor, CallLimit(MAX_CALLS_IN_PROGRESS))
        serving_pb2_grpc.add_PredictionServiceServicer_to_server(PredictionService(*services), server)
        serving_pb2_grpc.add_ModelServiceServicer_to_server(ModelService(*services), server)
        self._health = HealthReporter(self._dataplane.readiness, server)
        kserve = KServeService(*services, server_ready=self._health.serving)
        grpc_service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(kserve, server)
        try:
            if self._tls is None:
                bound = server.add_insecure_port(self._address)
            else:
                bound = server.add_secure_port(self._address, self._tls.grpc_credentials())
        except RuntimeError:
            bound = 0
        if bound == 0:
            raise RuntimeError(f"cannot bind gRPC port {self._address.rpartition(':')[2]} on {self._address}")
        await self._health.start()
        await server.start()
        self._server = server

    def _call(self, coroutine: Any) -> Any:
        """Run a coroutine on the server's loop and wait for its outcome."""
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()

    def _close_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        if not self._thread.is_alive():
            self._loop.close()
