"""The settings the frontends read, each declared once (see inference.options): listeners, TLS and
tokens, request deadlines and budgets. `ovms.settings` composes them with the queue layer's."""

from __future__ import annotations

import ipaddress
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from api.tenants import read_token_file
from inference.model_config import ModelSettings
from inference.options import from_to, option, port_number, positive
from tasks.settings import MAX_INFLIGHT_MB, BudgetSettings, JobSettings, RedisSettings

MAX_REQUEST_TIMEOUT_S = 1e6  # nan, inf and larger values overflow the Redis expiry of each request's tensors


def _request_timeout(flag: str, value: float) -> None:
    if not 0 < value <= MAX_REQUEST_TIMEOUT_S:
        raise ValueError(f"{flag} must be a positive number of seconds up to {MAX_REQUEST_TIMEOUT_S:.0f}")


def _channel_arguments(flag: str, text: str) -> dict[str, Any]:
    """`k=v,k=v`; values that look like integers become integers."""
    arguments: dict[str, Any] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"{flag}: expected key=value, got {item!r}")
        value = value.strip()
        arguments[key.strip()] = int(value) if value.lstrip("-").isdigit() else value
    return arguments


def _bind_address(flag: str, text: str) -> str:
    """An IP address as it is, or a host name as its first address, IPv4 first (`localhost` -> 127.0.0.1
    wherever /etc/hosts lists ::1 too): the log lines then say exactly what listens, and the REST socket
    knows its family."""
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        pass
    try:
        found = socket.getaddrinfo(text, None, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        raise ValueError(f"{flag}: {text!r} is neither an IP address nor a resolvable host name") from None
    found.sort(key=lambda entry: entry[0] != socket.AF_INET)
    return str(found[0][4][0])


def all_interfaces(address: str) -> bool:
    """Whether listening on `address` accepts connections on every interface (0.0.0.0, ::)."""
    return ipaddress.ip_address(address).is_unspecified


def host_port(address: str, port: int) -> str:
    """`address:port`, an IPv6 address in brackets (as gRPC takes it and as URLs write it)."""
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def _at_most_cores(flag: str, value: int) -> None:
    """As the seed: each api process is ~100 MB and a core's worth of Python, so more than the cores only
    costs memory and start time (10000 would have started 10000 processes)."""
    cores = os.cpu_count() or 1
    if not 1 <= value <= cores:
        raise ValueError(f"{flag} count should be from 1 to CPU core count : {cores}")


@dataclass(frozen=True)
class ListenerSettings:
    port: int = option(9178, "gRPC server port", type=int, check=port_number)
    rest_port: int = option(0, "REST server port; 0 disables REST", type=int, check=port_number)
    grpc_bind_address: str = option(
        "0.0.0.0", "address the gRPC server listens on (an IP address or host name)", convert=_bind_address
    )
    rest_bind_address: str = option(
        "0.0.0.0",
        "address the REST server (and Flower with credentials) listens on (an IP address or host name)",
        convert=_bind_address,
    )
    grpc_workers: int = option(
        1,
        "api processes sharing the gRPC and REST ports (SO_REUSEPORT; each its own result listener and "
        "--max_inflight_mb budget), started and restarted by a supervisor; at most the CPU core count",
        type=int,
        check=_at_most_cores,
    )
    rest_workers: int = option(24, "threads running the REST app; needs --rest_port", type=int, check=positive)
    grpc_channel_arguments: dict[str, Any] = option(
        help="comma separated k=v gRPC server arguments", default_factory=dict, convert=_channel_arguments
    )
    request_timeout_s: float = option(
        30.0, "deadline of a request without its own, seconds", type=float, check=_request_timeout
    )

    @staticmethod
    def check_given(given: Mapping[str, Any]) -> None:
        """Checks across flags, of the flags given (None: not given)."""
        if given["rest_port"] and given["port"] is not None and given["rest_port"] == given["port"]:
            raise ValueError("port and rest_port cannot have the same values")
        if (given["grpc_workers"] or 1) > 1 and given["port"] == 0:
            raise ValueError("grpc_workers above 1 needs a port number: the api processes share it")
        if given["rest_workers"] is not None and not given["rest_port"]:
            raise ValueError(
                "rest_workers is set but rest_port is not set. rest_port is required to start rest servers"
            )


@dataclass(frozen=True)
class SecuritySettings:
    ssl_certificate: str | None = option(
        None, "PEM certificate (chain): serve gRPC and REST over TLS; needs --ssl_private_key"
    )
    ssl_private_key: str | None = option(None, "PEM private key of --ssl_certificate")
    ssl_client_ca: str | None = option(
        None, "PEM CA certificate(s): mutual TLS, clients must present a certificate they signed"
    )
    auth_token_file: str | None = option(
        None,
        "file of accepted bearer tokens, one a line, each optionally with tenant=NAME rps=N inflight=N "
        "job_samples=N weight=N: gRPC and REST calls need one",
    )

    @staticmethod
    def check_given(given: Mapping[str, Any]) -> None:
        if bool(given["ssl_certificate"]) != bool(given["ssl_private_key"]):
            raise ValueError("ssl_certificate and ssl_private_key go together")
        if given["ssl_client_ca"] and not given["ssl_certificate"]:
            raise ValueError("ssl_client_ca needs ssl_certificate and ssl_private_key")
        for flag in ("ssl_certificate", "ssl_private_key", "ssl_client_ca", "auth_token_file"):
            path = given[flag]
            if path is not None and not os.access(path, os.R_OK):
                raise ValueError(f"{flag}: cannot read {path}")
        if given["auth_token_file"] is not None:
            read_token_file(given["auth_token_file"])  # its errors name the line (and no token)


@dataclass(frozen=True)
class ApiSettings(ListenerSettings, SecuritySettings, RedisSettings, JobSettings, BudgetSettings, ModelSettings):
    """What `api.server.ApiServer` reads."""

    max_inflight_mb: int | None = option(
        None,
        "request MiB an api process holds at once before RESOURCE_EXHAUSTED / 429",
        type=int,
        check=from_to(1, MAX_INFLIGHT_MB),
        default_text="2 x --max_request_mb",
    )

    @property
    def max_inflight_bytes(self) -> int:
        return self.inflight_budget_mb(self.max_inflight_mb) << 20
