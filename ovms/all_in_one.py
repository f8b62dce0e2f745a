"""`ovms` with no role (all-in-one): embedded Redis (unless a broker is given), one worker per device, the api
(in this process, or with `--grpc_workers N` > 1 as N processes: ovms.api_processes). `ovms api --grpc_workers N`
runs the same supervisor without Redis and workers."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time

from api.server import ApiServer
from api.settings import host_port
from ovms.api_processes import ApiProcesses, redis_environment
from ovms.settings import ServerSettings, child_arguments
from ovms.stop_signal import StopSignals
from tasks.broker import EmbeddedRedis
from tasks.connections import redis_client
from tasks.lifetime import dying_with_parent, stop_all
from tasks.registry import RegistryView
from tasks.routing import worker_prefix

log = logging.getLogger("serving")

MODEL_LOAD_TIMEOUT_S = 600
WORKER_STOP_TIMEOUT_S = 15
RESTARTS_PER_MINUTE = 5  # a worker (or embedded Redis) that keeps dying is not restarted for ever: the server stops
WATCH_INTERVAL_S = 0.2


class Supervisor:
    def __init__(self, settings: ServerSettings, argv: list[str], workers: bool = True) -> None:
        """`argv`: the command line's flags (no role); without `workers`, only the api processes (the
        `api` role, on its broker)."""
        self._settings = settings
        self._argv = argv
        self._with_workers = workers
        self._redis: EmbeddedRedis | None = None
        self._workers: dict[str, subprocess.Popen] = {}  # by device
        self._api_processes: ApiProcesses | None = None
        self._restarts: list[float] = []  # of workers
        self._api_restarts: list[float] = []
        self._redis_restarts: list[float] = []
        self._gave_up = False  # a child kept dying
        self._broker_url = ""
        self._children: list[subprocess.Popen] = []  # helpers whose exit does not stop the server
        self._expected_workers: set[str] = set()  # how their ids begin
        self._stopping = threading.Event()  # a child kept dying, or the server is stopping
        self._signals = StopSignals()  # seen by the watcher at once (see _stop_requested)
        self._watcher = threading.Thread(target=self._watch_children, name="ovms-supervisor", daemon=True)

    def run(self) -> int:
        api: ApiServer | ApiProcesses | None = None
        try:
            broker_url = self._broker_url = self._settings.broker_url or self._start_embedded_redis()
            if self._with_workers:
                self._start_workers(broker_url)
            if self._settings.grpc_workers > 1:
                api = self._api_processes = ApiProcesses(self._settings, self._argv, broker_url)
            else:
                api = ApiServer(self._settings, broker_url)
            api.start()
            self._signals.install()
            self._watcher.start()
            self._signals.wait(self._stopping)
            return 1 if self._gave_up else 0
        except RuntimeError as exc:
            log.error("%s", exc)
            return 1
        finally:
            self._stopping.set()  # no restarts while the children are being stopped
            if self._watcher.is_alive():
                self._watcher.join()
            if api is not None:
                api.stop()
            stop_all(self._children + list(self._workers.values()), WORKER_STOP_TIMEOUT_S)
            if self._redis is not None:
                self._redis.stop()

    def _start_workers(self, broker_url: str) -> None:
        for device in self._settings.devices():
            worker = self._workers[device] = self._spawn_worker(device, broker_url)
            self._expected_workers.add(worker_prefix(device, worker.pid))
        self._wait_for_models(self._settings.result_backend_url or broker_url)
        if self._settings.flower_port:
            self._children.append(self._spawn_flower(broker_url))

    def _start_embedded_redis(self) -> str:
        self._redis = EmbeddedRedis()
        return self._redis.start()

    def _spawn_worker(self, device: str, broker_url: str) -> subprocess.Popen:
        """The broker URL (maybe the embedded Redis's) and the result backend's go by environment, keeping
        a Redis password off the worker's command line; the worker then looks where the api looks. It is
        given only the worker's flags (no ports: it listens on none), and named `ovms worker <device>`."""
        flags = child_arguments(self._argv, "worker", device=device, task_events=self._settings.task_events)
        command = [sys.executable, "-m", "ovms.titled", f"ovms worker {device}", "ovms", "worker", *flags]
        log.info("Starting the %s worker", device)
        env = redis_environment(self._settings, broker_url)
        return subprocess.Popen(dying_with_parent(command), env=env, start_new_session=True)

    def _wait_for_models(self, store_url: str) -> None:
        """Serve only once every worker finished loading the models it found (AVAILABLE or failed)."""
        registry = RegistryView(redis_client(store_url))
        deadline = time.monotonic() + MODEL_LOAD_TIMEOUT_S
        while time.monotonic() < deadline:
            if any(worker.poll() is not None for worker in self._workers.values()):
                raise RuntimeError("a worker exited while loading models")
            registry.refresh()
            loaded = registry.loaded_workers()
            if all(any(worker.startswith(prefix) for worker in loaded) for prefix in self._expected_workers):
                return
            time.sleep(0.1)
        raise RuntimeError(f"models did not load within {MODEL_LOAD_TIMEOUT_S} s")

    def _watch_children(self) -> None:
        """Restart a worker that died (the api carries on and its requests fail over, see
        tasks.dispatcher), an api process (the others serve meanwhile), and the embedded Redis (see
        _restart_redis); one that keeps dying stops the server."""
        while not self._stop_requested():
            for index in self._api_processes.exited() if self._api_processes is not None else []:
                code = self._api_processes.processes[index].returncode
                if self._stop_requested() or not self._may_restart(self._api_restarts, "An api process", code):
                    return
                self._api_processes.restart(index)
            for device, worker in list(self._workers.items()):
                if worker.poll() is None:
                    continue
                if self._stop_requested() or not self._may_restart(
                    self._restarts, f"The {device} worker", worker.returncode
                ):
                    return
                log.error("The %s worker exited with %s; restarting it", device, worker.returncode)
                self._workers[device] = self._spawn_worker(device, self._broker_url)
            if self._redis is not None and (code := self._redis.exit_code()) is not None:
                if self._stop_requested() or not self._may_restart(self._redis_restarts, "Embedded Redis", code):
                    return
                self._restart_redis(self._redis, code)
            time.sleep(WATCH_INTERVAL_S)

    def _stop_requested(self) -> bool:
        """Checked again right before each restart: a child that died of the SIGINT / SIGTERM that is
        stopping the server (sent to its whole process group or cgroup) is not restarted. The main thread
        sets `_stopping` only after its wait loop notices the signal; the handler's flag is set at once."""
        return self._stopping.is_set() or self._signals.received

    @staticmethod
    def _restart_redis(server: EmbeddedRedis, code: int) -> None:
        """Start the embedded Redis again on its port, so that the api and the workers reconnect to it
        on their own. It comes back empty (it keeps nothing on disk): requests in flight have already
        failed UNAVAILABLE (tasks.link), and queued async jobs are gone (their ids answer 404)."""
        log.error("Embedded Redis exited with %s; restarting it on port %d, empty", code, server.port)
        try:
            server.start()
        except RuntimeError as exc:  # counts as another restart on the next round
            log.error("%s", exc)

    def _may_restart(self, history: list[float], what: str, code: int | None) -> bool:
        """Record a restart in `history`; past RESTARTS_PER_MINUTE, stop the server instead."""
        now = time.monotonic()
        history[:] = [t for t in history if now - t < 60] + [now]
        if len(history) <= RESTARTS_PER_MINUTE:
            return True
        log.error("%s exited with %s again; shutting down", what, code)
        self._gave_up = True
        self._stopping.set()
        return False

    def _spawn_flower(self, broker_url: str) -> subprocess.Popen:
        """Celery Flower on --flower_port. Its UI and API show every task and can control the workers, so
        without FLOWER_USER and FLOWER_PASSWORD (basic auth) it listens on 127.0.0.1 only; with them on
        --rest_bind_address, the address the operator chose for HTTP. Never Flower's default of every
        interface (which its "Visit me at http://127.0.0.1" line does not even say)."""
        port = self._settings.flower_port
        env = {**os.environ, "CELERY_BROKER_URL": broker_url}  # what `celery --broker` would set, off ps
        env.pop("FLOWER_BASIC_AUTH", None)  # credentials come from FLOWER_USER / FLOWER_PASSWORD only
        user, password = os.environ.get("FLOWER_USER"), os.environ.get("FLOWER_PASSWORD")
        if user and password:
            env["FLOWER_BASIC_AUTH"] = f"{user}:{password}"  # Flower's own variable for --basic-auth
            address, note = self._settings.rest_bind_address, "basic auth"
        else:
            address, note = "127.0.0.1", "no FLOWER_USER / FLOWER_PASSWORD: local only"
        command = [
            sys.executable,
            "-m",
            "ovms.titled",
            f"ovms flower {host_port(address, port)}",
            "celery",
            "--app",
            "tasks.app",
            "flower",
            f"--port={port}",
            f"--address={address}",
        ]
        log.info("Starting Flower on %s (%s)", host_port(address, port), note)
        return subprocess.Popen(dying_with_parent(command), env=env, start_new_session=True)
