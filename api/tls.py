"""TLS and mutual TLS for the gRPC and REST servers, from `--ssl_certificate`, `--ssl_private_key`
and `--ssl_client_ca` (when given, clients must present a certificate signed by that CA); the REST
server gives these files to hypercorn (api.rest_server)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import grpc

from api.settings import SecuritySettings


@dataclass(frozen=True)
class TlsFiles:
    certificate: str
    private_key: str
    client_ca: str | None = None

    @classmethod
    def from_settings(cls, settings: SecuritySettings) -> TlsFiles | None:
        """None when the servers speak plain text."""
        if not settings.ssl_certificate or not settings.ssl_private_key:
            return None
        return cls(settings.ssl_certificate, settings.ssl_private_key, settings.ssl_client_ca)

    def grpc_credentials(self) -> grpc.ServerCredentials:
        key_and_chain = (Path(self.private_key).read_bytes(), Path(self.certificate).read_bytes())
        client_ca = Path(self.client_ca).read_bytes() if self.client_ca else None
        return grpc.ssl_server_credentials(
            [key_and_chain], root_certificates=client_ca, require_client_auth=client_ca is not None
        )
