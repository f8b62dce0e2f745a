"""Connection rules hypercorn has no setting for, for its asyncio server (api.rest_server).

- HTTP/1.1 only: hypercorn's h11 protocol switches a cleartext connection to HTTP/2 on the prior-knowledge
  preface (`PRI * HTTP/2.0`) or an `Upgrade: h2c` request, and its HTTP/2 side has no idle timer, so a
  connection that sent only the preface stayed open for good. Here both reach the app as plain HTTP/1.1
  requests: the preface is a 400 and the connection is closed (api.rest_limits), an h2c upgrade is ignored
  and answered in HTTP/1.1 (RFC 9110 lets a server ignore Upgrade). TLS offers only http/1.1 by ALPN.
- A write timeout: an answer the client takes no byte of for WRITE_TIMEOUT_S is dropped with its
  connection (aborted: a close would wait for the unread bytes to drain).
- A cap on open connections (CappedListener, api.descriptors): a connection past it is closed as it is
  accepted, so gRPC, Redis and files keep descriptors of their own
  and the accept loop does not fail for want of one. Should it fail all the same (descriptors taken
  elsewhere), asyncio would log every failed accept, up to the backlog's length a second: here they are
  logged once every LOG_EVERY_S (log_loop_errors).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Callable
from typing import Any

import hypercorn.asyncio.run
import hypercorn.protocol
from hypercorn.asyncio.tcp_server import TCPServer
from hypercorn.events import Closed, Event, RawData
from hypercorn.protocol.h11 import H11Protocol

log = logging.getLogger("serving")

WRITE_TIMEOUT_S = 5.0  # an answer the client takes nothing of for this long is dropped
LOG_EVERY_S = 10.0  # connections refused at the cap, and failed accepts, are logged at most this often


class _Throttled:
    """Counts an event and says whether to log it: at most once every LOG_EVERY_S."""

    def __init__(self) -> None:
        self.count = 0
        self._logged_at = -LOG_EVERY_S

    def due(self) -> bool:
        self.count += 1
        now = time.monotonic()
        if now - self._logged_at < LOG_EVERY_S:
            return False
        self._logged_at = now
        return True


_accept_failures = _Throttled()


def log_loop_errors(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """The REST loop's exception handler: asyncio's own, but failed accepts at most every few seconds."""
    if context.get("message", "").startswith("socket.accept() out of system resource"):
        if _accept_failures.due():
            log.error(
                "REST accepts failing (%d since the last report): %s", _accept_failures.count, context.get("exception")
            )
            _accept_failures.count = 0
        return
    loop.default_exception_handler(context)


class CappedListener(socket.socket):
    """The REST listening socket: a connection accepted while `max_connections` are open is closed at
    once (before the loop makes a transport of it; its client sees the connection reset)."""

    def __init__(self, listener: socket.socket, max_connections: int) -> None:
        super().__init__(listener.family, listener.type, listener.proto, fileno=listener.detach())
        self.max_connections = max_connections
        self.open = 0
        self._refused = _Throttled()

    def accept(self) -> tuple[socket.socket, Any]:
        """socket.accept(), closing connections past the cap; BlockingIOError once none is waiting."""
        while True:
            fd, address = self._accept()  # type: ignore[attr-defined]
            if self.open < self.max_connections:
                break
            os.close(fd)
            if self._refused.due():
                log.warning("REST connections at the cap of %d: refused %d", self.max_connections, self._refused.count)
                self._refused.count = 0
        self.open += 1
        connection = _CountedConnection(self.family, self.type, self.proto, fileno=fd)
        connection.on_close = self._closed_one
        if socket.getdefaulttimeout() is None and self.gettimeout():
            connection.setblocking(True)  # as socket.accept() does
        return connection, address

    def _closed_one(self) -> None:
        self.open -= 1


class _CountedConnection(socket.socket):
    """An accepted connection that tells its listener when it is closed."""

    on_close: Callable[[], None] | None = None

    def close(self) -> None:
        if self.on_close is not None:
            self.on_close()
            self.on_close = None
        super().close()


class _Http11Only(H11Protocol):
    async def _check_protocol(self, event: object) -> None:
        """hypercorn's switch to HTTP/2 (preface or h2c upgrade), left out: the request stays HTTP/1.1."""


class _WriteTimeoutTcpServer(TCPServer):
    async def protocol_send(self, event: Event) -> None:
        if not isinstance(event, RawData):
            await super().protocol_send(event)
            return
        async with self.send_lock:  # hypercorn's own, but for _drain()
            try:
                self.writer.write(event.data)
                await self._drain()
            except (ConnectionError, RuntimeError):
                await self.protocol.handle(Closed())

    async def _drain(self) -> None:
        """Wait until the client took what is buffered; abort the connection if it took nothing for
        WRITE_TIMEOUT_S (a slow reader that keeps reading is waited for)."""
        transport = self.writer.transport
        pending = transport.get_write_buffer_size()
        if pending <= transport.get_write_buffer_limits()[1]:
            await self.writer.drain()  # as hypercorn does: no wait, and no task switch (wait_for's would reorder
            return  # this send with the connection's reads, and hold up the close after an early answer)
        while True:
            try:
                await asyncio.wait_for(self.writer.drain(), WRITE_TIMEOUT_S)
                return
            except TimeoutError:
                now = transport.get_write_buffer_size()
                if now >= pending:
                    transport.abort()
                    raise ConnectionResetError("the client read nothing of the answer") from None
                pending = now


def install() -> None:
    """Put the protocol and write rules into hypercorn's asyncio server (the api serves only REST with it)."""
    hypercorn.protocol.H11Protocol = _Http11Only  # what hypercorn.protocol.ProtocolWrapper builds
    hypercorn.asyncio.run.TCPServer = _WriteTimeoutTcpServer  # what hypercorn.asyncio.run serves a connection with
