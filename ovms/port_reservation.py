"""The ports the `--grpc_workers` api processes share, held by their supervisor for as long as it runs.

The api processes bind the gRPC and REST ports with SO_REUSEPORT, which lets any process of the same
user that also sets it listen there too, and take a share of the connections. So before starting them
the supervisor binds each port itself *without* SO_REUSEPORT: a port anything listens on (a stale
`ovms`, another server) fails the start with the same error as a single api process; then it turns
SO_REUSEPORT on and keeps the socket bound, never listening (the kernel gives connections to listening
sockets only). While it is held, a server that does not set SO_REUSEPORT cannot take the port, even
in the moments no api process listens (all of them restarting).
"""

from __future__ import annotations

import contextlib
import socket


class PortReservation:
    def __init__(self, grpc_port: int, rest_port: int) -> None:
        """Raises RuntimeError, as the api's servers do, when a port is taken. `rest_port` 0: no REST."""
        self._sockets = [_reserve(grpc_port, "gRPC", dual_stack=True)]  # grpc binds [::] (IPv4 too)
        if rest_port:
            try:
                self._sockets.append(_reserve(rest_port, "REST", dual_stack=False))  # REST binds 0.0.0.0
            except RuntimeError:
                self.release()
                raise

    def release(self) -> None:
        for reserved in self._sockets:
            reserved.close()
        self._sockets = []


def _reserve(port: int, what: str, dual_stack: bool) -> socket.socket:
    reserved, host = _dual_stack_socket() if dual_stack else (socket.socket(socket.AF_INET), "0.0.0.0")
    try:
        reserved.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers: TIME_WAIT is no owner
        reserved.bind((host, port))
        reserved.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)  # now the api processes may join
    except OSError as exc:
        reserved.close()
        raise RuntimeError(f"cannot bind {what} port {port}: {exc}") from None
    return reserved


def _dual_stack_socket() -> tuple[socket.socket, str]:
    """A socket for [::] that takes IPv4 too, as grpc core's listener on `[::]:port`; IPv4 on a host
    without IPv6."""
    try:
        dual = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    except OSError:
        return socket.socket(socket.AF_INET), "0.0.0.0"
    with contextlib.suppress(OSError):
        dual.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    return dual, "::"
