"""The REST server: hypercorn (asyncio, h11) in front of the Flask WSGI app, on a thread of its own.

Connections live on one event loop and cost no thread: TLS handshakes, request heads and bodies are
read there, each under a timeout of a few seconds, and a request reaches one of the `--rest_workers`
threads running the WSGI app (api.wsgi_bridge) only once it is whole (api.rest_limits). So idle, slow or
half-open connections, however many, never take a thread from the clients being served.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import threading

from hypercorn.asyncio.run import worker_serve
from hypercorn.config import Config, Sockets
from hypercorn.utils import wrap_app

from api import rest_connections
from api.admission import Admission
from api.auth import BearerTokens
from api.rest_limits import MAX_HEAD_BYTES, HttpLimits
from api.settings import host_port
from api.tenants import TenantScope, as_caller
from api.tls import TlsFiles
from api.wsgi_bridge import WsgiApp, WsgiBridge

log = logging.getLogger("serving")
server_log = logging.getLogger("serving.rest")  # hypercorn's: its errors, not its start-up banner
server_log.setLevel(logging.WARNING)

HEAD_TIMEOUT_S = 5  # a connection without a whole request head for this long (idle keep-alive too) is closed
HANDSHAKE_TIMEOUT_S = 5  # a TLS handshake not done in this time is dropped
BACKLOG = 1024  # connections the kernel queues before the loop accepts them
LISTENER_GRACE_S = 2.0  # for replies still being written when the listener closes


class RestServer:
    def __init__(
        self,
        wsgi_app: WsgiApp,
        bind_address: str,
        port: int,
        workers: int,
        max_body_bytes: int,
        tls: TlsFiles | None,
        admission: Admission,
        tokens: BearerTokens | None,
        max_connections: int,
        shared_port: bool = False,
        tenant_scope: TenantScope = as_caller,
    ) -> None:
        """`workers` threads run `wsgi_app`: at most that many requests are in the app at once. Bodies
        are held within `admission`'s budget; with `tokens`, calls that need one are refused without it,
        and the others run within `tenant_scope` (api.tenants: as their tenant's, within its limits);
        at most `max_connections` are open at once. With `shared_port` the port is bound with
        SO_REUSEPORT (the api processes of `--grpc_workers` share it: the kernel spreads connections)."""
        self._shared_port = shared_port
        self._max_connections = max_connections
        self._bind_address = bind_address
        self._port = port
        self._wsgi = WsgiBridge(wsgi_app, workers)
        self._app = HttpLimits(self._wsgi, max_body_bytes, admission, tokens, tenant_scope=tenant_scope)
        self._config = _config(tls)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self._sockets: Sockets | None = None

    def start(self) -> None:
        """Binds now (a taken port or unreadable TLS files fail the start), then serves on a thread."""
        rest_connections.install()
        self._config.create_ssl_context()
        listener = rest_connections.CappedListener(
            _listen(self._bind_address, self._port, self._shared_port), self._max_connections
        )
        self._sockets = Sockets([listener], [], []) if self._config.ssl_enabled else Sockets([], [listener], [])
        started = threading.Event()
        self._thread = threading.Thread(target=asyncio.run, args=(self._serve(started),), name="ovms-rest", daemon=True)
        self._thread.start()
        started.wait()

    def stop(self) -> None:
        """Stop accepting, give replies in progress LISTENER_GRACE_S, then close every connection."""
        if self._loop is not None and self._stopping is not None:
            self._loop.call_soon_threadsafe(self._stopping.set)
        if self._thread is not None:
            self._thread.join(LISTENER_GRACE_S + 3.0)
        self._wsgi.executor.shutdown(wait=False, cancel_futures=True)
        self._wsgi.probe_executor.shutdown(wait=False, cancel_futures=True)

    async def _serve(self, started: threading.Event) -> None:
        self._loop = asyncio.get_running_loop()
        self._loop.set_exception_handler(rest_connections.log_loop_errors)
        self._stopping = asyncio.Event()
        started.set()
        try:
            app = wrap_app(self._app, self._config.wsgi_max_body_size, "asgi")  # as hypercorn.asyncio.serve
            await worker_serve(app, self._config, sockets=self._sockets, shutdown_trigger=self._stopping.wait)
        except Exception:
            log.exception("The REST server stopped")


def _config(tls: TlsFiles | None) -> Config:
    config = Config()
    config.keep_alive_timeout = HEAD_TIMEOUT_S  # hypercorn's idle timer runs until a request head is whole
    config.ssl_handshake_timeout = HANDSHAKE_TIMEOUT_S
    config.h11_max_incomplete_size = MAX_HEAD_BYTES  # an unfinished head is not buffered beyond it: 431
    config.backlog = BACKLOG
    config.graceful_timeout = LISTENER_GRACE_S
    config.alpn_protocols = ["http/1.1"]
    config.include_server_header = False
    config.accesslog = None
    config.errorlog = server_log
    if tls is not None:
        config.certfile, config.keyfile = tls.certificate, tls.private_key
        if tls.client_ca:
            config.ca_certs, config.verify_mode = tls.client_ca, ssl.CERT_REQUIRED
    return config


def _listen(address: str, port: int, shared: bool) -> socket.socket:
    """`address` is an IP address (api.settings checked it): its family is the socket's."""
    listener = socket.socket(socket.AF_INET6 if ":" in address else socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if shared:  # else no SO_REUSEPORT: a taken port must fail
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    listener.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        listener.bind((address, port))
        listener.listen(BACKLOG)
    except OSError as exc:
        listener.close()
        raise RuntimeError(f"cannot bind REST port {port} on {host_port(address, port)}: {exc}") from None
    return listener
