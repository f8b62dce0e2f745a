"""Our whole stack for a benchmark: `python -m ovms` (embedded Redis, a worker, the api) on free ports with a
temporary config.json, ready when every model is AVAILABLE, stopped with its whole process tree."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypeVar

import redis
import requests
from bench_cases import REPO, ModelCase
from bench_report import progress
from proc_cpu import descendants, ovms_roles

from inference.model_config import PER_MODEL_KEYS  # their flags are refused next to --config_path
from tasks.broker import free_port

GRPC_READY = "Server started on port"
EMBEDDED_REDIS = re.compile(r"Embedded Redis started on ([0-9.]+):([0-9]+)")
REST_READY = "Started REST server at"
READY_TIMEOUT_S = 180.0
STOP_TIMEOUT_S = 30.0
INTERRUPTED_EXIT_STATUS = 130  # what a shell reports for a command stopped by Ctrl-C (128 + SIGINT)


def config_value(text: str) -> Any:
    """A flag's value as config.json holds it: JSON where it parses (8, {"...": ...}), else the string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def split_server_flags(flags: list[str]) -> tuple[dict[str, Any], list[str]]:
    """Per-model flags (e.g. --max_batch_size 8) become config.json settings for every model; the rest pass on."""
    settings: dict[str, Any] = {}
    passed: list[str] = []
    tokens = iter(flags)
    for token in tokens:
        name, equals, value = token.removeprefix("--").partition("=")
        if token.startswith("--") and name in PER_MODEL_KEYS:
            settings[name] = config_value(value if equals else next(tokens, ""))
        else:
            passed.append(token)
    return settings, passed


def write_config(cases: list[ModelCase], settings: dict[str, Any], directory: Path) -> Path:
    """A config.json listing the benchmarked models with absolute base paths and `settings` each."""
    paths = {case.name: case.base_path for case in cases}  # resnet and resnet-jpeg: one model
    entries = [{"config": {"name": name, "base_path": str(path), **settings}} for name, path in paths.items()]
    config = {"model_config_list": entries}
    path = directory / "config.json"
    path.write_text(json.dumps(config, indent=2))
    return path


class ServerProcess:
    """A server started in its own session with its output in `log_path`, ready when `wait_ready()` returns,
    stopped with its whole process tree on exit. Subclasses set `command`, `log_path`, `name` and the ports."""

    name = "server"
    command: list[str]
    log_path: Path
    env: dict[str, str]
    process: subprocess.Popen | None = None

    def log_tail(self, chars: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.exists() else ""

    def __enter__(self) -> ServerProcess:
        with open(self.log_path, "w") as log:
            env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.env}
            self.process = subprocess.Popen(
                self.command, stdout=log, stderr=subprocess.STDOUT, cwd=REPO, env=env, start_new_session=True
            )
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    def check_alive(self) -> None:
        assert self.process is not None
        if self.process.poll() is not None:
            raise RuntimeError(f"{self.name} exited with {self.process.returncode}:\n{self.log_tail()}")

    def wait_ready(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        if self.process is not None:
            stop_tree(self.process, self.name)


class Server(ServerProcess):
    """`python -m ovms` (embedded Redis, a worker, the api) in its own session, stopped on exit."""

    name = "ovms"

    def __init__(self, cases: list[ModelCase], server_flags: list[str], directory: Path, token: str = "") -> None:
        """`token`: a bearer token of the server's --auth_token_file (if it has one), to see its models' states."""
        self.cases = cases
        self.token = token
        self.grpc_port = free_port()
        self.rest_port = free_port()
        self.directory = directory
        self.log_path = directory / "ovms.log"
        self.env = {}
        self.model_settings, passed_flags = split_server_flags(server_flags)
        config = write_config(cases, self.model_settings, directory)
        self.command = [
            sys.executable, "-m", "ovms", "--config_path", str(config),
            "--port", str(self.grpc_port), "--rest_port", str(self.rest_port), *passed_flags,
        ]  # fmt: skip

    @property
    def grpc_address(self) -> str:
        return f"localhost:{self.grpc_port}"

    @property
    def rest_url(self) -> str:
        return f"http://localhost:{self.rest_port}"

    def redis_traffic(self) -> int:
        """Bytes the embedded Redis has received from and sent to its clients so far."""
        found = EMBEDDED_REDIS.search(self.log_tail(10**7))
        if found is None:
            return 0
        info = redis.Redis(host=found[1], port=int(found[2]), socket_timeout=5).info("stats")
        return int(info["total_net_input_bytes"]) + int(info["total_net_output_bytes"])

    def wait_ready(self) -> None:
        """Wait for both readiness log lines, then until every model has an AVAILABLE version."""
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not all(line in self.log_tail(10**7) for line in (GRPC_READY, REST_READY)):
            self.check_alive()
            if time.monotonic() > deadline:
                raise TimeoutError(f"ovms was not ready within {READY_TIMEOUT_S} s")
            time.sleep(0.1)
        for case in self.cases:
            while not self.model_available(case.name):
                self.check_alive()
                if time.monotonic() > deadline:
                    raise TimeoutError(f"model {case.name} not AVAILABLE within {READY_TIMEOUT_S} s")
                time.sleep(0.2)

    def model_available(self, name: str) -> bool:
        try:
            headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
            reply = requests.get(f"{self.rest_url}/v1/models/{name}", headers=headers, timeout=5)
        except requests.RequestException:
            return False
        states = [v.get("state") for v in reply.json().get("model_version_status", [])] if reply.ok else []
        return "AVAILABLE" in states

    def roles(self) -> dict[int, str]:
        """pid -> api / worker / Redis for the running stack (read now: api processes may be added)."""
        assert self.process is not None
        return ovms_roles(self.process.pid)


def stop_tree(process: subprocess.Popen, name: str, timeout_s: float = STOP_TIMEOUT_S) -> None:
    """SIGTERM a process started in a session of its own, then SIGKILL its process group and any descendant
    left (the embedded Redis has a session of its own)."""
    children = descendants(process.pid)
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            progress(f"{name} did not stop on SIGTERM; killing its process group")
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    for pid in children:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _raise_keyboard_interrupt(*_: object) -> None:
    raise KeyboardInterrupt


def stop_on_sigterm() -> None:
    """From now on SIGTERM stops what runs as Ctrl-C does, so that `with Server(...)` blocks stop their servers."""
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)


@contextlib.contextmanager
def exit_on_interrupt(stopped: str) -> Iterator[None]:
    """Ctrl-C (or SIGTERM, after `stop_on_sigterm()`) in the block ends the program with one progress line,
    "interrupted; `stopped`", and exit status 130 instead of a traceback."""
    try:
        yield
    except KeyboardInterrupt:
        progress(f"interrupted; {stopped}")
        raise SystemExit(INTERRUPTED_EXIT_STATUS) from None


AnyServer = TypeVar("AnyServer", bound=ServerProcess)


@contextlib.contextmanager
def measuring(server: AnyServer) -> Iterator[AnyServer]:
    """`server` started for the block's measurements and stopped after it. Interrupted, the program exits as
    `exit_on_interrupt` says, once the server is stopped; on a failure, the last lines of the server's log go to
    stderr before the error propagates."""
    with exit_on_interrupt("the server was stopped"):
        try:
            with server:
                yield server
        except Exception:
            progress(f"failed; last lines of the server log:\n{server.log_tail()}")
            raise
