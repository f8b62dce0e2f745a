"""`--grpc_workers N` > 1: the api as N processes (`ovms api`) sharing the gRPC and REST ports.

Each process is a whole api: its own gRPC and REST servers, result listener, admission budget and
registry view, bound with SO_REUSEPORT so that the kernel spreads new connections over them (a
connection, and every call on it, stays with the process that accepted it). The supervisor (ovms.all_in_one)
holds the ports (ovms.port_reservation), gives the processes a directory for prometheus_client's
multiprocess mode (api.metrics, ovms.metrics_directory), logs the seed's start-up lines once all of
them listen, restarts one that dies, and stops them all, each draining, on SIGTERM.
"""

from __future__ import annotations

import logging
import os
import select
import subprocess
import sys
import time

from prometheus_client.multiprocess import mark_process_dead

from api.metrics import MULTIPROCESS_DIR_ENV, SLOT_ENV
from api.server import log_listening
from ovms.api_group import READY_FD_ENV
from ovms.metrics_directory import MetricsDirectory
from ovms.port_reservation import PortReservation
from ovms.settings import ServerSettings, child_arguments
from tasks.lifetime import dying_with_parent, stop_all

log = logging.getLogger("serving")

START_TIMEOUT_S = 60.0
STOP_MARGIN_S = 10.0  # beyond --request_timeout_s, for a draining api process to close and exit


class ApiProcesses:
    def __init__(self, settings: ServerSettings, argv: list[str], broker_url: str) -> None:
        """`argv`: the command line's flags (no role); each api process is started with the api's."""
        self._settings = settings
        self._argv = child_arguments(argv, "api", grpc_workers=None)  # in a group, each process serves
        self._env = redis_environment(settings, broker_url)
        self._ports: PortReservation | None = None
        self._metrics_dir: MetricsDirectory | None = None
        self._ready_read, self._ready_write = -1, -1
        self.processes: list[subprocess.Popen] = []

    def start(self) -> None:
        """Start the processes and wait until every one listens; raises RuntimeError when a port is taken
        or a process exits first (its log says why)."""
        settings = self._settings
        self._ports = PortReservation(
            (settings.grpc_bind_address, settings.port), (settings.rest_bind_address, settings.rest_port)
        )
        self._metrics_dir = MetricsDirectory()
        self._env[MULTIPROCESS_DIR_ENV] = self._metrics_dir.path
        self._ready_read, self._ready_write = os.pipe()
        self._env[READY_FD_ENV] = str(self._ready_write)
        count = self._settings.grpc_workers
        log.info("Starting %d api processes", count)
        self.processes = [self._spawn(slot) for slot in range(count)]
        self._wait_until_listening(count)
        log_listening(self._settings, rest=bool(self._settings.rest_port))

    def exited(self) -> list[int]:
        """Indexes of the processes that have exited."""
        return [index for index, process in enumerate(self.processes) if process.poll() is not None]

    def restart(self, index: int) -> None:
        """Start the process at `index` again (the others serve meanwhile); from a thread that lives as long
        as the supervisor (see tasks.lifetime)."""
        gone = self.processes[index]
        mark_process_dead(gone.pid, self._metrics_dir.path)  # its series of ovms_api_process_requests
        log.error("Api process %d exited with %s; restarting it", gone.pid, gone.returncode)
        self.processes[index] = self._spawn(index)

    def stop(self) -> None:
        """SIGTERM every process (each drains its requests in progress, see api.server), wait, clean up."""
        stop_all(self.processes, self._settings.request_timeout_s + STOP_MARGIN_S)
        for fd in (self._ready_read, self._ready_write):
            if fd >= 0:
                os.close(fd)
        if self._metrics_dir is not None:
            self._metrics_dir.remove()
        if self._ports is not None:
            self._ports.release()

    def _spawn(self, slot: int) -> subprocess.Popen:
        """The process of `slot` (its index): a replacement takes over its predecessor's metrics files. It is
        named `ovms api <slot>/<count> grpc:<port> rest:<port>` (ovms.titled)."""
        ports = f"grpc:{self._settings.port}" + (
            f" rest:{self._settings.rest_port}" if self._settings.rest_port else ""
        )
        title = f"ovms api {slot + 1}/{self._settings.grpc_workers} {ports}"
        command = [sys.executable, "-m", "ovms.titled", title, "ovms", "api", *self._argv]
        env = {**self._env, SLOT_ENV: str(slot)}
        return subprocess.Popen(
            dying_with_parent(command), env=env, pass_fds=(self._ready_write,), start_new_session=True
        )

    def _wait_until_listening(self, count: int) -> None:
        """Each process writes a byte to the pipe once its servers listen (ovms.api_role)."""
        deadline = time.monotonic() + START_TIMEOUT_S
        listening = 0
        while listening < count:
            if self.exited():
                raise RuntimeError("an api process exited while starting")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the api processes did not start within {START_TIMEOUT_S:.0f} s")
            if select.select([self._ready_read], [], [], 0.1)[0]:
                listening += len(os.read(self._ready_read, count))


def redis_environment(settings: ServerSettings, broker_url: str) -> dict[str, str]:
    """The environment of a child role (worker, api process): the broker URL (maybe the embedded Redis's) and
    the result backend's go by environment, keeping a Redis password off its command line."""
    env = {**os.environ, "OVMS_BROKER_URL": broker_url}
    if settings.result_backend_url:
        env["OVMS_RESULT_BACKEND_URL"] = settings.result_backend_url
    return env
