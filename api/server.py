"""The api process: gRPC and REST frontends over one data plane, until stopped."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

import redis

from api.admission import Admission
from api.auth import BearerTokens
from api.dataplane import DataPlane
from api.dataplane.inference import InferenceService
from api.dataplane.jobs import JobService
from api.dataplane.models import ModelRepository
from api.dataplane.readiness import Readiness
from api.dataplane.statistics import StatisticsService
from api.descriptors import connections_per_port, raise_open_file_limit
from api.grpc_server import MAX_CONNECTIONS as MAX_GRPC_CONNECTIONS
from api.grpc_server import GrpcServer
from api.metrics import ServingMetrics
from api.quotas import TenantQuotas
from api.rest_app import create_app
from api.rest_server import RestServer
from api.settings import ApiSettings, all_interfaces, host_port
from api.tenants import TenantScope, as_caller
from api.tls import TlsFiles
from inference.errors import TenantOverLimit
from inference.model_config import ConfiguredModels
from tasks.app import configure
from tasks.callback_runner import CallbackConfig, CallbackRunner
from tasks.dispatcher import Dispatcher
from tasks.jobs import JobLimits, JobStore
from tasks.link import RedisLink
from tasks.lost_chunks import LostChunks
from tasks.publisher import store_client
from tasks.recovery import WorkerLossRecovery
from tasks.registry import RegistryView

log = logging.getLogger("serving")

LISTENER_GRACE_S = 2.0  # for replies still being written when the listeners close


class ApiServer:
    def __init__(self, settings: ApiSettings, broker_url: str, rest: bool = True, shared_ports: bool = False) -> None:
        """With `shared_ports` this is one of the `--grpc_workers` api processes: its listeners share the
        ports (SO_REUSEPORT) and it logs its own start-up line; the supervisor logs the seed's lines once
        all of them listen (ovms.api_processes)."""
        self._settings = settings
        self._shared_ports = shared_ports
        backend_url = settings.result_backend_url or broker_url
        configure(broker_url, backend_url, settings.job_ttl_s)
        store = store_client(backend_url)
        broker = store if backend_url == broker_url else store_client(broker_url)  # the Celery queues
        self._link = RedisLink(broker_url, backend_url)
        self._tokens = BearerTokens.from_file(settings.auth_token_file) if settings.auth_token_file else None
        # each tenant's share of a model's capacity under saturation (api.tenants; none without tokens): the
        # dispatcher's fair share between tenants (inference.fair_queue)
        tenant_weights = self._tokens.weights if self._tokens is not None else {}
        best_levels = self._tokens.best_levels if self._tokens is not None else {}
        self._dispatcher = Dispatcher(store, broker, self._link, weights=tenant_weights, best_levels=best_levels)
        jobs = JobStore(store, settings.job_ttl_s, JobLimits.from_settings(settings))
        self._callbacks = _callback_runner(settings, store, jobs)
        lost_chunks = LostChunks(store, settings.job_ttl_s, settings.job_timeout_s)
        recovery = WorkerLossRecovery(self._dispatcher, jobs, lost_chunks)
        self._registry = RegistryView(store, on_workers_gone=recovery.workers_gone, on_refreshed=recovery.refreshed)
        self._metrics = ServingMetrics(self._registry, broker, store, self._link)
        self._dataplane = _data_plane(
            settings, store, broker, self._registry, self._dispatcher, jobs, self._link, self._metrics.tenant_refused
        )
        self._tenant_scope = _tenant_scope(self._tokens, backend_url, self._link, settings, self._metrics)
        self._rest_enabled = rest and settings.rest_port > 0
        self._tls = TlsFiles.from_settings(settings)
        self._grpc: GrpcServer | None = None
        self._rest: RestServer | None = None

    def start(self) -> None:
        self._link.start()
        self._registry.start()
        self._dispatcher.start()
        if self._callbacks is not None:
            self._callbacks.start()
        open_files = raise_open_file_limit()
        per_port = connections_per_port(open_files)
        log.info("Open-file limit: %d; REST connections at most %d, gRPC at most %d (the rest kept)",
                 open_files, per_port, min(per_port, MAX_GRPC_CONNECTIONS))  # fmt: skip
        self._start_grpc(per_port)
        if self._rest_enabled:
            self._start_rest(per_port)
        if self._shared_ports:
            rest = f", REST port {self._settings.rest_port}" if self._rest_enabled else ""
            log.info("Api process %d listening: gRPC port %d%s (shared)", os.getpid(), self._settings.port, rest)
        else:
            log_listening(self._settings, self._rest_enabled)

    def stop(self) -> None:
        """Drain: readiness turns false and new inference work is refused (UNAVAILABLE / 503) while the
        requests in progress finish (waiting at most --request_timeout_s); then the listeners close."""
        in_progress = self._dataplane.admission.close()
        if self._grpc is not None:
            self._grpc.not_serving()
        log.info("Draining: %d request(s) in progress", in_progress)
        if not self._dataplane.admission.wait_idle(self._settings.request_timeout_s + 1.0):
            log.warning("Requests still in progress after %.0f s; stopping anyway", self._settings.request_timeout_s)
        if self._rest is not None:
            self._rest.stop()
        if self._grpc is not None:
            self._grpc.stop(LISTENER_GRACE_S)
        if self._callbacks is not None:
            self._callbacks.stop()
        self._dispatcher.stop()
        self._registry.stop()
        self._link.stop()
        log.info("Api stopped")

    def _start_grpc(self, max_connections: int) -> None:
        server = GrpcServer(
            host_port(self._settings.grpc_bind_address, self._settings.port),
            self._dataplane,
            self._metrics,
            self._settings.max_request_bytes,
            self._settings.grpc_channel_arguments,
            self._tls,
            self._tokens,
            max_connections,
            self._shared_ports,
            self._tenant_scope,
        )
        server.start()
        self._grpc = server

    def _start_rest(self, max_connections: int) -> None:
        app = create_app(self._dataplane, self._metrics, self._settings.max_request_bytes, self._tokens)
        server = RestServer(
            app,
            self._settings.rest_bind_address,
            self._settings.rest_port,
            self._settings.rest_workers,
            self._settings.max_request_bytes,
            self._tls,
            self._dataplane.admission,
            self._tokens,
            max_connections,
            self._shared_ports,
            self._tenant_scope,
        )
        server.start()
        self._rest = server


def log_listening(settings: ApiSettings, rest: bool) -> None:
    """The seed's lines that say the gRPC (and REST) port serves, which tests and ops/bench.py wait for,
    naming the address each really listens on; then one WARNING if a listener open on every interface
    asks for no credentials."""
    security = _security_notes(settings)
    grpc_address = host_port(settings.grpc_bind_address, settings.port)
    grpc_on = grpc_address
    if all_interfaces(settings.grpc_bind_address):  # grpc core binds either wildcard as one dual-stack socket
        grpc_on = f"{host_port('0.0.0.0', settings.port)} and {host_port('::', settings.port)}"
    log.info("Server started on port %d (%s)", settings.port, ", ".join([f"gRPC on {grpc_on}", *security]))
    rest_address = host_port(settings.rest_bind_address, settings.rest_port)
    if rest:
        log.info("Started REST server at %s%s", rest_address, f" ({', '.join(security)})" if security else "")
    if settings.auth_token_file or settings.ssl_client_ca:
        return
    exposed = [f"gRPC {grpc_address}"] if all_interfaces(settings.grpc_bind_address) else []
    exposed += [f"REST {rest_address}"] if rest and all_interfaces(settings.rest_bind_address) else []
    if exposed:
        log.warning(
            "Listening on all interfaces without credentials (neither --auth_token_file nor --ssl_client_ca): "
            "%s; whoever reaches this host can call it (see README, Security)",
            ", ".join(exposed),
        )


def _security_notes(settings: ApiSettings) -> list[str]:
    """What the start-up log says about TLS and tokens (never a token itself)."""
    notes = []
    if settings.ssl_certificate:
        notes.append("mutual TLS" if settings.ssl_client_ca else "TLS")
    if settings.auth_token_file:
        notes.append("bearer tokens required")
    return notes


def _callback_runner(settings: ApiSettings, store: redis.Redis, jobs: JobStore) -> CallbackRunner | None:
    """The thread that tells jobs' callback URLs of their end; none while callbacks are off (no allow-list):
    an api without one leaves the callbacks of jobs submitted elsewhere to the apis that have one."""
    if not settings.callback_allow:
        return None
    config = CallbackConfig(
        settings.callback_allow,
        settings.callback_secret(),
        settings.callback_attempts,
        settings.callback_backoff_s,
        settings.callback_timeout_s,
    )
    return CallbackRunner(store, jobs, config)


def _data_plane(
    settings: ApiSettings,
    store: redis.Redis,
    broker: redis.Redis,
    registry: RegistryView,
    dispatcher: Dispatcher,
    jobs: JobStore,
    link: RedisLink,
    refused: Callable[[TenantOverLimit], None],
) -> DataPlane:
    """The services both frontends call, built once (see api.dataplane); `refused` counts the job submissions
    refused beyond a tenant's limit."""
    admission = Admission(settings.max_inflight_bytes)
    models = ModelRepository(registry, store, link, ConfiguredModels(settings))
    return DataPlane(
        inference=InferenceService(registry, dispatcher, admission, link, settings.request_timeout_s),
        models=models,
        jobs=JobService(registry, jobs, admission, link, refused, settings.callback_allow),
        readiness=Readiness(models, registry, admission, link),
        statistics=StatisticsService(registry, store, link, broker),
        admission=admission,
        link=link,
    )


def _tenant_scope(
    tokens: BearerTokens | None, url: str, link: RedisLink, settings: ApiSettings, metrics: ServingMetrics
) -> TenantScope:
    """What each call runs within: as its tenant's, and within the tenant's requests a second and in flight
    when any tenant has such a limit (api.quotas); else without a Redis round trip."""
    if tokens is None or not any(tenant.limits.per_call for tenant in tokens.tenants.values()):
        return as_caller
    return TenantQuotas(url, link, settings.request_timeout_s, metrics.tenant_refused).call
