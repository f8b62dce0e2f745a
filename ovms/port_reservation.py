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

from api.settings import all_interfaces


class PortReservation:
    def __init__(self, grpc: tuple[str, int], rest: tuple[str, int]) -> None:
        """`grpc` and `rest`: (bind address, port) as the api's servers bind them. Raises RuntimeError, as
        they do, when a port is taken. REST port 0: no REST."""
        self._sockets = [_reserve(*grpc, "gRPC", grpc_wildcard=True)]
        if rest[1]:
            try:
                self._sockets.append(_reserve(*rest, "REST", grpc_wildcard=False))
            except RuntimeError:
                self.release()
                raise

    def release(self) -> None:
        for reserved in self._sockets:
            reserved.close()
        self._sockets = []


def _reserve(address: str, port: int, what: str, grpc_wildcard: bool) -> socket.socket:
    """`grpc_wildcard`: grpc core binds either wildcard (0.0.0.0, ::) as one dual-stack `[::]` socket."""
    if grpc_wildcard and all_interfaces(address):
        reserved, address = _dual_stack_socket()
    else:
        reserved = socket.socket(socket.AF_INET6 if ":" in address else socket.AF_INET, socket.SOCK_STREAM)
    try:
        reserved.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers: TIME_WAIT is no owner
        reserved.bind((address, port))
        reserved.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)  # now the api processes may join
    except OSError as exc:
        reserved.close()
        raise RuntimeError(f"cannot bind {what} port {port} on {address}: {exc}") from None
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
