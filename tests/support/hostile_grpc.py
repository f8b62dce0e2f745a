"""What a hostile gRPC client holds open: HTTP/2 streams that send HEADERS and never a message (raw
HTTP/2 through `h2`), and TCP connections that send nothing at all, or only the HTTP/2 preface."""

from __future__ import annotations

import select
import socket
import ssl
import threading
import time
from collections import Counter
from contextlib import AbstractContextManager, suppress

import h2.config
import h2.connection
import h2.events
import h2.exceptions

PREDICT_PATH = "/tensorflow.serving.PredictionService/Predict"
HEALTH_CHECK_PATH = "/grpc.health.v1.Health/Check"  # open without a token
HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"  # + empty SETTINGS


class _RawConnection:
    """One client HTTP/2 connection; a thread reads what the server sends (SETTINGS, PINGs, answers)."""

    def __init__(self, port: int, tls: ssl.SSLContext | None) -> None:
        raw = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.sock = tls.wrap_socket(raw, server_hostname="localhost") if tls else raw
        self.scheme = "https" if tls else "http"
        self.h2 = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
        self.lock = threading.Lock()
        self.settled = threading.Event()  # the server's SETTINGS arrived: its stream limit is known
        self.statuses: dict[int, str] = {}  # stream id -> the grpc-status the server ended it with
        self.closed = False
        with self.lock:
            self.h2.initiate_connection()
            self.sock.sendall(self.h2.data_to_send())
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.settled.wait(10)

    def _read(self) -> None:
        self.sock.settimeout(None)
        with suppress(OSError, h2.exceptions.ProtocolError):
            while data := self.sock.recv(65536):
                with self.lock:
                    events = self.h2.receive_data(data)
                    self.sock.sendall(self.h2.data_to_send())
                for event in events:
                    if isinstance(event, h2.events.RemoteSettingsChanged):
                        self.settled.set()
                    elif isinstance(event, h2.events.ResponseReceived | h2.events.TrailersReceived):
                        status = dict(event.headers).get("grpc-status")
                        if status is not None:
                            self.statuses.setdefault(event.stream_id, status)
                    elif isinstance(event, h2.events.StreamReset):  # after a status, it only ends the upload
                        self.statuses.setdefault(event.stream_id, f"RST_STREAM {event.error_code}")
        self.closed = True
        self.settled.set()

    def open_half_streams(self, count: int, path: str, headers: list[tuple[str, str]], partial: bytes) -> int:
        """Send up to `count` HEADERS frames (then `partial` as DATA) without END_STREAM; returns how many the
        server's limit allowed."""
        opened = 0
        with self.lock:
            for _ in range(count):
                if self.h2.open_outbound_streams >= self.h2.remote_settings.max_concurrent_streams:
                    break
                stream_id = self.h2.get_next_available_stream_id()
                request = [(":method", "POST"), (":scheme", self.scheme), (":path", path), *headers]
                self.h2.send_headers(stream_id, request, end_stream=False)
                if partial:
                    self.h2.send_data(stream_id, partial, end_stream=False)
                opened += 1
            self.sock.sendall(self.h2.data_to_send())
        return opened

    def close(self) -> None:
        with suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)  # close() alone leaves the connection to the blocked reader
        self.sock.close()
        self._reader.join(timeout=5)


class HalfOpenStreams(AbstractContextManager):
    """`count` gRPC Predict calls whose request message never comes: HEADERS only, or with
    `partial_message` the first bytes of a message that never ends (a slow sender); on one connection, or
    on as few as the server's per-connection stream limit allows. Held until the context exits."""

    def __init__(
        self,
        port: int,
        count: int,
        tls: ssl.SSLContext | None = None,
        metadata: tuple[tuple[str, str], ...] = (),
        partial_message: bool = False,
        path: str = PREDICT_PATH,
    ) -> None:
        self._port = port
        self._path = path
        self._count = count
        self._tls = tls
        # the gRPC message prefix (not compressed, 1,000 bytes long), then only 10 of those bytes
        self._partial = (b"\x00" + (1000).to_bytes(4, "big") + bytes(10)) if partial_message else b""
        self._headers = [
            (":authority", f"localhost:{port}"),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
            *metadata,
        ]
        self.connections: list[_RawConnection] = []
        self.opened = 0

    def __enter__(self) -> HalfOpenStreams:
        while self.opened < self._count:
            connection = _RawConnection(self._port, self._tls)
            self.connections.append(connection)
            opened = connection.open_half_streams(self._count - self.opened, self._path, self._headers, self._partial)
            if opened == 0:
                raise RuntimeError("the server allows no stream on a new connection")
            self.opened += opened
        return self

    def __exit__(self, *exc_info: object) -> None:
        for connection in self.connections:
            connection.close()

    def answered(self) -> Counter[str]:
        """How the server ended the streams it did not leave open, by grpc-status."""
        return Counter(status for connection in self.connections for status in connection.statuses.values())


class IdleConnections(AbstractContextManager):
    """`count` TCP connections to a port that send nothing (or only `greeting`, after the TLS handshake
    with `tls`), held until the context exits."""

    def __init__(self, port: int, count: int, greeting: bytes = b"", tls: ssl.SSLContext | None = None) -> None:
        self._port = port
        self._count = count
        self._greeting = greeting
        self._tls = tls
        self.sockets: list[socket.socket] = []

    def __enter__(self) -> IdleConnections:
        for _ in range(self._count):
            sock = socket.create_connection(("127.0.0.1", self._port), timeout=10)
            if self._tls:
                sock = self._tls.wrap_socket(sock, server_hostname="localhost")
            self.sockets.append(sock)
            sock.sendall(self._greeting)
        return self

    def __exit__(self, *exc_info: object) -> None:
        for sock in self.sockets:
            sock.close()

    def open_after(self, wait_s: float) -> int:
        """How many of the connections the server has not closed within `wait_s` (whatever it sends
        before closing, e.g. SETTINGS and GOAWAY, is read and dropped)."""
        open_ = set(self.sockets)
        deadline = time.monotonic() + wait_s
        while open_ and (left := deadline - time.monotonic()) > 0:
            readable, _, _ = select.select(list(open_), [], [], min(left, 0.5))
            for sock in readable:
                try:
                    if not sock.recv(65536):
                        open_.discard(sock)
                except ssl.SSLWantReadError:
                    continue
                except OSError:
                    open_.discard(sock)
        return len(open_)
